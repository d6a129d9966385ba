"""The pilot's settings, typed: the pair of models, the datasets, the paper's sampling (16
rollouts, T = 1.0, no top-k / top-p), and the checks that run before any model loads. Configs
in `configs/pilot_*.py` start from `base_config()` and set the pair and the datasets."""

from __future__ import annotations

import dataclasses

from kdknob_jax import settings as settings_lib
from kdknob_jax.decode import SamplingConfig
from kdknob_jax.errors import ConfigError
from kdknob_jax.settings import need


@dataclasses.dataclass(frozen=True)
class PilotDataset:
  """One dataset of the pilot: rows offset .. offset + limit of `source` (limit 0: all);
  max_new_tokens 0 uses the pilot's."""
  name: str = ""
  task: str = ""
  source: str = ""
  split: str = ""
  offset: int = 0
  limit: int = 0
  max_new_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class PilotConfig:
  """The pilot's settings.

  Attributes:
    teacher, student: the pair (one tokenizer); student_layers > 0 derives the student from
      the first layers of `student`.
    dtype: of both models.
    datasets: what is sampled and scored.
    rollouts, temperature, top_k, top_p, max_new_tokens, seed, chat: the sampling.
    top_ks: the top-k levels of Figure 2 (the full vocabulary is always added).
    prompts_per_call, score_rows: decoder and scoring batch sizes.
    mesh: e.g. {"fsdp": -1} or {"data": 2, "tensor": 4}; empty: one device.
  """
  teacher: str = ""
  student: str = ""
  student_layers: int = 0
  dtype: str = "float32"
  datasets: tuple[PilotDataset, ...] = ()
  rollouts: int = 16
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 512
  top_ks: tuple = (1, 10, 100, 1000)
  seed: int = 0
  chat: bool = True
  prompts_per_call: int = 4
  score_rows: int = 32
  mesh: dict = dataclasses.field(default_factory=dict)


def base_config():
  """A ConfigDict of every setting at its default."""
  return settings_lib.to_configdict(PilotConfig())


def paper_config(student: str, teacher: str, arg: str | None = None):
  """A pilot of one of the paper's pairs on GSM8K and CommonsenseQA, bfloat16, FSDP over every
  device (8×H100 or a TPU slice); `arg="smoke"` shrinks it to 2 prompts × 2 rollouts."""
  c = base_config()
  c.student, c.teacher = student, teacher
  c.dtype = "bfloat16"
  c.datasets = [
      dict(name="gsm8k", task="gsm8k", source="gsm8k/test.jsonl", offset=0, limit=256,
           max_new_tokens=1024),
      dict(name="commonsenseqa", task="commonsenseqa", source="commonsenseqa/sample200.jsonl",
           offset=0, limit=200, max_new_tokens=512),
  ]
  c.prompts_per_call = 16
  c.score_rows = 64
  c.mesh = {"fsdp": -1}
  return apply_arg(c, arg, smoke_tokens=16)


def apply_arg(c, arg: str | None, smoke_tokens: int):
  """A config file's `:arg`: "smoke" shrinks every dataset to 2 prompts × 2 rollouts of
  `smoke_tokens` tokens; None keeps the config; anything else is an error."""
  if arg == "smoke":
    for d in c.datasets:
      d.update(limit=2, max_new_tokens=smoke_tokens)
    c.rollouts = 2
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'smoke'.")
  return c


def sampling_of(c: PilotConfig) -> SamplingConfig:
  """The pilot's sampling settings.

  Raises:
    ConfigError: a temperature, top-k or top-p the sampler refuses.
  """
  try:
    return SamplingConfig(c.temperature, top_k=c.top_k, top_p=c.top_p)
  except ValueError as e:
    raise ConfigError(f"config.temperature / top_k / top_p: {e}") from e


def check(c: PilotConfig) -> None:
  """Raises ConfigError naming the bad value and the fix; runs before any model loads."""
  need(c.rollouts >= 2, f"config.rollouts must be at least 2 (got {c.rollouts}): the "
       "wrong-trace preference compares samples of one prompt.")
  need(bool(c.datasets), "config.datasets is empty; add at least one dataset entry.")
  for i, d in enumerate(c.datasets):
    missing = [k for k in ("name", "task", "source") if not getattr(d, k)]
    need(not missing, f"config.datasets[{i}] lacks {missing}; each entry needs name, task and "
         "source (plus optional split, offset, limit, max_new_tokens).")
  sampling_of(c)


def build(values) -> PilotConfig:
  """The checked `PilotConfig` of a config file's values."""
  return settings_lib.build(PilotConfig, values, check)
