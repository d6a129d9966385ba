"""The knob study's exhibits beside its tables (see `knob_report`): the accuracy frontier of
teachers against their SFT students, the calibration curves, and sample completions side by
side. Colours follow λ throughout: blues undistillable (λ < 0), grey the control (λ = 0), reds
distillable (λ > 0), darker for a larger |λ|; black the original teacher.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

from kdknob_jax.runs.metrics import read_jsonl

CURVES = (("reward/task", "r_task"), ("reward/cal", "r_cal"),
          ("rollout/completion_tokens", "completion tokens"), ("train/kl", "KL to the base"))
SEED_STYLES = ("-", "--", ":", "-.")


def _pyplot():
  matplotlib.use("Agg")  # files only: the report runs on machines without a display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def lam_text(lam: float | None) -> str:
  """A λ as the report writes it: "+1", "-0.5", "0", or "-" for none (original, base)."""
  return "-" if lam is None else "0" if lam == 0 else f"{lam:+g}"


def lam_color(lam: float | None, lams: Sequence[float]):
  """The colour of a λ among the study's λ values `lams` (black for None: the original)."""
  if lam is None:
    return "black"
  if lam == 0:
    return "tab:gray"
  top = max((abs(x) for x in lams if x), default=abs(lam)) or 1.0
  shade = 0.45 + 0.5 * min(abs(lam) / top, 1.0)  # the palest shades vanish on white
  return matplotlib.colormaps["Reds" if lam > 0 else "Blues"](shade)


