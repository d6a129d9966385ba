"""The knob study's report on hand-made workdirs: the bootstrap's figures and CIs, Table 2 and
Table 4 against hand-computed numbers and `summary.wrong_trace_preference`, the claims with a
stage present and missing, and the four files of a partial study."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdknob_jax.diagnostics.summary import wrong_trace_preference
from kdknob_jax.experiments import knob_report as kr

DRAWS = 200


def _stage(kind, group, method="none", seed=None, lam=None, cross=False):
  return {"kind": kind, "group": group, "seed": seed, "method": method, "lam": lam,
          "cross": cross, "done": False}


def _stages():
  """The study's plan: original and base, λ ∈ {-1, 0} with two seeds, λ = +1 with one, an
  attacker of λ = -1, and a cross-tokenizer λ = -1 teacher (its student not marked cross, as
  the study plans it)."""
  rows = {"teacher.original": _stage("teacher", "original"),
          "student.base": _stage("student", "base"),
          "sft.original": _stage("student", "original", "sft"),
          "gkd_rkl.original": _stage("student", "original", "gkd_rkl")}
  for lam, seeds in ((-1, (0, 1)), (0, (0, 1)), (1, (0,))):
    g = "lam0" if lam == 0 else f"lam{lam:+d}"
    for s in seeds:
      rows[f"teacher.{g}_s{s}"] = _stage("teacher", g, "none", s, float(lam))
      rows[f"sft.{g}_s{s}"] = _stage("student", g, "sft", s, float(lam))
  rows["attack.lam-1_s0"] = _stage("student", "lam-1", "attack", 0, -1.0)
  rows["teacher.xtok_lam-1_s0"] = _stage("teacher", "xtok_lam-1", "none", 0, -1.0, True)
  rows["sft.xtok_lam-1_s0"] = _stage("student", "xtok_lam-1", "sft", 0, -1.0)
  return rows


def _samples(correct, majority=None, tag="x"):
  """A samples.json of [Q][n] grades; majority_correct defaults to "more than half right"."""
  correct = np.asarray(correct, bool)
  if majority is None:
    majority = correct.mean(axis=1) > 0.5
  prompts = []
  for q, (row, maj) in enumerate(zip(correct, majority)):
    prompts.append({"index": q, "gold": str(q), "prompt": f"What is {q} + 0?", "samples": [
        {"text": f"{tag}: the answer is {q if c else -1}", "answer": str(q if c else -1),
         "correct": bool(c), "tokens": 7, "stopped": True} for c in row],
                    "majority": str(q), "majority_correct": bool(maj)})
  return {"task": "arith", "prompts": prompts, "metrics": {}, "config": {"n": correct.shape[1]}}


def _write(wd, rel, data):
  path = wd / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))


def _workdir(tmp_path, evals, stages=None):
  """A workdir with stages.json and eval/ROW/samples.json for each row of `evals`."""
  _write(tmp_path, "stages.json", {"rows": stages or _stages(), "seconds": {}})
  for row, correct in evals.items():
    _write(tmp_path, f"eval/{row}/samples.json", _samples(correct, tag=row))
  return tmp_path


def _traps(rng, questions=6, rollouts=4, shift=0.0):
  """A traps file of random scores; `shift` raises the teacher's RKL and makes it prefer the
  student's wrong traces."""
  s = questions * rollouts
  correct = rng.random(s) < 0.5
  logp_s = rng.normal(-20, 3, s)
  logp_t = logp_s - rng.gamma(2.0, 1.0, s) - shift * correct
  return {"prompt_index": np.repeat(np.arange(questions), rollouts).tolist(),
          "correct": correct.tolist(), "tokens": rng.integers(5, 40, s).tolist(),
          "rkl": (rng.gamma(2.0, 1.0, s) + shift).tolist(), "logp_student": logp_s.tolist(),
          "logp_teacher": logp_t.tolist()}


