"""The pipeline's config checks and its Table 2 (claims, markdown, JSON, PNG) on hand-made
results. The stages themselves are the calibration and distillation runs tested elsewhere; the
whole pipeline on the embedded models is the README's measured run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdknob_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, arg: str | None = None):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  del config_flags
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name,arg", [("tiny_pipeline", None), ("tiny_pipeline", "smoke"),
                                      ("pipeline_qwen3", None), ("pipeline_qwen3", "v5p"),
                                      ("pipeline_qwen3", "v5p,full"),
                                      ("pipeline_gemma3", None), ("pipeline_gemma3", "full")])
def test_every_pipeline_config_passes_its_checks(name, arg):
  from kdknob_jax.experiments import pipeline_config  # pylint: disable=g-import-not-at-top
  c = pipeline_config.build(_load(name, arg))
  # every calibration targets the student, every student learns from one of three teachers
  cal = pipeline_config.calibration(c, -1.0, "S")
  assert (cal.lam, cal.target, cal.teacher) == (-c.lam, "S", c.teacher)
  d = pipeline_config.distillation(c, "gkd_rkl", "T", "S", "x.parquet")
  assert (d.method, d.teacher, d.student, d.samples_cache) == ("gkd_rkl", "T", "S", "x.parquet")


PAPER = {"pipeline_qwen3": ("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B"),
         "pipeline_gemma3": ("google/gemma-3-12b-it", "google/gemma-3-1b-it",
                             "google/gemma-3-4b-it")}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_pipelines_calibrate_against_a_proxy_and_distil_another_student(name):
  """§6.1: the teacher is calibrated against a small proxy and distilled into a larger student,
  lr 2e-5 and 4 samples per prompt; every model's shapes trace and the vocabularies agree."""
  import jax  # pylint: disable=g-import-not-at-top
  from kdknob_jax.experiments import pipeline, pipeline_config  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf.load import config_of  # pylint: disable=g-import-not-at-top
  from kdknob_jax.models import abstract_params, forward  # pylint: disable=g-import-not-at-top
  c = pipeline_config.build(_load(name, "full"))
  teacher, target, student = PAPER[name]
  assert (c.teacher, c.target, c.student) == (teacher, target, student)
  assert pipeline_config.target_of(c, c.student) == target != student
  cal = pipeline_config.calibration(c, 1.0, pipeline_config.target_of(c, c.student))
  assert (cal.target, cal.lora.rank, cal.lora.alpha, cal.optimizer.lr, cal.group_size) == (
      target, 128, 128.0, 2e-5, 4)
  d = pipeline_config.distillation(c, "gkd_fkl", teacher, student, "x.parquet")
  assert (d.optimizer.lr, d.samples_per_prompt) == (2e-5, 4)
  assert [e.label for e in c.evaluations] == ["gsm8k", "bigmath_l4", "bigmath_l5",
                                              "commonsenseqa", "mmlu_pro", "supergpqa"]
  pipeline.check_vocabularies(c)  # the paper's pairs share their output rows
  tokens = jax.ShapeDtypeStruct((2, 8), jax.numpy.int32)
  for spec in (teacher, target, student):
    cfg = config_of(spec, "bfloat16")
    logits = jax.eval_shape(lambda p, t, cfg=cfg: forward(p, cfg, t)[0], abstract_params(cfg),
                            tokens)
    assert logits.shape == (2, 8, cfg.vocab_size)


def test_a_token_level_student_with_other_vocabulary_rows_fails_before_anything_runs(tmp_path):
  """Gemma-3-1B shares Gemma-3-12B's tokenizer but not its 262,208 output rows: the pipeline
  refuses it before calibrating, and accepts it when only SFT is asked for."""
  from kdknob_jax.experiments import pipeline, pipeline_config  # pylint: disable=g-import-not-at-top
  c = _load("pipeline_gemma3")
  c.student = "google/gemma-3-1b-it"
  built = pipeline_config.build(c)
  with pytest.raises(ConfigError, match=r"262,208 .* 262,144.*Gemma-3-4B"):
    pipeline.run(built, tmp_path / "wd", progress=False)
  assert not (tmp_path / "wd").exists()  # nothing was written
  c.baselines = c.calibrated_methods = "sft"
  pipeline.check_vocabularies(pipeline_config.build(c))


