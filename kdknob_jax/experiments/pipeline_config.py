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
  """How every model of a table is evaluated (see `kdknob_jax.evals.evaluate`): the data
  split, then the sampling; `name` labels the table (default: the task)."""
  name: str = ""
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

  @property
  def label(self) -> str:
    return self.name or self.task


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The pipeline's settings.

  Attributes:
    teacher, student: the models; student_keep cuts the student from `student`
      (`kdknob_jax.models.derive.parse_keep`).
    target: the calibration target, a proxy of the student (paper §6.1: Qwen3-8B is calibrated
      against Qwen3-0.6B and its students are Qwen3-1.7B); empty calibrates against the
      student itself, an easier experiment than the paper's.
    dtype: of every model.
    lam: |λ| of the calibrated teachers.
    calibrate: the calibration every teacher run starts from (teacher, target, lam set per run).
    distill: the distillation every student run starts from (teacher, student, method set per
      run).
    baselines: students of the original teacher (comma-separated methods).
    calibrated_methods: improve / misled students of the calibrated teachers.
    evaluation: how each model is evaluated for the main table and its claims.
    extra_evaluations: more tasks, each evaluated on every model into a table of its own.
  """
  teacher: str = ""
  student: str = ""
  student_keep: str = ""
  target: str = ""
  dtype: str = "bfloat16"
  lam: float = 1.0
  calibrate: CalibConfig = CalibConfig()
  distill: DistillConfig = DistillConfig()
  baselines: str = "sft,gkd_fkl,gkd_rkl"
  calibrated_methods: str = "sft,gkd_fkl,gkd_rkl"
  evaluation: EvaluationSettings = EvaluationSettings()
  extra_evaluations: tuple[EvaluationSettings, ...] = ()

  @property
  def evaluations(self) -> tuple[EvaluationSettings, ...]:
    return (self.evaluation, *self.extra_evaluations)


def base_config():
  """A ConfigDict of every setting at its default: what `configs/*pipeline*.py` edit."""
  return settings_lib.to_configdict(PipelineConfig())


# The paper's evaluation suite beyond GSM8K (§6.1): local files under the data root
# (`kdknob_jax.data.records.data_root`), one JSON object a line in the fields of the named task;
# the README says how to export them from the Hugging Face datasets.
PAPER_EVALUATIONS = (("bigmath_l4", "bigmath", "bigmath/level4.jsonl"),
                     ("bigmath_l5", "bigmath", "bigmath/level5.jsonl"),
                     ("commonsenseqa", "commonsenseqa", "commonsenseqa/validation.jsonl"),
                     ("mmlu_pro", "mmlu_pro", "mmlu_pro/test.jsonl"),
                     ("supergpqa", "supergpqa", "supergpqa/train.jsonl"))


def paper_pipeline(teacher: str, target: str, student: str, arg: str | None = None):
  """The paper's pipeline (§6.1): `teacher` calibrated against the proxy `target` at λ = ±1
  with the recipe of `calibration.config.paper_config`, then the other, larger `student`
  distilled from each teacher by SFT, GKD-FKL and GKD-RKL (full fine-tuning, lr 2e-5, 4 samples
  per prompt), on GSM8K, bf16, evaluated with 16 samples per question on GSM8K and, with arg
  "full", the paper's suite (BigMath level 4/5, CommonsenseQA, MMLU-Pro, SuperGPQA). One 8×H100
  host (FSDP 8) by default; arg "v5p" (or "v5p,full") a TPU v5p slice (FSDP over 8 chips, data
  parallel across the rest).
  """
  args = set(filter(None, str(arg or "").split(",")))
  if not args <= {"v5p", "full"}:
    raise ValueError(f"Unknown argument {arg!r}; use ':v5p', ':full', ':v5p,full' or none.")
  v5p = "v5p" in args
  c = base_config()
  c.teacher, c.target, c.student, c.dtype, c.lam = teacher, target, student, "bfloat16", 1.0
  c.calibrate = calib_config.paper_config(teacher, target, 1.0, "v5p" if v5p else None)
  c.calibrate.target_chat = True
  mesh = dict(data=-1, fsdp=8, tensor=1) if v5p else dict(data=1, fsdp=8, tensor=1)
  d = c.distill
  d.update(prompts_per_step=16, samples_per_prompt=4, max_new_tokens=512, steps=500,
           eval_every=100, checkpoint_every=50, temperature=1.0)
  d.optimizer.update(lr=2e-5, warmup_steps=20)
  d.mesh = mesh
  sampling = dict(limit=0, n=16, ks="1,16", max_new_tokens=512, temperature=0.7)
  c.evaluation.update(task="gsm8k", source="gsm8k/test.jsonl", **sampling)
  if "full" in args:
    # unnamed settings take EvaluationSettings' defaults when the config is built
    c.extra_evaluations = [dict(name=name, task=task, source=source, **sampling)
                           for name, task, source in PAPER_EVALUATIONS]
  return c


def methods(spec: str) -> list[str]:
  """The methods of a comma-separated list, each checked."""
  out = [m.strip() for m in str(spec).split(",") if m.strip()]
  bad = [m for m in out if m not in distill_config.METHODS]
  if bad:
    raise ConfigError(f"Unknown distillation methods {bad}; use {distill_config.METHODS}.")
  return out


def calibration(c: PipelineConfig, lam: float, target: str) -> CalibConfig:
  """The calibration of one teacher: λ = lam·|λ| against `target` (`target_of`)."""
  return dataclasses.replace(c.calibrate, teacher=c.teacher, target=target, lam=lam * c.lam,
                             dtype=c.dtype)


def distillation(c: PipelineConfig, method: str, teacher: str, student: str,
                 cache: str) -> DistillConfig:
  """The distillation of one student by `method` from `teacher`, sharing the samples `cache`."""
  return dataclasses.replace(c.distill, teacher=teacher, student=student, method=method,
                             dtype=c.dtype, student_keep="", samples_cache=cache)


def target_of(c: PipelineConfig, student: str) -> str:
  """The calibration target's model spec: `config.target`, else the student's (`student`, which
  may be its cut checkpoint)."""
  return str(c.target).strip() or student


def token_level(c: PipelineConfig) -> list[str]:
  """The configured methods that compare teacher and student over one vocabulary."""
  every = methods(c.baselines) + methods(c.calibrated_methods)
  return sorted({m for m in every if m in distill_config.TOKEN_LEVEL})


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
  labels = [e.label for e in c.evaluations]
  if len(set(labels)) != len(labels):
    raise ConfigError(f"config.evaluation and config.extra_evaluations share a name in {labels}; "
                      "give each a distinct `name`.")
  for e in c.evaluations:
    if e.n < 1 or any(int(k) > e.n for k in str(e.ks).split(",")):
      raise ConfigError(f"config evaluation {e.label!r}: n = {e.n} must be >= 1 and >= every k "
                        f"in {e.ks}.")


def build(values) -> PipelineConfig:
  """The checked `PipelineConfig` of a config file's values."""
  return settings_lib.build(PipelineConfig, values, check)
