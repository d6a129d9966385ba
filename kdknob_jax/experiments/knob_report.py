"""The knob study's report: Table 2 (every model's accuracy), Table 4 (how each teacher scores the
base student's own samples), the paper's claims with bootstrap CIs, and sample completions.

  paths = write("out/knob")   # report.md, knob.json, frontier.png, curves.png in out/knob

It reads whatever the study's workdir holds so far: a row without `eval/ROW/samples.json` or
`traps/ROW.json` is left out of its table and listed as missing, and a claim whose models are
not all there holds None with the reason. Every CI is a 95% percentile bootstrap that resamples
questions (one draw shared by all the models compared, since they answer the same questions)
and seeds (per model, with replacement); each quantity draws from its own generator, seeded by
`seed` and its name, so a number does not change when other rows arrive.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kdknob_jax.diagnostics.summary import wrong_trace_preference
from kdknob_jax.evals.metrics import pass_at_k
from kdknob_jax.experiments import knob_figures
from kdknob_jax.experiments.knob_figures import (lam_text, read_json, sample_rows,
                                                 samples_markdown)
from kdknob_jax.experiments.table import RETAIN

METHOD_ORDER = ("none", "sft", "gkd_fkl", "gkd_rkl", "attack")
VERDICT = {True: "yes", False: "no", None: "n/a"}
Stat = Callable[[np.ndarray], "float | np.ndarray"]


def bootstrap(sides: Sequence[Sequence[np.ndarray]], stat: Stat, combine: Callable, draws: int,
              rng: np.random.Generator) -> tuple:
  """A statistic of several models combined (difference, ratio, ...), with a 95% bootstrap CI.

  Args:
    sides: per model, one per-question array per seed ([Q, ...]; the same Q and question order
      for every array of every model).
    stat: a model-seed's statistic of its per-question array (a float or a vector).
    combine: the reported figure from the per-model statistics (each the mean over seeds).
    draws: resamples.
    rng: the resamples' generator.

  Returns:
    (estimate, lo, hi): the figure on the data, and the 2.5 / 97.5 percentiles of its
    resamples (nan-aware: a draw where a ratio is undefined is left out).
  """
  sides = [[np.asarray(a) for a in side] for side in sides]
  sizes = {len(a) for side in sides for a in side}
  if any(not side for side in sides) or len(sizes) != 1 or 0 in sizes:
    raise ValueError(f"bootstrap needs seeds on every side and one question count > 0, got "
                     f"{[len(s) for s in sides]} seeds, question counts {sorted(sizes)}.")
  q = sizes.pop()
  point = [np.mean([np.asarray(stat(a), np.float64) for a in side], axis=0) for side in sides]
  estimate = combine(*point)
  questions = rng.integers(0, q, size=(draws, q))
  seeds = [rng.integers(0, len(side), size=(draws, len(side))) for side in sides]
  values = []
  for d in range(draws):
    per_side = []
    for side, pick in zip(sides, seeds):
      per_seed = np.array([stat(a[questions[d]]) for a in side], np.float64)
      per_side.append(per_seed[pick[d]].mean(axis=0))
    values.append(combine(*per_side))
  with warnings.catch_warnings():  # all-nan columns: a ratio undefined in every draw
    warnings.simplefilter("ignore", RuntimeWarning)
    lo, hi = np.nanpercentile(np.array(values, np.float64), [2.5, 97.5], axis=0)
  return tuple(float(x) if np.ndim(x) == 0 else np.asarray(x) for x in (estimate, lo, hi))


def bootstrap_ci(per_seed: Sequence[np.ndarray], stat: Stat, draws: int,
                 rng: np.random.Generator) -> tuple:
  """(estimate, lo, hi) of one model's statistic: the mean over seeds and its 95% CI."""
  return bootstrap([per_seed], stat, lambda a: a, draws, rng)


def bootstrap_diff(a_per_seed: Sequence[np.ndarray], b_per_seed: Sequence[np.ndarray], stat: Stat,
                   draws: int, rng: np.random.Generator) -> tuple:
  """(estimate, lo, hi) of stat(a) − stat(b), both on the same question draw in each resample."""
  return bootstrap([a_per_seed, b_per_seed], stat, np.subtract, draws, rng)


