"""The pipeline's settings, typed: the models, one calibration and one distillation config that
every run of its stages starts from, the methods, and the evaluation; the paper-scale recipe
(Table 2 on GSM8K); and the checks of every run config the pipeline will make, before any
model loads. Used by `configs/*pipeline*.py`."""

from __future__ import annotations

import dataclasses

from kdknob_jax import settings as settings_lib
from kdknob_jax.calibration import config as calib_config
from kdknob_jax.calibration.config import CalibConfig
from kdknob_jax.distillation import config as distill_config
from kdknob_jax.distillation.config import DistillConfig
from kdknob_jax.errors import ConfigError
from kdknob_jax.train.settings import DataSettings

CALIBRATED = {"distillable": 1.0, "undistillable": -1.0}


@dataclasses.dataclass(frozen=True)
class EvaluationSettings(DataSettings):
  """How every model of the table is evaluated (see `kdknob_jax.evals.evaluate`): the data
  split, then the sampling."""
  source: str = "gsm8k/test.jsonl"
  n: int = 16
  ks: str = "1,16"
  max_new_tokens: int = 0   # 0: the distillation's
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = True
  chat: bool = True
  seed: int = 0
  prompts_per_call: int = 32


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The pipeline's settings.

  Attributes:
    teacher, student: the models; student_keep cuts the student from `student`
      (`kdknob_jax.models.derive.parse_keep`).
    dtype: of every model.
    lam: |λ| of the calibrated teachers.
    calibrate: the calibration every teacher run starts from (teacher, target, lam set per run).
    distill: the distillation every student run starts from (teacher, student, method set per
      run).
    baselines: students of the original teacher (comma-separated methods).
    calibrated_methods: improve / misled students of the calibrated teachers.
    evaluation: how each model is evaluated.
  """
  teacher: str = ""
  student: str = ""
  student_keep: str = ""
  dtype: str = "bfloat16"
  lam: float = 1.0
  calibrate: CalibConfig = CalibConfig()
  distill: DistillConfig = DistillConfig()
  baselines: str = "sft,gkd_fkl,gkd_rkl"
  calibrated_methods: str = "sft,gkd_fkl,gkd_rkl"
  evaluation: EvaluationSettings = EvaluationSettings()


def base_config():
  """A ConfigDict of every setting at its default: what `configs/*pipeline*.py` edit."""
  return settings_lib.to_configdict(PipelineConfig())


def paper_pipeline(teacher: str, student: str, arg: str | None = None):
  """A pipeline of `teacher` → `student` on GSM8K, bf16, for one 8×H100 host (FSDP 8) or, with
  arg "v5p", a TPU v5p slice (FSDP over 8 chips, data parallel across the rest): the
  calibration recipe of `calibration.config.paper_config`, full fine-tuning of the students as
  in the paper's GKD setup, 16 samples per test question."""
  if arg not in (None, "v5p"):
    raise ValueError(f"Unknown argument {arg!r}; use ':v5p' or none.")
  c = base_config()
  c.teacher, c.student, c.dtype, c.lam = teacher, student, "bfloat16", 1.0
  c.calibrate = calib_config.paper_config(teacher, student, 1.0, arg)
  c.calibrate.target_chat = True
  mesh = dict(data=-1, fsdp=8, tensor=1) if arg == "v5p" else dict(data=1, fsdp=8, tensor=1)
  d = c.distill
  d.update(prompts_per_step=32, samples_per_prompt=1, max_new_tokens=512, steps=500,
           eval_every=100, checkpoint_every=50, temperature=1.0)
  d.optimizer.update(lr=1e-5, warmup_steps=20)
  d.mesh = mesh
  c.evaluation.update(task="gsm8k", source="gsm8k/test.jsonl", limit=0, n=16, ks="1,16",
                      max_new_tokens=512, temperature=0.7)
  return c


def methods(spec: str) -> list[str]:
  """The methods of a comma-separated list, each checked."""
  out = [m.strip() for m in str(spec).split(",") if m.strip()]
  bad = [m for m in out if m not in distill_config.METHODS]
  if bad:
    raise ConfigError(f"Unknown distillation methods {bad}; use {distill_config.METHODS}.")
  return out


def calibration(c: PipelineConfig, lam: float, target: str) -> CalibConfig:
  """The calibration of one teacher: λ = lam·|λ| against `target`."""
  return dataclasses.replace(c.calibrate, teacher=c.teacher, target=target, lam=lam * c.lam,
                             dtype=c.dtype)


def distillation(c: PipelineConfig, method: str, teacher: str, student: str,
                 cache: str) -> DistillConfig:
  """The distillation of one student by `method` from `teacher`, sharing the samples `cache`."""
  return dataclasses.replace(c.distill, teacher=teacher, student=student, method=method,
                             dtype=c.dtype, student_keep="", samples_cache=cache)


def check(c: PipelineConfig) -> None:
  """Checks the pipeline's config and every run config it will make, before any model loads."""
  if not c.teacher or not c.student:
    raise ConfigError("config.teacher and config.student must both name a model.")
  if c.lam <= 0:
    raise ConfigError(f"config.lam is |λ| and must be > 0, got {c.lam}.")
  if not methods(c.baselines):
    raise ConfigError("config.baselines lists no method; name at least one of "
                      f"{distill_config.METHODS}.")
  methods(c.calibrated_methods)
  for lam in CALIBRATED.values():
    calib_config.check(calibration(c, lam, "student"))
  for method in distill_config.METHODS:
    distill_config.check(distillation(c, method, "teacher", "student", "cache"))
  e = c.evaluation
  if e.n < 1 or any(int(k) > e.n for k in str(e.ks).split(",")):
    raise ConfigError(f"config.evaluation: n = {e.n} must be >= 1 and >= every k in {e.ks}.")


def build(values) -> PipelineConfig:
  """The checked `PipelineConfig` of a config file's values."""
  return settings_lib.build(PipelineConfig, values, check)
