"""Distillation settings, typed: every setting with its default, the method presets, the
embedded-scale student, and the checks that run before any model loads.

Methods (the paper's students):
  sft      cross-entropy on teacher samples (sampled once per run, cached on disk);
  gkd_fkl  GKD off-policy: teacher samples, token-level forward KL(teacher‖student);
  gkd_rkl  GKD on-policy: student samples, token-level reverse KL(student‖teacher).
The GKD mixture knobs generalize both: `on_policy_share` (the share of steps whose completions
the student samples; TRL's λ) and `jsd_beta` (0 forward KL, 1 reverse KL, between them the
β-mixture JSD; TRL's β).
"""

from __future__ import annotations

import dataclasses

from kdknob_jax import settings as settings_lib
from kdknob_jax.errors import ConfigError
from kdknob_jax.runs.checkpoints import DISTILL_KIND
from kdknob_jax.settings import need
from kdknob_jax.train.settings import LoraSettings, OptimizerSettings, RunSettings, check_common

METHODS = ("sft", "gkd_fkl", "gkd_rkl")
TOKEN_LEVEL = ("gkd_fkl", "gkd_rkl")  # compare the two models over one vocabulary
# (on_policy_share, jsd_beta) of each method when the config leaves them at -1.
PRESETS = {"sft": (0.0, 0.0), "gkd_fkl": (0.0, 0.0), "gkd_rkl": (1.0, 1.0)}

IDENTITY_KEYS = ("teacher", "student", "student_keep", "dtype", "method", "on_policy_share",
                 "jsd_beta", "temperature", "top_k", "top_p", "samples_per_prompt",
                 "prompts_per_step", "max_new_tokens", "chat", "lora", "optimizer", "train", "seed",
                 "filter_correct")

EMBEDDED_TEACHER = "smollm2-135m-instruct"
# The embedded student: SmolLM2-135M-Instruct without its layers 15..20 (24 of 30 kept). It
# shares the teacher's tokenizer, so every token-level method applies. Dropping late layers
# (21+) or more of the middle gave no English at all, so this is the smallest cut we measured
# that still answers some questions (3 of 24 capitals greedy, vs 17 for the teacher).
EMBEDDED_STUDENT_KEEP = "0-14,21-29"


@dataclasses.dataclass(frozen=True)
class DistillConfig(RunSettings):
  """Every distillation setting.

  Attributes:
    teacher: a model name/dir/.gguf, or a calibration workdir; "reference" (with method
      "sft") learns the train data's own worked solutions (`distillation.reference`).
    student: a model name/dir/.gguf (its tokenizer must be the teacher's for GKD).
    student_keep: keep only these student layers ("0-14,21-29"); "": all.
    dtype: of both models' weights.
    method: one of `METHODS`.
    on_policy_share, jsd_beta: the GKD knobs; −1 takes the method's preset.
    temperature, top_k, top_p: every sample's (teacher and student); temperature also
      divides the GKD loss's logits.
    samples_per_prompt: completions per prompt (teacher samples cached; student on-policy).
    prompts_per_step, max_new_tokens, chat: the batch.
    lora: the student's adapters (rank 0: full fine-tuning); optimizer: their optimizer.
    samples_cache: the teacher samples (Parquet); "": <workdir>/teacher_samples.parquet.
    sample_batch: prompts per decoder call while caching teacher samples.
    filter_correct: SFT on only the teacher samples the train task's verifier marks correct
      (rejection sampling: the filtering attacker of an undistillable teacher); prompts
      without a correct sample are skipped.
    The data splits, the loop's cadences, chunk, mesh and rules are `RunSettings`'.
  """
  teacher: str = ""
  student: str = ""
  student_keep: str = ""
  dtype: str = "float32"
  method: str = "gkd_fkl"
  on_policy_share: float = -1.0
  jsd_beta: float = -1.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  samples_per_prompt: int = 1
  prompts_per_step: int = 8
  max_new_tokens: int = 256
  chat: bool = True
  lora: LoraSettings = LoraSettings(rank=0, alpha=0.0)
  optimizer: OptimizerSettings = OptimizerSettings(lr=1e-5)
  samples_cache: str = ""
  sample_batch: int = 64
  filter_correct: bool = False

  @property
  def knobs(self) -> tuple[float, float]:
    """(on_policy_share, jsd_beta) in effect: the config's, or the method's preset."""
    share, beta = PRESETS[self.method]
    return (share if self.on_policy_share < 0 else float(self.on_policy_share),
            beta if self.jsd_beta < 0 else float(self.jsd_beta))

  def identity(self) -> dict:
    """The settings a workdir is bound to (`IDENTITY_KEYS`, and the run's kind)."""
    d = settings_lib.as_dict(self)
    return dict({k: d[k] for k in IDENTITY_KEYS}, run_kind=DISTILL_KIND)