def bootstrap_ratio(a_per_seed: Sequence[np.ndarray], b_per_seed: Sequence[np.ndarray],
                    stat: Stat, draws: int, rng: np.random.Generator) -> tuple:
  """(estimate, lo, hi) of stat(a) / stat(b) (nan where stat(b) is 0), paired like the diff."""
  return bootstrap([a_per_seed, b_per_seed], stat, _ratio, draws, rng)


def eval_arrays(samples: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A samples.json's grades: question indexes [Q], sample correctness [Q, n] and
  majority_correct [Q]."""
  prompts = samples.get("prompts") or []
  index = np.array([p.get("index", i) for i, p in enumerate(prompts)], np.int64)
  sizes = {len(p["samples"]) for p in prompts}
  if len(sizes) > 1:
    raise ValueError(f"every question needs the same number of samples, got {sorted(sizes)}")
  correct = np.array([[bool(s["correct"]) for s in p["samples"]] for p in prompts], bool)
  majority = np.array([bool(p.get("majority_correct")) for p in prompts], bool)
  return index, correct.reshape(len(prompts), -1), majority


def per_question_metrics(correct: np.ndarray, majority: np.ndarray) -> np.ndarray:
  """[Q, 3]: each question's accuracy (share of its n samples), maj@n and pass@n."""
  n = correct.shape[1]
  passed = [pass_at_k(n, int(c), n) for c in correct.sum(axis=1)]
  return np.stack([correct.mean(axis=1), majority.astype(np.float64),
                   np.array(passed, np.float64)], axis=1)


def trap_arrays(traps: dict) -> tuple[np.ndarray, np.ndarray]:
  """A traps file per question: indexes [Q] (sorted) and [Q, 6] sums, the parts of Table 4's
  ratios (RKL, tokens, sequence RKL, samples, wrong-preferred pairs, pairs), so a resample of
  questions recomputes each ratio exactly as on the resampled samples."""
  prompt = np.asarray(traps["prompt_index"], np.int64)
  correct = np.asarray(traps["correct"], bool)
  loss = np.asarray(traps["logp_student"], np.float64) - np.asarray(traps["logp_teacher"],
                                                                    np.float64)
  rkl, tokens = np.asarray(traps["rkl"], np.float64), np.asarray(traps["tokens"], np.float64)
  index = np.unique(prompt)
  rows = []
  for p in index:
    sel = prompt == p
    pref = wrong_trace_preference(loss[sel], correct[sel], prompt[sel])
    preferred = round(pref["share"] * pref["pairs"]) if pref["pairs"] else 0
    rows.append([rkl[sel].sum(), tokens[sel].sum(), loss[sel].sum(), sel.sum(), preferred,
                 pref["pairs"]])
  return index, np.array(rows, np.float64).reshape(len(index), 6)


def label(kind: str, group: str, method: str) -> str:
  """A Table-2 row: "teacher lam-1", "student base", "sft ← lam-1"."""
  if kind == "teacher":
    return f"teacher {group}"
  return f"student {group}" if method == "none" else f"{method} ← {group}"


def read_stages(workdir: Path) -> dict[str, dict]:
  """stages.json's rows ({} before the study wrote it)."""
  return (read_json(Path(workdir) / "stages.json") or {}).get("rows", {})


def table2(workdir: str | Path, draws: int, seed: int = 0) -> dict:
  """Every evaluated model (seeds pooled) with accuracy, maj@n and pass@n and their CIs.

  Returns:
    "rows": label → its stage facts, "seeds", "rows", "per_seed" accuracies and {"estimate",
    "lo", "hi"} of each metric; "n", "questions", "markdown"; "stages", "groups", "expected"
    (label → its rows in stages.json), "missing" (rows not evaluated); "data": label → per seed
    (question indexes, [Q, 3] per-question metrics), numpy arrays for `claims`.
  """
  stages = read_stages(workdir)
  found, expected, missing, ns = {}, {}, [], set()
  for row, info in stages.items():
    lab = label(info["kind"], info["group"], info["method"])
    expected.setdefault(lab, []).append(row)
    samples = read_json(Path(workdir) / "eval" / row / "samples.json")
    index, correct, majority = eval_arrays(samples) if samples else ([], None, None)
    if not len(index):
      missing.append(row)
      continue
    ns.add(correct.shape[1])
    found.setdefault(lab, []).append((info.get("seed"), row, index,
                                      per_question_metrics(correct, majority)))
  groups = _groups(stages)
  order = sorted(found, key=lambda x: _label_key(stages[expected[x][0]], groups))
  rows, data = _pool(found, order, lambda v: v.mean(axis=0), ("accuracy", "maj@n", "pass@n"),
                     draws, seed, "table2")
  for lab, r in rows.items():
    r.update({k: stages[r["rows"][0]][k] for k in ("kind", "group", "method")})
    r.update(groups[r["group"]])
    r["per_seed"] = [{"seed": p[0], "row": p[1], "accuracy": float(p[3][:, 0].mean())}
                     for p in found[lab]]
  n = ns.pop() if len(ns) == 1 else None  # the study evaluates every model alike
  lines = [f"| model | seeds | accuracy | maj@{n or 'n'} | pass@{n or 'n'} |",
           "| --- |" + " ---: |" * 4]
  lines += [f"| {lab} | {r['seeds']} | " + " | ".join(
      _pct_ci(r[m]) for m in ("accuracy", "maj@n", "pass@n")) + " |" for lab, r in rows.items()]
  questions = sorted({len(i) for parts in data.values() for i, _ in parts})
  return {"rows": rows, "n": n, "questions": questions[0] if len(questions) == 1 else None,
          "markdown": "\n".join(lines) + "\n" if rows else "No model evaluated yet.\n",
          "stages": stages, "groups": groups, "expected": expected, "missing": missing,
          "data": data}


def table4(workdir: str | Path, draws: int, seed: int = 0) -> dict:
  """Per teacher group (seeds pooled): token RKL per token, sequence RKL and the wrong-trace
  preference on the base student's samples, with CIs and the pair counts.

  Returns:
    "rows": group → "lam", "cross", "seeds", "rows", "token_rkl", "seq_rkl",
    "wrong_preference" (each {"estimate", "lo", "hi"}), and totals over seeds of "pairs",
    "prompts" (questions with both kinds of trace) and "samples"; "markdown"; "missing"
    (teacher rows without traps); "data" as in `table2`, with `trap_arrays`' sums.
  """
  stages = read_stages(workdir)
  groups, found, missing = _groups(stages), {}, []
  for row in (r for r, info in stages.items() if info["kind"] == "teacher"):
    traps = read_json(Path(workdir) / "traps" / f"{row}.json")
    if traps and traps.get("prompt_index"):
      found.setdefault(stages[row]["group"], []).append(
          (stages[row].get("seed"), row, *trap_arrays(traps)))
    else:
      missing.append(row)
  order = [g for g in groups if g in found]
  rows, data = _pool(found, order, trap_stat, ("token_rkl", "seq_rkl", "wrong_preference"),
                     draws, seed, "table4")
  for group, r in rows.items():
    total = np.sum([v.sum(axis=0) for _, v in data[group]], axis=0)
    r.update(groups[group], pairs=int(total[5]), samples=int(total[3]),
             prompts=int(sum(np.count_nonzero(v[:, 5]) for _, v in data[group])))
  lines = ["| teacher | λ | seeds | token RKL (nats/token) | sequence RKL (nats) | wrong-trace "
           "preference | pairs | questions with both | samples |", "| --- |" + " ---: |" * 8]
  lines += [f"| {g} | {lam_text(r['lam'])} | {r['seeds']} | "
            f"{_num_ci(r['token_rkl'], 4)} | {_num_ci(r['seq_rkl'], 2)} | "
            f"{_pct_ci(r['wrong_preference'])} | {r['pairs']} | {r['prompts']} | "
            f"{r['samples']} |" for g, r in rows.items()]
  return {"rows": rows, "markdown": "\n".join(lines) + "\n" if rows else "No traps yet.\n",
          "missing": missing, "data": data}


def claims(t2: dict, t4: dict, draws: int = 2000, seed: int = 0) -> list[dict]:
  """The paper's claims (a)–(e) on the study's models, each with its figures and CI.

  Args:
    t2: `table2`'s result.
    t4: `table4`'s result.
    draws: bootstrap resamples of each comparison.
    seed: seeds each comparison's generator (with the claim's text).

  Returns:
    One dict per claim line: "claim", "figures", "holds" (True / False / None: untestable, the
    reason in "figures"; or a finding, not a claim) and "estimate", "lo", "hi".
  """
  acc, out = t2["data"], []
  ordered = [(g, i) for g, i in t2["groups"].items() if not i["cross"]]
  control = next((g for g, i in ordered if i["lam"] == 0), "(no λ = 0 group)")
  under = [g for g, i in ordered if (i["lam"] or 0) < 0]
  over = [g for g, i in ordered if (i["lam"] or 0) > 0]

  def add(claim, figures, holds, ci=(None, None, None)):
    out.append({"claim": claim, "figures": figures, "holds": holds,
                **dict(zip(("estimate", "lo", "hi"), ci))})

  def compare(claim, a, b, how=np.subtract, data=acc, stat=accuracy_stat, key=""):
    """(estimate, lo, hi) of a against b; None, with the claim added as untestable, when a
    side is not measured (or quietly, for a claim's secondary figure: claim None)."""
    gone = [x for x in (a, b) if x not in data]
    if gone and claim:
      add(claim, "untestable: " + ", ".join(f"{x} not measured" for x in gone), None)
    return None if gone else bootstrap(_align(data[a], data[b]), stat, how, draws,
                                       _rng(seed, f"{claim or ''}{key} {a} {b}"))

  def est(lab):
    return t2["rows"][lab]["accuracy"]["estimate"]

  ref = f"teacher {control}"
  for g in under:  # (a), (b)
    claim = (f"(a) the undistillable teacher {g} keeps >= {RETAIN:.0%} of the λ = 0 teacher's "
             "accuracy")
    if (ci := compare(claim, f"teacher {g}", ref, _ratio)) is not None and est(ref) > 0:
      add(claim, f"{est(f'teacher {g}'):.1%} / {est(ref):.1%} = {_pct_ci(ci)}",
          bool(ci[0] >= RETAIN), ci)
    elif ci is not None:  # a ratio to a teacher that solves nothing says nothing
      add(claim, f"untestable: the λ = 0 teacher scores {est(ref):.1%}", None)
    for m in _methods(t2, g, control):
      a, b = f"{m} ← {g}", f"{m} ← {control}"
      claim = f"(b) the {m} students of {g} score below the {m} students of {control}"
      if (ci := compare(claim, a, b)) is not None:
        add(claim, f"{est(a):.1%} vs {est(b):.1%}: Δ {_pts_ci(ci)}; " + (
            "below, CI excludes 0" if ci[2] < 0 else "not shown"), bool(ci[2] < 0), ci)
  baselines = [lab for lab, r in t2["rows"].items()
               if r["group"] == "original" and r["kind"] == "student" and r["method"] != "none"]
  best = max(baselines, key=est) if baselines else "the original teacher's best student"
  for g in over:  # (c)
    for m in _methods(t2, g, None):
      a, claim = f"{m} ← {g}", f"(c) the {m} students of {g} are at or above the best baseline"
      if (ci := compare(claim, a, best)) is not None:
        v = compare(None, a, f"{m} ← {control}", key="control")
        add(claim, f"{est(a):.1%} vs {best} {est(best):.1%}: Δ {_pts_ci(ci)}" + (
            f"; vs {m} ← {control}: Δ {_pts_ci(v)}" if v else ""), bool(ci[0] >= 0), ci)
  for g in over + under:  # (d)
    sign = 1 if g in under else -1
    for i, name, fmt in ((0, "token RKL", lambda c: _num_ci(c, 4)),
                         (2, "wrong-trace preference", _pts_ci)):
      claim = f"(d) {name} goes {'up' if sign > 0 else 'down'} for {g} against {control}"
      ci = compare(claim, g, control, data=t4["data"], stat=lambda v, i=i: trap_stat(v)[i])
      if ci is not None:
        add(claim, f"Δ {fmt(ci)} (CI {'excludes' if ci[1] > 0 or ci[2] < 0 else 'includes'} 0)",
            bool(sign * ci[0] > 0), ci)
  for g in t2["groups"]:  # (e)
    a, b, c = f"attack ← {g}", f"sft ← {g}", f"sft ← {control}"
    claim = f"(e) finding: the filtering attacker of {g} against the plain SFT students"
    if a in t2["expected"] and (ci := compare(claim, a, b)) is not None:
      v = compare(None, a, c, key="control")
      add(claim, f"{est(a):.1%} vs {b} {est(b):.1%}: Δ {_pts_ci(ci)}; " + (
          f"vs {c} {est(c):.1%}: Δ {_pts_ci(v)}, the filter " + (
              "recovers (CI reaches 0)" if v[2] >= 0 else "does not recover (CI below 0)")
          + " the λ = 0 student's accuracy" if v else f"{c} not measured"), None, ci)
  return out


def write(workdir: str | Path, draws: int = 2000, seed: int = 0) -> dict[str, Path]:
  """Writes report.md, knob.json, frontier.png and curves.png into the study's workdir.

  Args:
    workdir: the study's workdir, finished or not.
    draws: bootstrap resamples of every CI.
    seed: the bootstrap's seed (the outputs are a function of the workdir and it).

  Returns:
    {"report", "json", "frontier", "curves"}: the paths written.
  """
  workdir = Path(workdir)
  t2, t4 = table2(workdir, draws, seed), table4(workdir, draws, seed)
  checked = claims(t2, t4, draws, seed)
  stages = t2["stages"]
  missing = ([f"- `{r}`: " + (f"skipped ({stages[r]['skipped']})" if stages[r].get("skipped")
                              else "not evaluated") for r in t2["missing"]]
             + [f"- `{r}`: traps not measured" for r in t4["missing"]])
  md = ["# The knob study", "",
        f"{t2['questions'] or '?'} questions, {t2['n'] or '?'} samples each; 95% bootstrap CIs "
        f"over questions and seeds ({draws} resamples, seed {seed}).", "",
        "## Table 2: accuracy of every model", "", t2["markdown"],
        "## Table 4: the teachers on the base student's samples", "", t4["markdown"],
        "## Claims", "", "| claim | figures | holds |\n| --- | --- | --- |\n" + "".join(
            f"| {c['claim']} | {c['figures']} | {VERDICT[c['holds']]} |\n" for c in checked),
        "## Sample completions", "", samples_markdown(workdir, sample_rows(stages, t2["missing"])),
        "## Missing stages", "", "\n".join(missing) if missing else
        "None: every stage is in." if stages else "No stages.json yet.", ""]
  paths = {"report": workdir / "report.md", "json": workdir / "knob.json",
           "frontier": workdir / "frontier.png", "curves": workdir / "curves.png"}
  paths["report"].write_text("\n".join(md), encoding="utf-8")
  runs = knob_figures.read_curves(workdir, stages)
  numbers = {"draws": draws, "seed": seed, "claims": checked,
             "table2": {k: v for k, v in t2.items() if k not in ("data", "markdown")},
             "table4": {k: v for k, v in t4.items() if k not in ("data", "markdown")},
             "calibration": {name: {k: v for k, v in run.items() if k != "series"} | {
                 "last": {m: s[1][-1] for m, s in run["series"].items() if s[1]}}
                             for name, run in runs.items()}}
  paths["json"].write_text(json.dumps(_jsonable(numbers), indent=1, ensure_ascii=False),
                           encoding="utf-8")
  knob_figures.frontier(t2, paths["frontier"])
  knob_figures.curves(runs, paths["curves"])
  return paths


def _pool(found: dict, order: list, stat: Stat, metrics: Sequence[str], draws: int, seed: int,
          table: str) -> tuple[dict, dict]:
  """Each key's seeds pooled: its row ("seeds", "rows", each metric's CI) and its data."""
  rows, data = {}, {}
  for key in order:
    found[key].sort(key=lambda p: -1 if p[0] is None else p[0])
    data[key] = [(p[2], p[3]) for p in found[key]]
    est, lo, hi = bootstrap_ci(_align(data[key])[0], stat, draws, _rng(seed, f"{table} {key}"))
    rows[key] = {"seeds": len(found[key]), "rows": [p[1] for p in found[key]]}
    rows[key].update({m: {"estimate": est[i], "lo": lo[i], "hi": hi[i]}
                      for i, m in enumerate(metrics)})
  return rows, data


def trap_stat(v: np.ndarray) -> np.ndarray:
  """Table 4's [token RKL, sequence RKL, wrong-trace share] of `trap_arrays`' rows."""
  s = v.sum(axis=0)
  return _ratio(s[[0, 2, 4]], s[[1, 3, 5]])


def accuracy_stat(v: np.ndarray) -> float:
  """Mean accuracy of `per_question_metrics`' rows."""
  return float(v[:, 0].mean())


def _ratio(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _rng(seed: int, key: str) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _align(*sides: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[list[np.ndarray]]:
  """Per side, each seed's values on the questions every seed of every side has, in the first
  seed's order: the (indexes, values) of models measured on different questions, paired."""
  parts = [part for side in sides for part in side]
  common = set(parts[0][0].tolist()).intersection(*(set(i.tolist()) for i, _ in parts[1:]))
  order = [q for q in parts[0][0].tolist() if q in common]
  where = [{q: k for k, q in enumerate(i.tolist())} for i, _ in parts]
  out = iter(v[[w[q] for q in order]] for (_, v), w in zip(parts, where))
  return [[next(out) for _ in side] for side in sides]


def _groups(stages: dict) -> dict[str, dict]:
  """Group → its λ and whether its teacher has another tokenizer, in report order: original
  and base first, then by λ, cross-tokenizer groups last. A group is cross when any of its rows
  is (the study marks the teacher, not its students)."""
  groups = {}
  for info in stages.values():
    g = groups.setdefault(info["group"], {"lam": None, "cross": False})
    g["lam"] = info.get("lam") if g["lam"] is None else g["lam"]
    g["cross"] = g["cross"] or bool(info.get("cross"))
  return dict(sorted(groups.items(), key=lambda kv: (kv[1]["lam"] is not None, kv[1]["cross"],
                                                     kv[1]["lam"] or 0.0, kv[0])))


def _label_key(info: dict, groups: dict) -> tuple:
  method = info["method"]
  rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
  return (info["kind"] != "teacher", rank, method, list(groups).index(info["group"]))


def _methods(t2: dict, group: str, control: str | None) -> list[str]:
  """"sft", then each other student method measured for `group` (and for `control`)."""
  def of(g):
    return {r["method"] for r in t2["rows"].values() if r["kind"] == "student" and r["group"] == g}
  both = of(group) & of(control) if control is not None else of(group)
  return ["sft"] + [m for m in METHOD_ORDER if m in both - {"sft", "none", "attack"}] + sorted(
      both - set(METHOD_ORDER))


def _pct_ci(c) -> str:
  e, lo, hi = (c["estimate"], c["lo"], c["hi"]) if isinstance(c, dict) else c
  return f"{100 * e:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(e) else "-"


def _pts_ci(c) -> str:
  e, lo, hi = c
  return f"{100 * e:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _num_ci(c, digits: int) -> str:
  e, lo, hi = (c["estimate"], c["lo"], c["hi"]) if isinstance(c, dict) else c
  return f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if math.isfinite(e) else "-"


def _jsonable(x):
  """JSON without NaN tokens: a nan (an undefined ratio) becomes null."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return None if isinstance(x, float) and not math.isfinite(x) else x
