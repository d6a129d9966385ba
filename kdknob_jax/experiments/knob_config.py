"""The knob study's settings, typed: the testbed's models (a teacher tuned on the task, a student
and a calibration proxy cut from it, a cross-tokenizer target), the calibrations (λ values ×
seeds), the students, the evaluation and the trap measurements; with the checks of every run
config the study will make, before any model loads. Used by `configs/knob_*.py`.
"""

from __future__ import annotations

import dataclasses

from kdknob_jax import settings as settings_lib
from kdknob_jax.calibration import config as calib_config
from kdknob_jax.calibration.config import CalibConfig
from kdknob_jax.distillation import config as distill_config
from kdknob_jax.distillation.config import DistillConfig
from kdknob_jax.errors import ConfigError
from kdknob_jax.experiments.pipeline_config import EvaluationSettings, methods


@dataclasses.dataclass(frozen=True)
class KnobConfig:
  """The knob study's settings.

  Attributes:
    base: the model the teacher is tuned from.
    teacher_sft: the teacher's stage 0, SFT of `base` on the train split's worked solutions
      (teacher "reference"); its result is the "original" teacher.
    student: the evaluated student: "base" (the model the teacher was tuned from), "teacher"
      (the tuned teacher) or any model spec; it must share the teacher's tokenizer (GKD and
      the token-level traps of Table 4 compare the two over one vocabulary).
    student_keep: cut the student to these layers ("": all).
    target, target_keep: the calibration target, a proxy of the student, named the same way
      (the paper's is a smaller model of the student's family).
    cross_target: a model with another tokenizer, the target of one extra calibration ("": none).
    cross_lam: that calibration's λ.
    cross_target_chat: whether the cross target scores the teacher's text under its chat
      template; False for a base model without one (Gemma-3-270M, the embedded cross target).
    lams: the λ values calibrated (0 is the control: the same RL with r_cal off).
    seeds: the calibrations' seeds, in the order they run (each seed's stages finish before
      the next seed's start).
    calibrate: every calibration starts from this (teacher, target, lam and seed set per run).
    distill: every student starts from this (teacher, student and method set per run).
    student_methods: how students of the original and the λ = 0 and calibrated teachers are
      trained; the GKD methods only for the teachers of `gkd_seeds`.
    gkd_seeds: calibration seeds whose teachers also get GKD students (run right after that
      seed's calibrations, before the next seed's).
    gkd_lams: of those, the λ values whose teachers get GKD students ("": every λ).
    attacker: an SFT student of each undistillable (λ < 0) teacher that keeps only its
      verified-correct samples.
    evaluation: every model's held-out evaluation (Table 2).
    trap_questions, trap_rollouts: the student's samples that each teacher scores (Table 4).
    bootstrap: resamples of the confidence intervals.
    demo: only the teacher stage and the calibrations at the first seed's non-zero λ, with the
      two teachers' evaluations and a before/after summary (`make demo`); no control, students
      or traps.
  """
  base: str = distill_config.EMBEDDED_TEACHER
  teacher_sft: DistillConfig = DistillConfig()
  student: str = "base"
  student_keep: str = ""
  target: str = "base"
  target_keep: str = "0-14,21-29"
  cross_target: str = ""
  cross_lam: float = -1.0
  cross_target_chat: bool = False
  lams: str = "-1,0,1"
  seeds: str = "0,1"
  calibrate: CalibConfig = CalibConfig()
  distill: DistillConfig = DistillConfig()
  student_methods: str = "sft,gkd_fkl,gkd_rkl"
  gkd_seeds: str = "0"
  gkd_lams: str = ""
  attacker: bool = True
  evaluation: EvaluationSettings = EvaluationSettings()
  trap_questions: int = 32
  trap_rollouts: int = 4
  bootstrap: int = 2000
  demo: bool = False

  @property
  def lam_values(self) -> tuple[float, ...]:
    return tuple(float(x) for x in str(self.lams).split(",") if x.strip())

  @property
  def seed_values(self) -> tuple[int, ...]:
    return tuple(int(x) for x in str(self.seeds).split(",") if x.strip())

  @property
  def gkd_seed_values(self) -> tuple[int, ...]:
    return tuple(int(x) for x in str(self.gkd_seeds).split(",") if x.strip())

  @property
  def gkd_lam_values(self) -> tuple[float, ...]:
    given = tuple(float(x) for x in str(self.gkd_lams).split(",") if x.strip())
    return given or self.lam_values


