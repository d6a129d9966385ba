"""Before and after one calibration, in a few lines a newcomer can read (`make demo` prints it):
held-out accuracy, the calibration reward r_cal and the sequence KL to the target, and one
sample completion of the original and of the calibrated teacher.

Accuracy comes from the two teachers' evaluations (eval/<row>/metrics.json). r_cal and the
sequence KL come from the calibration's own rollouts (calib/<name>/metrics.jsonl): "before" is
its first step, whose rollouts the original teacher sampled, and "after" the mean of its last
`last` steps; both are estimates from a few rollouts each, and the summary says how many.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdknob_jax.runs.metrics import read_jsonl

_KEYS = (("reward/cal", "r_cal = log p_target − log p_teacher (nats)"),
         ("trap/seq_kl_teacher_target", "sequence KL(teacher‖target) (nats)"),
         ("reward/task", "task reward on the rollouts"),
         ("rollout/completion_tokens", "completion tokens"))


def _mean(rows: list[dict], key: str) -> float:
  vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
  return sum(vals) / len(vals) if vals else math.nan


def _first_sample(eval_dir: Path) -> tuple[str, str, bool] | None:
  path = eval_dir / "samples.json"
  if not path.is_file():
    return None
  prompt = json.loads(path.read_text(encoding="utf-8"))["prompts"][0]
  sample = prompt["samples"][0]
  return prompt["prompt"], sample["text"], bool(sample["correct"])


def before_after(workdir: str | Path, row: str, last: int = 3) -> str:
  """The before/after summary of the calibrated teacher `row` (e.g. "teacher.lam-1_s0")
  against "teacher.original", as plain text.

  Args:
    workdir: the study's workdir.
    row: a calibrated teacher's row name.
    last: calibration steps averaged for "after".
  """
  wd = Path(workdir)
  name = row.split(".", 1)[1]
  lines = [f"Before and after calibrating ({name}):"]
  acc = {}
  for label, r in (("before", "teacher.original"), ("after", row)):
    path = wd / "eval" / r / "metrics.json"
    if path.is_file():
      acc[label] = json.loads(path.read_text(encoding="utf-8"))["metrics"]
  if len(acc) == 2:
    b, a = acc["before"], acc["after"]
    lines.append(f"  {'held-out accuracy':<45} {b['accuracy']:9.1%} -> {a['accuracy']:9.1%}   "
                 f"({b['prompts']} questions x {b['samples_per_prompt']} samples)")
  metrics = wd / "calib" / name / "metrics.jsonl"
  rows = read_jsonl(metrics)
  steps = [r for r in rows if "reward/cal" in r]
  if steps:
    tail = steps[-last:]
    for key, text in _KEYS:
      lines.append(f"  {text:<45} {_mean(steps[:1], key):9.2f} -> {_mean(tail, key):9.2f}")
    lines.append(f"  (rollouts of step 1 -> mean of steps {tail[0]['step']}-{tail[-1]['step']})")
  for label, r in (("original teacher", "teacher.original"), ("calibrated teacher", row)):
    found = _first_sample(wd / "eval" / r)
    if found:
      prompt, text, ok = found
      lines += ["", f"{label} ({'correct' if ok else 'wrong'}):", "  " +
                text.strip().replace("\n", "\n  ")]
  if found:
    lines.insert(1, "  question: " + prompt.splitlines()[0])
  return "\n".join(lines)
