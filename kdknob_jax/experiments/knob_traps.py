"""Table 4 of the knob study: how each teacher scores the student's own samples.

The base student samples R completions of each of the first Q held-out questions once
(`student_samples`, cached as JSON); every teacher then scores those same completions, token by
token, against the student (`score_teacher`). The on-policy token RKL, the sequence RKL and the
wrong-trace preference of `kdknob_jax.experiments.knob_report` are computed from these files, so
each teacher's row differs only by the teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from kdknob_jax.decode import SamplingConfig
from kdknob_jax.decode.text import encode_prompts, generate_text
from kdknob_jax.diagnostics.traps import score_sequences
from kdknob_jax.runs import resolve

SAMPLES_FILE = "student_samples.json"


def _write_json(path: Path, data: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(data), encoding="utf-8")
  tmp.replace(path)  # a killed run never leaves half a file that a rerun would trust


def student_samples(student: str, evaluation, questions: int, rollouts: int, out_dir: Path,
                    progress: bool = True) -> dict:
  """The student's samples of the first `questions` evaluation questions (T = 1), graded.

  Args:
    student: the student's model spec.
    evaluation: the study's `EvaluationSettings` (data, chat, max_new_tokens, seed).
    questions: Q.
    rollouts: R samples per question.
    out_dir: the traps directory; the samples are read from there when present.
    progress: show a progress bar.

  Returns:
    {"prompt_index": [S], "tokens": [S] token-id lists, "text": [S], "correct": [S]}.
  """
  path = out_dir / SAMPLES_FILE
  if path.is_file():
    return json.loads(path.read_text(encoding="utf-8"))
  task, records = evaluation.load()
  records = records[:questions]
  model, tok = resolve.load_trained(student, "float32")
  key = jax.random.fold_in(jax.random.PRNGKey(evaluation.seed), 44)
  out = generate_text(model, tok, [task.prompt(r) for r in records], n=rollouts,
                      max_new_tokens=evaluation.max_new_tokens, sampling=SamplingConfig(1.0),
                      key=key, chat=evaluation.chat, prompts_per_call=evaluation.prompts_per_call,
                      progress=progress)
  flat = [s for per_prompt in out for s in per_prompt]
  data = {"prompt_index": [int(s.prompt_index) for s in flat],
          "tokens": [[int(t) for t in s.tokens] for s in flat],
          "text": [s.text for s in flat],
          "correct": [bool(task.is_correct(s.text, records[s.prompt_index])) for s in flat]}
  _write_json(path, data)
  return data


def score_teacher(student: str, teacher: str, samples: dict, evaluation, out: Path) -> dict:
  """Scores the student's `samples` under the student and `teacher` (written to `out`).

  Returns:
    {"prompt_index", "correct", "tokens" (completion lengths), "rkl" (summed token-level
    KL(student‖teacher) per completion), "logp_student", "logp_teacher"}, one entry per sample.
  """
  if out.is_file():
    return json.loads(out.read_text(encoding="utf-8"))
  task, records = evaluation.load()
  s_model, tok = resolve.load_trained(student, "float32")
  t_model, _ = resolve.load_trained(teacher, "float32")
  n_q = max(samples["prompt_index"]) + 1
  ids = encode_prompts(tok, [task.prompt(r) for r in records[:n_q]], evaluation.chat)
  seqs = [(ids[p], toks) for p, toks in zip(samples["prompt_index"], samples["tokens"])]
  sc = score_sequences((s_model.params, s_model.config), (t_model.params, t_model.config), seqs,
                       ks=(1,), direction="rkl", rows_per_call=32)
  data = {"prompt_index": samples["prompt_index"], "correct": samples["correct"],
          "tokens": [int(x) for x in sc.lengths], "rkl": np.asarray(sc.rkl).tolist(),
          "logp_student": np.asarray(sc.logp_student).tolist(),
          "logp_teacher": np.asarray(sc.logp_teacher).tolist()}
  _write_json(out, data)
  return data