def base_config():
  """A ConfigDict of every setting at its default: what `configs/knob_*.py` edit."""
  return settings_lib.to_configdict(KnobConfig())


def model_spec(name: str, base: str, teacher: str) -> str:
  """A student or target name of the config as a model spec ("base", "teacher" or a spec)."""
  return {"base": base, "teacher": teacher}.get(str(name), str(name))


def lam_name(lam: float) -> str:
  """A λ as it appears in run names: "lam+1", "lam0", "lam-0.5"."""
  return "lam0" if lam == 0 else f"lam{lam:+g}"


def teacher_stage(c: KnobConfig) -> DistillConfig:
  """Stage 0: the base model fine-tuned on the train split's worked solutions."""
  return dataclasses.replace(c.teacher_sft, teacher="reference", student=c.base,
                             student_keep="", method="sft", samples_per_prompt=1)


def calibration(c: KnobConfig, teacher: str, target: str, lam: float, seed: int,
                cross: bool = False) -> CalibConfig:
  """One calibration of the tuned teacher against `target` (the cross-tokenizer one when
  `cross`: its target's prompt format is `cross_target_chat`)."""
  extra = {"target_chat": c.cross_target_chat} if cross else {}
  return dataclasses.replace(c.calibrate, teacher=teacher, target=target, lam=lam, seed=seed,
                             **extra)


def student_run(c: KnobConfig, teacher: str, student: str, method: str, cache: str,
                filtered: bool = False) -> DistillConfig:
  """One student of `teacher` by `method` (SFT students of a teacher share `cache`)."""
  return dataclasses.replace(c.distill, teacher=teacher, student=student, student_keep="",
                             method=method, samples_cache=cache, filter_correct=filtered)


def check(c: KnobConfig) -> None:
  """Checks the study's config and every run config it will make, before any model loads."""
  if not c.lam_values or (0.0 not in c.lam_values and not c.demo):
    raise ConfigError(f"config.lams = {c.lams!r} must list λ values including the control 0.")
  if (c.student, c.student_keep) == (c.target, c.target_keep) and not c.demo:
    raise ConfigError("config.target (with target_keep) is the evaluated student; the study "
                      "calibrates against a proxy: give the target other layers or a model.")
  if not c.seed_values:
    raise ConfigError("config.seeds lists no seed; give at least one (e.g. '0,1').")
  if not set(c.gkd_seed_values) <= set(c.seed_values):
    raise ConfigError(f"config.gkd_seeds {c.gkd_seeds!r} must be among config.seeds "
                      f"{c.seeds!r}.")
  every = methods(c.student_methods)
  if (c.gkd_seed_values and set(every) - {"sft"}
      and not set(c.gkd_lam_values) <= set(c.lam_values)):
    raise ConfigError(f"config.gkd_lams {c.gkd_lams!r} must be among config.lams {c.lams!r}.")
  if "sft" not in every:
    raise ConfigError("config.student_methods must include 'sft' (the attacker and the "
                      "cross-tokenizer comparison use it).")
  for lam in (*c.lam_values, c.cross_lam):
    calib_config.check(calibration(c, "teacher", "target", lam, 0))
  distill_config.check(teacher_stage(c))
  for m in every:
    distill_config.check(student_run(c, "teacher", "student", m, "cache"))
  distill_config.check(student_run(c, "teacher", "student", "sft", "cache", filtered=True))
  e = c.evaluation
  if e.n < 1 or any(int(k) > e.n for k in str(e.ks).split(",")):
    raise ConfigError(f"config.evaluation: n = {e.n} must be >= 1 and >= every k in {e.ks}.")
  if c.trap_questions < 1 or c.trap_rollouts < 2:
    raise ConfigError("config.trap_questions must be >= 1 and config.trap_rollouts >= 2 (the "
                      "wrong-trace preference compares traces of one question).")
  if c.bootstrap < 100:
    raise ConfigError(f"config.bootstrap = {c.bootstrap}: use at least 100 resamples.")


def build(values) -> KnobConfig:
  """The checked `KnobConfig` of a config file's values."""
  return settings_lib.build(KnobConfig, values, check)
