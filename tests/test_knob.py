"""The knob study: its config checks, the filtering attacker's sample filter, and the whole
study at smoke size on a tiny pair carrying SmolLM2's and Gemma-3's real tokenizers (every
stage runs once, a rerun trains nothing again, the report covers what ran)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kdknob_jax.errors import ConfigError
from tests._calib import make_pair
from tests.test_experiments_pipeline import _load


@pytest.mark.parametrize("arg", [None, "smoke", "demo"])
def test_knob_configs_pass_their_checks(arg):
  from kdknob_jax.experiments import knob_config  # pylint: disable=g-import-not-at-top
  c = knob_config.build(_load("knob_arith", arg))
  assert (0.0 in c.lam_values) != c.demo  # the demo alone skips the control
  cal = knob_config.calibration(c, "T", "P", -1.0, 1)
  assert (cal.teacher, cal.target, cal.lam, cal.seed) == ("T", "P", -1.0, 1)
  # the cross target (Gemma-3-270M, a base model) scores plain text, the proxy its chat format
  cross = knob_config.calibration(c, "T", "X", -1.0, 0, cross=True)
  assert cross.target_chat == c.cross_target_chat and cal.target_chat == c.calibrate.target_chat
  if arg is None:
    assert not cross.target_chat and cal.target_chat
  stage0 = knob_config.teacher_stage(c)
  assert (stage0.teacher, stage0.student, stage0.method) == ("reference", c.base, "sft")
  attack = knob_config.student_run(c, "T", "S", "sft", "x.parquet", filtered=True)
  assert attack.filter_correct and attack.samples_cache == "x.parquet"
  if arg is None:  # the study the README reports: a proxy target, not the student
    assert c.target_keep != c.student_keep and c.cross_target
    assert len(c.seed_values) >= 2 and set(c.lam_values) >= {-1.0, 0.0, 1.0}
    assert c.evaluation.limit >= 64 and c.evaluation.n >= 8


@pytest.mark.parametrize("override,fragment", [(dict(lams="-1,1"), "control 0"),
                                               (dict(gkd_seeds="5"), "gkd_seeds"),
                                               (dict(gkd_lams="2", gkd_seeds="0",
                                                     student_methods="sft,gkd_fkl"),
                                                "gkd_lams"),
                                               (dict(student_methods="gkd_fkl"), "'sft'"),
                                               (dict(trap_rollouts=1), "trap_rollouts")])
def test_knob_config_errors_name_the_setting(override, fragment):
  from kdknob_jax.experiments import knob_config  # pylint: disable=g-import-not-at-top
  c = _load("knob_arith", "smoke")
  for k, v in override.items():
    c[k] = v
  with pytest.raises(ConfigError, match=fragment):
    knob_config.build(c)


def test_filter_keeps_only_verified_correct_samples():
  from kdknob_jax.data import get_task  # pylint: disable=g-import-not-at-top
  from kdknob_jax.distillation.samples import TeacherSamples  # pylint: disable=g-import-not-at-top
  from kdknob_jax.distillation.trainer import correct_rows  # pylint: disable=g-import-not-at-top
  task = get_task("gsm8k")
  records = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(4)]
  texts = ["so #### 0", "so #### 7", "so #### 2", "no answer"]
  samples = TeacherSamples([[1]] * 4, texts, np.ones(4, bool), 1)
  assert correct_rows(samples, task, records).tolist() == [0, 2]
  with pytest.raises(ConfigError, match="none of the teacher's 4 samples"):
    correct_rows(TeacherSamples([[1]] * 4, ["#### 9"] * 4, np.ones(4, bool), 1), task, records)


def test_filter_is_sft_only():
  from kdknob_jax.distillation.config import base_config, build  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.teacher, c.student, c.method, c.filter_correct = "t", "s", "gkd_fkl", True
  with pytest.raises(ConfigError, match="filter_correct"):
    build(c)


def _smoke(root):
  teacher, _ = make_pair(root)
  c = _load("knob_arith", "smoke")
  c.base, c.student_keep, c.target_keep = str(teacher), "0,2", "0"
  # no cross-tokenizer stage: it is `_calibrated` with another target (whose scoring the
  # calibration tests cover), and the report's handling of it is test_knob_report's
  c.cross_target = ""
  return c


def test_the_study_runs_every_stage_and_resumes_without_training_again(tmp_path):
  from kdknob_jax.experiments import knob, knob_config  # pylint: disable=g-import-not-at-top
  c = knob_config.build(_smoke(tmp_path / "models"))
  wd = tmp_path / "study"
  first = knob.run(c, wd, progress=False)
  rows = json.loads((wd / "stages.json").read_text())["rows"]
  expected = {"teacher.original", "student.base", "sft.original", "teacher.lam0_s0",
              "teacher.lam-1_s0", "sft.lam0_s0", "sft.lam-1_s0", "attack.lam-1_s0"}
  assert set(rows) == expected
  # every row ran, except an attacker left with no correct sample, which says so
  for name, row in rows.items():
    assert row["done"] or row.get("skipped"), name
    if row["done"]:
      assert (wd / "eval" / name / "samples.json").is_file()
  assert rows["teacher.lam-1_s0"]["lam"] == -1.0 and not rows["teacher.lam-1_s0"]["cross"]
  for teacher in ("teacher.original", "teacher.lam0_s0", "teacher.lam-1_s0"):
    traps = json.loads((wd / "traps" / f"{teacher}.json").read_text())
    assert len(traps["rkl"]) == c.trap_questions * c.trap_rollouts
    assert np.all(np.asarray(traps["rkl"]) >= -1e-4)  # a KL
  # the calibrations started from the tuned teacher and scored against the proxy cut
  ident = json.loads((wd / "calib" / "lam-1_s0" / "run.json").read_text())
  assert ident["teacher"] == str(wd / "models" / "teacher")
  assert ident["target"] == str(wd / "models" / "target")
  for path in first["paths"].values():
    assert path.is_file()
  report = (wd / "report.md").read_text()
  assert "Table 2" in report and "Table 4" in report
  seconds = json.loads((wd / "stages.json").read_text())["seconds"]
  knob.run(c, wd, progress=False)
  again = json.loads((wd / "stages.json").read_text())["seconds"]
  trained = [k for k in seconds if k.startswith(("teacher:", "calibrate", "student "))]
  assert trained and all(again[k] == seconds[k] for k in trained)
  # completed later, as on a fresh checkout: the exported results copied into the same
  # workdir path, without weights or checkpoints, resume with nothing trained, evaluated or
  # scored again, and give the same report
  from kdknob_jax.experiments import knob_export  # pylint: disable=g-import-not-at-top
  knob_export.export(wd, tmp_path / "results")
  wd.rename(tmp_path / "study_first")
  shutil.copytree(tmp_path / "results", wd)
  assert not list(wd.rglob("*.safetensors")) and not list(wd.rglob("checkpoints"))
  knob.run(c, wd, progress=False)
  assert json.loads((wd / "stages.json").read_text())["seconds"] == again
  assert (wd / "report.md").read_text() == report
  assert not list(wd.rglob("*.safetensors"))  # no model was rebuilt
  # the demo's stages are the study's first ones: on this workdir it only reads and summarizes
  demo = _smoke(tmp_path / "models")
  demo.demo, demo.lams = True, "-1"
  out = knob.run(knob_config.build(demo), wd, progress=False)
  assert "held-out accuracy" in out["summary"] and "calibrated teacher" in out["summary"]
  assert "r_cal" in out["summary"]


def test_stage_order_puts_a_seeds_gkd_students_before_the_next_seed(tmp_path, monkeypatch):
  """The plan's order, with the stages recorded instead of run: the original teacher's block,
  seed 0's calibrations and SFT students, then the GKD students of the original teacher and of
  `gkd_lams` only, then seed 1, then the cross-tokenizer calibration."""
  from kdknob_jax.experiments import knob, knob_config  # pylint: disable=g-import-not-at-top
  c = _load("knob_arith", "smoke")
  c.lams, c.seeds, c.gkd_seeds, c.gkd_lams = "-1,0,1", "0,1", "0", "1"
  c.student_methods, c.cross_target = "sft,gkd_rkl", "other"
  calls = []
  monkeypatch.setattr(knob, "train", lambda s, name, *a: calls.append(name))
  # models are made when a stage needs them: here each evaluation asks for its model
  monkeypatch.setattr(knob, "export_model", lambda spec, path, keep="": str(path))
  monkeypatch.setattr(knob, "write_report", lambda wd, c: {})
  monkeypatch.setattr(knob.Study, "evaluate", lambda self, row, model: model())
  monkeypatch.setattr(knob.Study, "traps", lambda self, row, spec: None)
  monkeypatch.setattr(knob, "_has_correct", lambda cache, c: True)
  knob.run(knob_config.build(c), tmp_path / "study", progress=False)
  runs = [name.split(" ")[1] for name in calls if name.startswith(("calibrate", "student"))]
  assert runs == [
      "sft.original",
      "lam0_s0", "sft.lam0_s0", "lam-1_s0", "sft.lam-1_s0", "attack.lam-1_s0",
      "lam+1_s0", "sft.lam+1_s0",
      "gkd_rkl.original", "gkd_rkl.lam+1_s0",
      "lam0_s1", "sft.lam0_s1", "lam-1_s1", "sft.lam-1_s1", "attack.lam-1_s1",
      "lam+1_s1", "sft.lam+1_s1",
      "xtok_lam-1_s0", "sft.xtok_lam-1_s0"]