def test_table2_estimate_is_the_mean_over_seeds_of_the_hand_computed_metrics(tmp_path):
  n4 = lambda counts: [[i < c for i in range(4)] for c in counts]  # noqa: E731
  wd = _workdir(tmp_path, {"teacher.lam0_s0": n4([4, 2, 0, 1]),   # 7/16 right, pass 3/4
                           "teacher.lam0_s1": n4([4, 4, 3, 3])})  # 14/16, pass 1
  t2 = kr.table2(wd, DRAWS)
  row = t2["rows"]["teacher lam0"]
  assert row["seeds"] == 2 and row["rows"] == ["teacher.lam0_s0", "teacher.lam0_s1"]
  assert row["accuracy"]["estimate"] == pytest.approx((7 / 16 + 14 / 16) / 2)
  assert row["maj@n"]["estimate"] == pytest.approx((1 / 4 + 1) / 2)  # majority: > half right
  assert row["pass@n"]["estimate"] == pytest.approx((3 / 4 + 1) / 2)
  assert [p["accuracy"] for p in row["per_seed"]] == [7 / 16, 14 / 16]
  for m in ("accuracy", "maj@n", "pass@n"):
    assert row[m]["lo"] <= row[m]["estimate"] <= row[m]["hi"]
  assert t2["n"] == 4 and t2["questions"] == 4
  assert "| teacher lam0 | 2 | 65.6% [" in t2["markdown"]
  assert "teacher.original" in t2["missing"] and "teacher lam-1" not in t2["rows"]
  assert "teacher.lam0_s0" not in t2["missing"]


def test_ci_contains_the_estimate_and_shrinks_with_more_questions():
  rng = np.random.default_rng(0)
  widths = []
  for q in (20, 500):
    per_seed = [(rng.random((q, 1)) < 0.4).astype(float) for _ in range(2)]
    est, lo, hi = kr.bootstrap_ci(per_seed, np.mean, DRAWS, np.random.default_rng(1))
    assert est == pytest.approx(np.mean([a.mean() for a in per_seed]))
    assert lo <= est <= hi
    widths.append(hi - lo)
  assert widths[1] < widths[0] / 2


def test_paired_bootstrap_of_identical_inputs_is_exact():
  a = [np.random.default_rng(2).random((30, 3))]
  assert kr.bootstrap_diff(a, a, np.mean, DRAWS, np.random.default_rng(0)) == (0.0, 0.0, 0.0)
  assert kr.bootstrap_ratio(a, a, np.mean, DRAWS, np.random.default_rng(0)) == (1.0, 1.0, 1.0)
  # One question draw for both sides: a shift of every question shifts every resample alike.
  assert kr.bootstrap_diff([a[0] + 0.25], a, np.mean, DRAWS,
                           np.random.default_rng(0)) == pytest.approx((0.25, 0.25, 0.25))
  with pytest.raises(ValueError, match="question count"):
    kr.bootstrap_diff(a, [a[0][:5]], np.mean, DRAWS, np.random.default_rng(0))


def _claim(checked, prefix):
  found = [c for c in checked if c["claim"].startswith(prefix)]
  assert len(found) == 1, [c["claim"] for c in checked]
  return found[0]


