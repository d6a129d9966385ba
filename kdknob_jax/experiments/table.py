"""The pipeline's Table 2: every model's metrics, the paper's three claims checked against them,
as markdown, JSON and a bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

ROW_NAMES = {
    "teacher": "teacher (original)",
    "teacher_distillable": "teacher, distillable (λ > 0)",
    "teacher_undistillable": "teacher, undistillable (λ < 0)",
    "student": "student (before distillation)",
}
RETAIN = 0.95  # the undistillable teacher keeps at least this share of the original's accuracy


def row_name(row: str) -> str:
  """The table's label of a pipeline row ("student_sft" → "student ← teacher, SFT")."""
  if row in ROW_NAMES:
    return ROW_NAMES[row]
  kind, _, method = row.partition("_")
  method = method.upper().replace("GKD_", "GKD-")
  return {"student": f"student ← original teacher, {method}",
          "improve": f"improve: student ← distillable teacher, {method}",
          "misled": f"misled: student ← undistillable teacher, {method}"}[kind]


def claims(results: Mapping[str, Mapping[str, float]], metric: str = "accuracy") -> list[dict]:
  """The paper's claims at this scale, each with its figures and whether it holds."""
  acc = {row: float(m[metric]) for row, m in results.items()}
  out = []
  if "teacher" in acc and "teacher_undistillable" in acc:
    t, u = acc["teacher"], acc["teacher_undistillable"]
    claim = f"the undistillable teacher keeps >= {RETAIN:.0%} of the original teacher's {metric}"
    if t > 0:
      out.append(dict(claim=claim, holds=u / t >= RETAIN, figures=f"{u:.3f} / {t:.3f} = "
                      f"{u / t:.1%}"))
    else:  # a ratio to 0 means nothing: the original teacher solved none
      out.append(dict(claim=claim, holds=None, figures=f"{u:.3f} / 0: untestable"))
  baselines = {r: a for r, a in acc.items() if r.startswith("student_")}
  best = max(baselines.values()) if baselines else None
  for row, a in acc.items():
    kind, _, method = row.partition("_")
    if kind == "misled" and f"student_{method}" in acc:
      plain = acc[f"student_{method}"]
      out.append(dict(claim=f"the misled student ({method}) is below the plain {method} student",
                      holds=a < plain, figures=f"{a:.3f} vs {plain:.3f}"))
    if kind == "improve" and best is not None:
      out.append(dict(claim=f"the improve student ({method}) is at or above the best baseline",
                      holds=a >= best, figures=f"{a:.3f} vs best baseline {best:.3f}"))
  return out


def build(results: Mapping[str, Mapping[str, float]], e, seconds: float) -> dict:
  """The table of one evaluation as a dict: rows, columns, claims, markdown.

  Args:
    results: each row's metrics.
    e: the `EvaluationSettings` the metrics come from.
    seconds: the pipeline's wall time so far.
  """
  from kdknob_jax.evals.report import format_value  # pylint: disable=g-import-not-at-top
  ks = [int(k) for k in str(e.ks).split(",")]
  columns = ["accuracy", f"maj@{e.n}"] + [f"pass@{k}" for k in ks if k != 1]
  if e.greedy:
    columns.append("greedy_accuracy")
  rows = {row: {c: m.get(c) for c in columns} for row, m in results.items()}
  lines = ["| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
  for row, m in rows.items():
    lines.append(f"| {row_name(row)} | " + " | ".join(format_value(c, m[c]) for c in columns)
                 + " |")
  checked = claims(results)
  lines += ["", "| claim | figures | holds |", "| --- | --- | --- |"]
  verdict = {True: "yes", False: "no", None: "n/a"}
  lines += [f"| {x['claim']} | {x['figures']} | {verdict[x['holds']]} |" for x in checked]
  lines = [f"### {e.label}", ""] + lines
  lines += ["", f"{e.task} ({e.source}), {e.n} samples per prompt at temperature {e.temperature}; "
            f"wall time of this pipeline invocation {seconds / 60:.1f} min."]
  return {"columns": columns, "rows": rows, "claims": checked, "seconds": seconds,
          "markdown": "\n".join(lines) + "\n", "task": e.label, "n": e.n}


def write(tab: dict, workdir: Path, suffix: str = "") -> dict[str, Path]:
  """table{suffix}.md, .json and .png (grouped bars, one group per model) in `workdir`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  paths = {kind: workdir / f"table{suffix}.{ext}"
           for kind, ext in (("markdown", "md"), ("json", "json"), ("png", "png"))}
  paths["markdown"].write_text(tab["markdown"], encoding="utf-8")
  paths["json"].write_text(json.dumps({k: v for k, v in tab.items() if k != "markdown"},
                                      indent=1, ensure_ascii=False), encoding="utf-8")
  rows, cols = list(tab["rows"]), tab["columns"]
  fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
  width = 0.8 / len(cols)
  x = np.arange(len(rows))
  for i, col in enumerate(cols):
    vals = [tab["rows"][r][col] or 0.0 for r in rows]
    ax.bar(x + (i - (len(cols) - 1) / 2) * width, vals, width, label=col)
  ax.set_xticks(x, [row_name(r).replace(": ", ":\n").replace(", ", ",\n") for r in rows],
                fontsize=7)
  ax.set_ylim(0, 1)
  ax.set_ylabel("share correct")
  ax.set_title(f"{tab['task']}: teachers and students ({tab['n']} samples per prompt)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(paths["png"], dpi=120)
  plt.close(fig)
  return paths