def read_json(path: str | Path):
  """A file's JSON, or None when it is absent or still being written."""
  try:
    return json.loads(Path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


# What a λ = 0 calibration logs as 0 without scoring the target (calibration/rollouts.py).
UNSCORED_AT_ZERO = ("reward/cal", "trap/seq_kl_teacher_target", "logp/target")


def read_curves(workdir: str | Path, stages: dict) -> dict[str, dict]:
  """Every calibration's logged metrics, from calib/NAME/metrics.jsonl.

  Args:
    workdir: the study's workdir.
    stages: stages.json's rows (for each run's λ, seed and target).

  Returns:
    NAME → {"lam", "seed", "cross", "series": metric → (steps, values)} for the metrics of
    `CURVES`; null values and lines still being written are skipped.
  """
  runs = {}
  for path in sorted(Path(workdir).glob("calib/*/metrics.jsonl")):
    name = path.parent.name
    info = stages.get(f"teacher.{name}", {})
    series = {key: ([], []) for key, _ in CURVES}
    for record in read_jsonl(path):  # a last line cut mid-write is dropped
      for key, (steps, values) in series.items():
        if info.get("lam") == 0 and key in UNSCORED_AT_ZERO:
          continue  # a λ = 0 run never scores the target: its logged 0 is not a measurement
        v = record.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and record.get("step") is not None:
          steps.append(int(record["step"]))
          values.append(float(v))
    runs[name] = {"lam": info.get("lam"), "seed": info.get("seed"),
                  "cross": bool(info.get("cross")), "series": series}
  return runs


def frontier(t2: dict, path: str | Path) -> Path:
  """frontier.png: x a teacher's accuracy, y its SFT student's, a point per (group, seed).

  Args:
    t2: `knob_report.table2`'s result (per-seed accuracies of "teacher G" and "sft ← G").
    path: the PNG to write.
  """
  plt = _pyplot()
  from matplotlib.ticker import PercentFormatter  # pylint: disable=g-import-not-at-top
  rows = t2["rows"]
  lams = [i["lam"] for i in t2["groups"].values() if i["lam"] is not None]
  fig, ax = plt.subplots(figsize=(6.5, 5))
  drawn = 0
  for lab, teacher in rows.items():
    student = rows.get(f"sft ← {teacher['group']}")
    if teacher["kind"] != "teacher" or student is None:
      continue
    by_seed = {p["seed"]: p["accuracy"] for p in student["per_seed"]}
    points = [(p["accuracy"], by_seed[p["seed"]]) for p in teacher["per_seed"]
              if p["seed"] in by_seed]
    if not points:
      continue
    lam = teacher["lam"]
    marker = "*" if lam is None else "D" if teacher["cross"] else "o"
    name = lab if lam is None else f"{lab} (λ = {lam_text(lam)})"
    name += ", other tokenizer" if teacher["cross"] else ""
    x, y = zip(*points)
    ax.scatter(x, y, marker=marker, s=220 if lam is None else 60, color=lam_color(lam, lams),
               edgecolors="black", linewidths=0.5, label=name, zorder=3)
    drawn += len(points)
  if "student base" in rows:
    ax.axhline(rows["student base"]["accuracy"]["estimate"], ls=":", color="gray",
               label="base student")
  if not drawn:
    ax.text(0.5, 0.5, "no teacher with an evaluated SFT student yet", ha="center",
            transform=ax.transAxes)
  ax.xaxis.set_major_formatter(PercentFormatter(1.0))
  ax.yaxis.set_major_formatter(PercentFormatter(1.0))
  ax.set_xlabel("teacher accuracy")
  ax.set_ylabel("SFT student accuracy")
  ax.set_title("Teacher accuracy against what an SFT student learns from it")
  if drawn or "student base" in rows:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return Path(path)


def curves(runs: dict[str, dict], path: str | Path) -> Path:
  """curves.png: r_task, r_cal, completion tokens and KL to the base against step, 2×2 panels,
  a line per calibration run coloured by λ, the line style by seed.

  Args:
    runs: `read_curves`'s result.
    path: the PNG to write.
  """
  plt = _pyplot()
  lams = [r["lam"] for r in runs.values() if r["lam"] is not None]
  seeds = sorted({r["seed"] for r in runs.values() if r["seed"] is not None})
  style_of = {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(seeds)}
  order = sorted(runs, key=lambda r: (runs[r]["cross"], runs[r]["lam"] or 0.0, r))
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  for ax, (key, title) in zip(axes.flat, CURVES):
    for name in order:
      run = runs[name]
      steps, values = run["series"][key]
      if steps:  # cross-tokenizer runs get markers: their λ and seed may match another run's
        ax.plot(steps, values, style_of.get(run["seed"], "-"), color=lam_color(run["lam"], lams),
                lw=1.2, label=name + (" (other tokenizer)" if run["cross"] else ""),
                marker="d" if run["cross"] else None, markevery=0.1, ms=4)
    if not ax.lines:
      ax.text(0.5, 0.5, "not logged yet", ha="center", transform=ax.transAxes)
    ax.set_title(f"{title} ({key})", fontsize=10)
    ax.set_xlabel("step")
  if axes.flat[0].lines:
    axes.flat[0].legend(fontsize=7)
  fig.suptitle("Calibration runs: colour λ, line style seed")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return Path(path)


def sample_rows(stages: dict, missing: Sequence[str]) -> list[str]:
  """The teacher rows to show samples of: one per group (the original, the control, λ > 0,
  λ < 0), of the lowest seed among those evaluated (a `missing` row only when all are)."""
  groups = {}
  for row, info in stages.items():
    if info["kind"] == "teacher":
      groups.setdefault(info["group"], []).append(row)
  def order(g):  # original, the control, distillable, undistillable, other tokenizers
    lam = stages[groups[g][0]].get("lam")
    cross = any(stages[r].get("cross") for r in groups[g])
    return (lam is not None, cross, bool(lam), (lam or 0.0) < 0, abs(lam or 0.0), g)
  return [min(groups[g], key=lambda r: (r in missing, stages[r].get("seed") or 0))
          for g in sorted(groups, key=order)]


def samples_markdown(workdir: str | Path, rows: Sequence[str], questions: int = 2) -> str:
  """The first sample of each row on the first `questions` questions, a section per question.

  Args:
    workdir: the study's workdir (reads eval/ROW/samples.json).
    rows: the rows to show, in order (e.g. "teacher.original", "teacher.lam-1_s0").
    questions: how many questions, from the first.

  Returns:
    Markdown: per question its index and gold answer (and prompt, where recorded), then per row
    whether its sample is correct and the text in a code block.
  """
  loaded = {r: read_json(Path(workdir) / "eval" / r / "samples.json") for r in rows}
  loaded = {r: s["prompts"] for r, s in loaded.items() if s and s.get("prompts")}
  if not loaded:
    return "No sample completions yet.\n"
  first = next(iter(loaded.values()))
  lines = []
  for q in range(min(questions, len(first))):
    p = first[q]
    lines += [f"### Question {p.get('index', q)} (gold answer `{p.get('gold')}`)", ""]
    if p.get("prompt"):
      lines += ["> " + x for x in str(p["prompt"]).splitlines()] + [""]
    for r in rows:
      if r not in loaded or q >= len(loaded[r]) or not loaded[r][q]["samples"]:
        lines += [f"**{r}**: not evaluated", ""]
        continue
      s = loaded[r][q]["samples"][0]
      text = str(s.get("text", ""))
      fence = "`" * max(3, max(_backtick_runs(text), default=0) + 1)  # text cannot close it
      lines += [f"**{r}**: {'correct' if s.get('correct') else 'wrong'}, answer "
                f"`{s.get('answer')}`, {s.get('tokens', '?')} tokens"
                + ("" if s.get("stopped", True) else ", cut at the token limit"), "",
                fence + "text", text, fence, ""]
  return "\n".join(lines)


def _backtick_runs(text: str) -> list[int]:
  """Lengths of the runs of backticks in `text`."""
  out, run = [], 0
  for ch in text + " ":
    if ch == "`":
      run += 1
    elif run:
      out.append(run)
      run = 0
  return out
