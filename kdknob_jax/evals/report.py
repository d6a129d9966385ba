"""Writing evaluation results: JSON for machines, markdown for people.

  paths = write_report(result, "out/eval_smollm2", label="smollm2-135m-instruct")
  # out/eval_smollm2/samples.json  every prompt's samples, answers and grades, config, metrics
  # out/eval_smollm2/metrics.json  label, task, config and metrics only
  # out/eval_smollm2/summary.md    the settings and a table of the metrics

  print(metrics_table({"teacher": m1, "calibrated": m2}))   # one row per model
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdknob_jax.errors import ConfigError, DataError
from kdknob_jax.evals.runner import EvalResult

# Shares in [0, 1], shown as percentages; other floats get one decimal, counts none.
_RATE_NAMES = ("accuracy", "greedy_accuracy", "answered", "greedy_answered", "truncated")
_COUNT_NAMES = ("prompts", "samples_per_prompt", "samples")


def _is_rate(name: str) -> bool:
  return name in _RATE_NAMES or name.startswith(("pass@", "maj@"))


def format_value(name: str, value: Any) -> str:
  """A metric as table text: "41.2%" for a share, "12" for a count, "87.5" for a mean."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, str):
    return value
  if _is_rate(name):
    return f"{100.0 * float(value):.1f}%"
  if name in _COUNT_NAMES or isinstance(value, int):
    return str(int(value))
  return f"{float(value):.1f}"


def metric_columns(metrics: Mapping[str, Any]) -> list[str]:
  """A reading order for metric names: accuracy, maj@n, pass@k (by k), greedy, the rest."""
  def rank(name: str) -> tuple:
    if name == "accuracy":
      return (0, 0)
    if name.startswith("maj@"):
      return (1, _suffix_number(name))
    if name.startswith("pass@"):
      return (2, _suffix_number(name))
    if name.startswith("greedy"):
      return (3, 0)
    if name in _COUNT_NAMES:
      return (5, _COUNT_NAMES.index(name))
    return (4, 0)
  return sorted(metrics, key=rank)  # sorted is stable: equal ranks keep their given order


def _suffix_number(name: str) -> int:
  tail = name.partition("@")[2]
  return int(tail) if tail.isdigit() else 0


def metrics_table(rows: Mapping[str, Mapping[str, Any]],
                  columns: Sequence[str] | None = None) -> str:
  """Several runs' metrics as one markdown table: a row per label, a column per metric.

  Args:
    rows: label (e.g. a model name) -> its metrics dict (`EvalResult.metrics`).
    columns: the metrics to show, in order (default: every metric any row has, in
      `metric_columns` order). A row without a metric shows "-".

  Returns:
    The table, header and separator included, ending in a newline.
  """
  if not rows:
    raise ConfigError("metrics_table needs at least one row (label -> metrics).")
  if columns is None:
    seen: dict[str, None] = {}
    for metrics in rows.values():
      seen.update(dict.fromkeys(metrics))
    columns = metric_columns(seen)
  lines = ["| model | " + " | ".join(columns) + " |",
           "| --- |" + " ---: |" * len(columns)]
  for label, metrics in rows.items():
    cells = [format_value(c, metrics.get(c)) for c in columns]
    lines.append(f"| {_cell(str(label))} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(result: EvalResult, label: str) -> str:
  """The summary.md text: the settings, then the metrics as a one-row table."""
  c = result.config
  sampling = (f"T={c.get('temperature')}, top_k={c.get('top_k')}, top_p={c.get('top_p')}")
  settings = [f"- task: `{result.task}`" + (f", data `{c['data']}`" if c.get("data") else ""),
              f"- {result.metrics.get('prompts', len(result.prompts))} prompts x "
              f"{c.get('n')} samples ({sampling}), at most {c.get('max_new_tokens')} new tokens"
              + (", plus one greedy sample each" if c.get("greedy") else ""),
              f"- seed {c.get('seed')}; {result.seconds:.1f} s of decoding and grading"]
  return (f"# {_cell(label)} on {result.task}\n\n" + "\n".join(settings) + "\n\n"
          + metrics_table({label: result.metrics}))


def write_report(result: EvalResult, out_dir: str | Path, label: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
  """Writes samples.json, metrics.json and summary.md into `out_dir` (created if needed).

  Args:
    result: from `evaluate`.
    out_dir: the output directory; existing files of these names are replaced.
    label: the model's name in the files and table (default: the task name).
    extra: more settings to record beside `result.config` (the model, data source, ...).

  Returns:
    {"samples": path, "metrics": path, "summary": path}.
  """
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  label = label or result.task
  if extra:
    result = EvalResult(result.task, result.prompts, result.metrics,
                        {**result.config, **extra}, result.seconds)
  paths = {"samples": out / "samples.json", "metrics": out / "metrics.json",
           "summary": out / "summary.md"}
  paths["samples"].write_text(json.dumps({"label": label, **result.to_dict()}, indent=1,
                                         ensure_ascii=False), encoding="utf-8")
  paths["metrics"].write_text(json.dumps(
      {"label": label, "task": result.task, "config": result.config, "metrics": result.metrics,
       "seconds": result.seconds}, indent=1, ensure_ascii=False), encoding="utf-8")
  paths["summary"].write_text(summary_markdown(result, label), encoding="utf-8")
  return paths


def read_metrics(path: str | Path) -> dict[str, Any]:
  """The metrics.json of a finished evaluation (a file, or the directory holding it)."""
  path = Path(path)
  if path.is_dir():
    path = path / "metrics.json"
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise DataError(f"{path} does not exist; run `python -m kdknob_jax.evaluate ... --out "
                    f"{path.parent}` first.") from e
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); rerun the evaluation that "
                    f"wrote it.") from e
