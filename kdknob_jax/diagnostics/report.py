"""Writing the pilot's results: Table-1 markdown and CSV, the Figure-2 PNG, and a JSON of
every number behind them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdknob_jax.diagnostics.summary import tail_statistics
from kdknob_jax.diagnostics.traps import SequenceScores

# (key, header, format) of the Table-1 columns; "±" columns pair a value with its "_se".
COLUMNS = (
    ("dataset", "dataset", "{}"),
    ("student_accuracy", "student acc", "{:.3f}"),
    ("teacher_accuracy", "teacher acc", "{:.3f}"),
    ("token_rkl_on", "token RKL (on-policy, per token)", "{:.4f}"),
    ("seq_rkl_on", "seq RKL (on-policy)", "±"),
    ("wrong_preference", "wrong-trace pref. (student samples)", "{:.1%}"),
    ("wrong_preference_all", "wrong-trace pref. (both models' samples)", "{:.1%}"),
    ("token_fkl_off", "token FKL (off-policy, per token)", "{:.4f}"),
    ("seq_rkl_off", "seq RKL (off-policy, IS)", "±"),
    ("seq_rkl_off_k3", "seq RKL (off-policy, K3)", "±"),
    ("off_policy_ess", "IS ESS", "{:.1%}"),
)


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
  value = row.get(key)
  if isinstance(value, float) and not math.isfinite(value):
    return "n/a" if math.isnan(value) else str(value)
  if fmt == "±":
    se = row.get(key + "_se", float("nan"))
    return f"{value:.3g} ± {se:.2g}" if math.isfinite(se) else f"{value:.3g}"
  return fmt.format(value)


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """The Table-1-style markdown table, one row per dataset."""
  lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
           "| " + " | ".join("---" for _ in COLUMNS) + " |"]
  for row in rows:
    lines.append("| " + " | ".join(_fmt(row, k, f) for k, _, f in COLUMNS) + " |")
  notes = [f"- {r['dataset']}: {r['prompts']} prompts × {r['rollouts']} rollouts per model; "
           f"wrong-trace preference over {r['wrong_pairs']} (correct, wrong) pairs from "
           f"{r['wrong_prompts']} prompts among the student's samples, {r['wrong_pairs_all']} "
           f"pairs from {r['wrong_prompts_all']} prompts among both models' samples"
           for r in rows]
  return "\n".join(lines + [""] + notes) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
  """Every field of every row (the markdown shows a subset)."""
  keys = list(rows[0]) if rows else []
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)


def tail_figure_data(scores: SequenceScores) -> dict[str, Any]:
  """The per-vocabulary points of one (dataset, direction) panel row, nonzero entries only."""
  levels = []
  for k, row, stats in zip(scores.ks, scores.contrib, tail_statistics(scores)):
    nz = np.flatnonzero(row)
    levels.append(dict(stats, token_ids=nz.tolist(), frequency=scores.frequency[nz].tolist(),
                       kl=[float(f"{x:.6g}") for x in row[nz]]))
  return {"direction": scores.direction, "levels": levels}


def plot_tails(path: Path, panels: dict[str, dict[str, Any]]) -> None:
  """Figure-2-style grid: per-vocabulary KL contribution against sampled frequency, one row per
  (dataset, direction) and one column per top-k level."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(panels)
  cols = max(len(p["levels"]) for p in panels.values())
  fig, axes = plt.subplots(len(names), cols, figsize=(3.2 * cols, 2.8 * len(names)),
                           squeeze=False)
  for r, name in enumerate(names):
    for c, level in enumerate(panels[name]["levels"]):
      ax = axes[r][c]
      x = np.asarray(level["frequency"], np.float64) + 1.0
      y = np.asarray(level["kl"], np.float64)
      ax.scatter(x, y, s=3, alpha=0.4, rasterized=True,
                 c=np.where(y >= 0, "tab:blue", "tab:red"))
      ax.set_xscale("log")
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.set_yscale("symlog", linthresh=1e-4)
      k = level["k"]
      title = f"top-{k}" if c < len(panels[name]["levels"]) - 1 else f"all {k}"
      ax.set_title(f"{title}: share {level['kl_share']:.0%}, ρ={level['spearman']:.2f}",
                   fontsize=8)
      ax.tick_params(labelsize=7)
      if c == 0:
        ax.set_ylabel(f"{name}\nKL contribution", fontsize=8)
      if r == len(names) - 1:
        ax.set_xlabel("sampled frequency + 1", fontsize=8)
    for c in range(len(panels[name]["levels"]), cols):
      axes[r][c].axis("off")
  fig.suptitle("Per-token KL contributions by vocabulary entry, inside the top-k of the "
               "expectation's distribution (blue ≥ 0, red < 0)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(workdir: Path, rows: Sequence[dict[str, Any]], panels: dict[str, dict[str, Any]],
              extra: dict[str, Any]) -> dict[str, Path]:
  """Writes table1.md, table1.csv, figure2_tail.png and pilot.json; returns their paths."""
  workdir.mkdir(parents=True, exist_ok=True)
  paths = {"markdown": workdir / "table1.md", "csv": workdir / "table1.csv",
           "figure": workdir / "figure2_tail.png", "json": workdir / "pilot.json"}
  paths["markdown"].write_text(table_markdown(rows), encoding="utf-8")
  write_csv(paths["csv"], rows)
  plot_tails(paths["figure"], panels)
  payload = {"table1": list(rows), "figure2": panels, **extra}
  paths["json"].write_text(json.dumps(payload, allow_nan=True), encoding="utf-8")
  return paths