def test_claims_on_a_study_and_with_a_stage_missing(tmp_path):
  right, wrong, half = [[True] * 4] * 6, [[False] * 4] * 6, [[True, False] * 2] * 6
  evals = {"teacher.lam0_s0": right, "teacher.lam0_s1": right, "teacher.lam-1_s0": right,
           "teacher.lam-1_s1": half, "sft.lam-1_s0": wrong, "sft.lam-1_s1": wrong,
           "sft.lam0_s0": right, "sft.lam0_s1": right, "sft.original": half,
           "gkd_rkl.original": wrong, "sft.lam+1_s0": right, "attack.lam-1_s0": half,
           "teacher.xtok_lam-1_s0": wrong}
  wd = _workdir(tmp_path, evals)
  rng = np.random.default_rng(3)
  for row, shift in (("teacher.lam0_s0", 0.0), ("teacher.lam-1_s0", 3.0),
                     ("teacher.lam+1_s0", -0.5)):
    _write(wd, f"traps/{row}.json", _traps(rng, shift=shift))
  checked = kr.claims(kr.table2(wd, DRAWS), kr.table4(wd, DRAWS), DRAWS)
  a = _claim(checked, "(a) the undistillable teacher lam-1")
  assert a["estimate"] == pytest.approx(0.75) and a["holds"] is False  # (1 + 1/2) / 2 of 1
  assert not any("xtok" in c["claim"] for c in checked if c["claim"][:3] in ("(a)", "(b)"))
  b = _claim(checked, "(b) the sft students of lam-1")
  assert b["holds"] is True and (b["estimate"], b["lo"], b["hi"]) == (-1.0, -1.0, -1.0)
  assert "below, CI excludes 0" in b["figures"]
  c = _claim(checked, "(c) the sft students of lam+1")  # best baseline: sft.original, 50%
  assert c["holds"] is True and c["estimate"] == pytest.approx(0.5)
  assert "sft ← original" in c["figures"] and "vs sft ← lam0: Δ +0.0 pts" in c["figures"]
  up = _claim(checked, "(d) token RKL goes up for lam-1")
  assert up["holds"] is True and up["lo"] > 0
  assert _claim(checked, "(d) wrong-trace preference goes up for lam-1")["holds"] is True
  assert _claim(checked, "(d) token RKL goes down for lam+1")["holds"] is True
  e = _claim(checked, "(e) finding: the filtering attacker of lam-1")
  assert e["holds"] is None and e["estimate"] == pytest.approx(0.5)
  assert "does not recover" in e["figures"]  # 50% against the λ = 0 students' 100%
  for row in ("sft.lam0_s0", "sft.lam0_s1"):  # the λ = 0 students not evaluated yet
    (wd / "eval" / row / "samples.json").unlink()
  checked = kr.claims(kr.table2(wd, DRAWS), kr.table4(wd, DRAWS), DRAWS)
  b = _claim(checked, "(b) the sft students of lam-1")
  assert b["holds"] is None and "sft ← lam0 not measured" in b["figures"]
  assert b["estimate"] is None
  assert "sft ← lam0 not measured" in _claim(checked, "(e)")["figures"]


def test_table4_matches_summary_on_the_data_and_on_resampled_questions(tmp_path):
  rng = np.random.default_rng(4)
  traps = _traps(rng, questions=8, rollouts=5)
  wd = _workdir(tmp_path, {})
  _write(wd, "traps/teacher.lam0_s0.json", traps)
  row = kr.table4(wd, DRAWS)["rows"]["lam0"]
  loss = np.subtract(traps["logp_student"], traps["logp_teacher"])
  want = wrong_trace_preference(loss, traps["correct"], traps["prompt_index"])
  assert row["wrong_preference"]["estimate"] == pytest.approx(want["share"])
  assert (row["pairs"], row["prompts"], row["samples"]) == (want["pairs"], want["prompts"], 40)
  assert row["token_rkl"]["estimate"] == pytest.approx(sum(traps["rkl"]) / sum(traps["tokens"]))
  assert row["seq_rkl"]["estimate"] == pytest.approx(loss.mean())
  assert row["seeds"] == 1 and row["lam"] == 0.0
  # A resample of questions (with repeats, each repeat a question of its own) scores the same
  # from the per-question sums as from the samples themselves.
  index, values = kr.trap_arrays(traps)
  pick = [1, 1, 5, 0, 7, 7, 7, 2]
  prompt = np.asarray(traps["prompt_index"])
  sel = np.concatenate([np.flatnonzero(prompt == index[p]) for p in pick])
  relabel = np.repeat(np.arange(len(pick)), [np.sum(prompt == index[p]) for p in pick])
  again = wrong_trace_preference(loss[sel], np.asarray(traps["correct"])[sel], relabel)
  sums = values[pick].sum(axis=0)
  assert sums[4] / sums[5] == pytest.approx(again["share"]) and sums[5] == again["pairs"]