def test_missing_evaluation_data_fails_before_anything_runs(tmp_path):
  from kdknob_jax.experiments import pipeline, pipeline_config  # pylint: disable=g-import-not-at-top
  c = _load("tiny_pipeline", "smoke")
  c.extra_evaluations = [dict(name="extra", task="gsm8k", source=str(tmp_path / "none.jsonl"))]
  built = pipeline_config.build(c)
  with pytest.raises(ConfigError, match="'extra' cannot read its data.*none.jsonl"):
    pipeline.run(built, tmp_path / "wd", progress=False)
  assert not (tmp_path / "wd").exists()
  c.extra_evaluations = [dict(name="gsm8k"), dict(name="gsm8k")]
  with pytest.raises(ConfigError, match="distinct"):
    pipeline_config.build(c)


def test_bad_pipeline_settings_are_refused():
  from kdknob_jax.experiments import pipeline_config  # pylint: disable=g-import-not-at-top
  c = _load("tiny_pipeline")
  c.lam = -1.0
  with pytest.raises(ConfigError, match=r"\|λ\|"):
    pipeline_config.build(c)
  c = _load("tiny_pipeline")
  c.calibrated_methods = "sft,kd"
  with pytest.raises(ConfigError, match="kd"):
    pipeline_config.build(c)
  c = _load("tiny_pipeline")
  c.evaluation.ks = "1,64"
  with pytest.raises(ConfigError, match="n = 16"):
    pipeline_config.build(c)


RESULTS = {
    "teacher": {"accuracy": 0.60, "maj@16": 0.7, "pass@16": 0.9, "greedy_accuracy": 0.65},
    "teacher_distillable": {"accuracy": 0.62, "maj@16": 0.7, "pass@16": 0.9,
                            "greedy_accuracy": 0.6},
    "teacher_undistillable": {"accuracy": 0.58, "maj@16": 0.6, "pass@16": 0.9,
                              "greedy_accuracy": 0.6},
    "student": {"accuracy": 0.10, "maj@16": 0.1, "pass@16": 0.4, "greedy_accuracy": 0.1},
    "student_sft": {"accuracy": 0.30, "maj@16": 0.3, "pass@16": 0.5, "greedy_accuracy": 0.3},
    "student_gkd_fkl": {"accuracy": 0.35, "maj@16": 0.3, "pass@16": 0.5,
                        "greedy_accuracy": 0.3},
    "improve_sft": {"accuracy": 0.34, "maj@16": 0.3, "pass@16": 0.5, "greedy_accuracy": 0.3},
    "misled_sft": {"accuracy": 0.20, "maj@16": 0.2, "pass@16": 0.5, "greedy_accuracy": 0.2},
}


def test_table_checks_the_three_claims_and_writes_every_format(tmp_path):
  from kdknob_jax.experiments import pipeline_config, table  # pylint: disable=g-import-not-at-top
  c = pipeline_config.build(_load("tiny_pipeline"))
  tab = table.build(RESULTS, c.evaluation, 125.0)
  got = {x["claim"]: (x["holds"], x["figures"]) for x in tab["claims"]}
  assert len(got) == 3
  retain = next(v for k, v in got.items() if "keeps" in k)
  assert retain == (True, "0.580 / 0.600 = 96.7%")  # 0.58 / 0.60 >= 95 %
  misled = next(v for k, v in got.items() if "misled" in k)
  assert misled == (True, "0.200 vs 0.300")  # below the plain SFT student
  improve = next(v for k, v in got.items() if "improve" in k)
  assert improve == (False, "0.340 vs best baseline 0.350")  # below GKD-FKL's 0.35
  assert tab["columns"] == ["accuracy", "maj@16", "pass@16", "greedy_accuracy"]
  assert "| misled: student ← undistillable teacher, SFT | 20.0% |" in tab["markdown"]
  assert "2.1 min" in tab["markdown"]
  paths = table.write(tab, tmp_path)
  saved = json.loads(paths["json"].read_text())
  assert saved["rows"]["student_sft"]["accuracy"] == 0.30 and len(saved["claims"]) == 3
  assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # A teacher that solves nothing leaves the retention claim untestable, not "failed".
  zero = dict(RESULTS, teacher=dict(RESULTS["teacher"], accuracy=0.0))
  first = table.claims(zero)[0]
  assert first["holds"] is None and "untestable" in first["figures"]
