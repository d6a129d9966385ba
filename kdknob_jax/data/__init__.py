"""Evaluation data: loading rows (records) and prompting for, and grading, answers (tasks).

A leaf package: it imports neither jax nor torch, and `datasets` / `pyarrow` only when a
source needs them.

  rows = load_records("gsm8k/test.jsonl", limit=100)
  task = get_task("gsm8k")
  task.check_records(rows)          # a bad row is reported as file:line
  messages = [task.prompt(r) for r in rows]
  accuracy = sum(task.is_correct(c, r) for c, r in zip(completions, rows)) / len(rows)

Built-in data ships in `kdknob_jax/data/builtin/` ("builtin:capitals/test.jsonl").
"""

from kdknob_jax.data.answers import (normalize_math, normalize_name, normalize_number,
                                     parse_math, parse_short_answer)
from kdknob_jax.data.records import BUILTIN_ROOT, Records, data_root, load_records
from kdknob_jax.data.tasks import (TASKS, Task, bigmath, capitals, commonsenseqa, get_task, gsm8k,
                                   mmlu_pro, multiple_choice, supergpqa)
from kdknob_jax.errors import DataError

__all__ = [
    "BUILTIN_ROOT",
    "DataError",
    "Records",
    "TASKS",
    "Task",
    "bigmath",
    "capitals",
    "commonsenseqa",
    "data_root",
    "get_task",
    "gsm8k",
    "load_records",
    "mmlu_pro",
    "multiple_choice",
    "normalize_math",
    "normalize_name",
    "normalize_number",
    "parse_math",
    "parse_short_answer",
    "supergpqa",
]