def base_config():
  """A ConfigDict of every setting at its default: what `configs/tiny_student.py` edits."""
  return settings_lib.to_configdict(DistillConfig())


def check(c: DistillConfig) -> None:
  """Raises ConfigError naming the bad value and the fix; runs before any model loads."""
  need(bool(c.teacher), "config.teacher is empty: name the teacher (a model, an export "
       "directory, or a calibration workdir).")
  need(bool(c.student), "config.student is empty: name the student model.")
  need(c.method in METHODS, f"config.method must be one of {METHODS}, got {c.method!r}.")
  share, beta = c.knobs
  need(0.0 <= share <= 1.0, f"config.on_policy_share must be in [0, 1] (or −1 for the "
       f"method's preset), got {c.on_policy_share}.")
  need(0.0 <= beta <= 1.0, f"config.jsd_beta must be in [0, 1] (or −1), got {c.jsd_beta}.")
  need(not (c.method == "sft" and share > 0), "config.method 'sft' learns from teacher samples "
       "only; on_policy_share must be 0 (use gkd_rkl or set a share with a gkd method).")
  if c.teacher == "reference":
    need(c.method == "sft" and c.samples_per_prompt == 1, "config.teacher 'reference' is the "
         "data's one worked solution per prompt: use method 'sft' with samples_per_prompt 1.")
  need(not c.filter_correct or (c.method == "sft" and c.samples_per_prompt == 1),
       "config.filter_correct keeps the correct teacher samples for SFT: use method 'sft' "
       "with samples_per_prompt 1.")
  need(c.temperature > 0, "config.temperature must be > 0.")
  need(c.samples_per_prompt >= 1, "config.samples_per_prompt must be >= 1.")
  need(c.sample_batch >= 1, "config.sample_batch must be >= 1.")
  check_common(c, full_finetune=True)


def build(values) -> DistillConfig:
  """The checked `DistillConfig` of a config file's values (a ConfigDict or nested dicts)."""
  return settings_lib.build(DistillConfig, values, check)


def embedded(c, arg: str | None):
  """A config file's `:arg` for the embedded scale: "laptop" (minutes) or "smoke" (tests)."""
  if arg not in ("laptop", "smoke"):
    if arg:
      raise ConfigError(f"Unknown config argument {arg!r}: use ':laptop' or ':smoke'.")
    return c
  c.teacher = c.teacher or EMBEDDED_TEACHER
  c.student, c.student_keep = EMBEDDED_TEACHER, EMBEDDED_STUDENT_KEEP
  c.dtype = "float32"
  c.train.update(task="capitals", source="builtin:capitals/train.jsonl", offset=0, limit=0)
  c.eval.update(task="capitals", source="builtin:capitals/test.jsonl", offset=0,
                limit=16 if arg == "laptop" else 2, max_new_tokens=0)
  c.max_new_tokens = 16 if arg == "laptop" else 6
  c.prompts_per_step = 8 if arg == "laptop" else 2
  c.samples_per_prompt = 2
  c.optimizer.update(lr=5e-5 if arg == "laptop" else 1e-3, warmup_steps=0)
  c.steps = 10 if arg == "laptop" else 2
  c.eval_every = 0
  c.checkpoint_every = 5 if arg == "laptop" else 1
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  return c
