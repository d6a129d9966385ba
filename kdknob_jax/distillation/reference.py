"""SFT on a dataset's own worked solutions instead of a teacher's samples: `teacher =
"reference"` with method "sft". It makes a task's teacher in the first place (the knob study
fine-tunes SmolLM2-135M on the arithmetic problems before calibrating it), through the same
run loop, checkpoints and evaluation as every student.

A task's reference solution is a record field (`REFERENCE_FIELDS`); it is encoded with the
student's tokenizer and ends as the student ends a turn, so the run learns to stop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdknob_jax.distillation.samples import TeacherSamples
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf.tokenizer import completion_ids

REFERENCE = "reference"
# The record field holding a task's worked solution.
REFERENCE_FIELDS = {"gsm8k": "answer"}


def reference_field(task_name: str) -> str:
  """The field of `task_name`'s records that holds its reference solution.

  Raises:
    ConfigError: the task has no worked solutions to learn from.
  """
  if task_name not in REFERENCE_FIELDS:
    raise ConfigError(f"config.teacher = {REFERENCE!r} learns the data's worked solutions, which "
                      f"task {task_name!r} does not have (tasks with them: "
                      f"{sorted(REFERENCE_FIELDS)}). Name a teacher model instead.")
  return REFERENCE_FIELDS[task_name]


def reference_samples(tokenizer, task_name: str, records: Sequence[dict],
                      chat: bool | None) -> TeacherSamples:
  """One sample per record: its reference solution in the student's tokens, stopped."""
  field = reference_field(task_name)
  texts = [str(r[field]).strip() for r in records]
  tokens = [completion_ids(tokenizer, t, True, chat=chat) for t in texts]
  return TeacherSamples(tokens, texts, np.ones(len(texts), bool), per_prompt=1)