def test_write_on_a_partial_study_writes_the_four_files(tmp_path):
  rng = np.random.default_rng(5)
  grades = lambda p: (rng.random((5, 3)) < p).tolist()  # noqa: E731
  wd = _workdir(tmp_path, {"teacher.original": grades(0.7), "student.base": grades(0.3),
                           "teacher.lam0_s0": grades(0.6), "teacher.lam-1_s0": grades(0.6),
                           "sft.original": grades(0.4), "sft.lam0_s0": grades(0.5),
                           "sft.lam-1_s0": grades(0.2)})
  stages = _stages()
  stages["attack.lam-1_s0"]["skipped"] = "none of the teacher's samples is correct"
  _write(wd, "stages.json", {"rows": stages})
  _write(wd, "traps/teacher.lam0_s0.json", _traps(rng))
  for name, lam in (("lam0_s0", 0.0), ("lam-1_s0", -1.0)):
    lines = [json.dumps({"step": i, "reward/task": 0.1 * i, "reward/cal": None if i == 2 else
                         -lam * i, "rollout/completion_tokens": 50 - i, "train/kl": 0.01 * i})
             for i in range(5)]
    (wd / "calib" / name).mkdir(parents=True)
    (wd / "calib" / name / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "rew')
  paths = kr.write(wd, draws=DRAWS, seed=0)
  assert sorted(paths) == ["curves", "frontier", "json", "report"]
  for kind in ("frontier", "curves"):
    assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = paths["json"].read_text()
  numbers = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in knob.json"))
  assert numbers["table2"]["rows"]["sft ← lam-1"]["seeds"] == 1
  assert numbers["calibration"]["lam-1_s0"]["last"] == {
      "reward/task": pytest.approx(0.4), "reward/cal": 4.0, "rollout/completion_tokens": 46.0,
      "train/kl": pytest.approx(0.04)}
  report = paths["report"].read_text()
  for section in ("## Table 2", "## Table 4", "## Claims", "## Sample completions",
                  "## Missing stages"):
    assert section in report
  assert "- `teacher.lam-1_s1`: not evaluated" in report
  assert "- `attack.lam-1_s0`: skipped (none of the teacher's samples is correct)" in report
  assert "- `teacher.lam-1_s0`: traps not measured" in report
  assert "teacher.original: the answer is" in report and "**teacher.lam0_s0**" in report
  assert "(b) the sft students of lam-1" in report
  kr.write(wd, draws=DRAWS, seed=0)
  assert paths["json"].read_text() == text  # the same seed, the same numbers


def test_samples_markdown_fences_text_that_holds_backticks(tmp_path):
  data = _samples([[True], [False]], tag="t")
  data["prompts"][0]["samples"][0]["text"] = "use ```code``` here"
  _write(tmp_path, "eval/teacher.original/samples.json", data)
  md = kr.samples_markdown(tmp_path, ["teacher.original", "teacher.lam0_s0"], questions=1)
  assert "### Question 0 (gold answer `0`)" in md and "> What is 0 + 0?" in md
  assert "````text\nuse ```code``` here\n````" in md
  assert "**teacher.original**: correct" in md and "**teacher.lam0_s0**: not evaluated" in md
  assert "Question 1" not in md


def test_export_copies_the_small_results_and_leaves_weights_and_samples(tmp_path):
  """`knob_export.export` copies the report, figures, stage plan, evaluations, trap scores and
  run settings, in the workdir's layout, and no weights, checkpoints or sample caches; a folder
  that is not a study's workdir is refused with the fix named."""
  from kdknob_jax.experiments import knob_export  # pylint: disable=g-import-not-at-top
  wd, dest = tmp_path / "wd", tmp_path / "results"
  kept = ["report.md", "knob.json", "frontier.png", "stages.json",
          "eval/teacher.original/metrics.json", "eval/teacher.original/samples.json",
          "traps/teacher.original.json", "traps/student_samples.json",
          "calib/lam0_s0/metrics.jsonl", "calib/lam0_s0/run.json", "teacher_sft/run.json",
          "students/sft.original/run.json"]
  left = ["models/teacher/model.safetensors", "calib/lam0_s0/checkpoints/8/state.safetensors",
          "samples/lam0_s0.parquet", "calib/lam0_s0/.lock"]
  for i, name in enumerate(kept + left):
    (wd / name).parent.mkdir(parents=True, exist_ok=True)
    (wd / name).write_text(f"file {i}")
  copied = knob_export.export(wd, dest)
  assert sorted(p.relative_to(dest).as_posix() for p in copied) == sorted(kept)
  assert all((dest / n).read_text() == (wd / n).read_text() for n in kept)
  assert not any((dest / n).exists() for n in left)
  with pytest.raises(FileNotFoundError, match="not a knob study's workdir.*--workdir"):
    knob_export.export(tmp_path / "results" / "eval", tmp_path / "elsewhere")
