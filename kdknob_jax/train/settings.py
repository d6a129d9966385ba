"""The settings every trainer shares, typed: data splits, the optimizer, LoRA, the run loop's
cadences, and the checks they all need (one place for their messages)."""

from __future__ import annotations

import dataclasses

from kdknob_jax.data import get_task, load_records
from kdknob_jax.errors import ConfigError
from kdknob_jax.models.config import REMAT_POLICIES, ExecConfig
from kdknob_jax.models.lora import INPUT_DIMS, LoraConfig, targets_from_names
from kdknob_jax.ops.attention import IMPLEMENTATIONS
from kdknob_jax.settings import need
from kdknob_jax.train.optimizer import SCHEDULES, make_optimizer

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """A split of a task's data: rows offset .. offset + limit of `source` (limit 0: all)."""
  task: str = "gsm8k"
  source: str = "gsm8k/train.jsonl"
  split: str = ""
  offset: int = 0
  limit: int = 0

  def load(self):
    """(task, records), checked against the task's fields.

    Raises:
      ConfigError, DataError: no rows, or rows the task cannot read (named by line).
    """
    records = load_records(self.source, self.split or None, self.limit or None, self.offset)
    task = get_task(self.task)
    task.check_records(records, self.offset)
    if not records:
      raise ConfigError(f"{self.source} (offset {self.offset}) has no rows; fix the config's "
                        "data.")
    return task, records


@dataclasses.dataclass(frozen=True)
class EvalDataSettings(DataSettings):
  """The held-out split; `max_new_tokens` 0 uses the run's."""
  source: str = "gsm8k/test.jsonl"
  limit: int = 64
  max_new_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """AdamW after global-norm clipping, warmed up linearly, then at the rate `schedule` names:
  "constant" (the default), "linear" (decay to 0 at the last step: Hugging Face's and TRL's
  default) or "cosine" (see `kdknob_jax.train.optimizer`)."""
  lr: float = 2e-5
  warmup_steps: int = 10
  clip: float = 1.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  schedule: str = "constant"

  def make(self, total_steps: int = 0):
    """The optax optimizer of a run of `total_steps` updates."""
    return make_optimizer(self.lr, self.warmup_steps, self.clip, self.weight_decay, self.b1,
                          self.b2, self.schedule, total_steps)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
  """Adapters as a config file spells them; rank 0 means none (full fine-tuning) where a
  trainer allows it; alpha 0 means alpha = rank."""
  rank: int = 128
  alpha: float = 128.0
  targets: str = "all"

  def config(self) -> LoraConfig | None:
    if not self.rank:
      return None
    return LoraConfig(int(self.rank), float(self.alpha or self.rank),
                      targets_from_names(self.targets))


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the run loop reads: how long, and how often it evaluates, logs and checkpoints.

  Attributes:
    steps: the run ends after this step.
    eval_every: evaluate every this many steps (0: only at the end).
    checkpoint_every: checkpoint every this many steps and at the end.
    keep_checkpoints: the newest checkpoints kept.
    log_every: write metrics every this many steps and at the end.
    seed: the root of every key and of the data order.
    rows_per_step: train rows a step reads (recorded as the checkpoint's data position).
    on_nonfinite: "stop" (raise `NonFiniteError`, saving nothing of the step) or "skip" (the
      step's update is dropped, counted in the `train/skipped` metric, and the run goes on).
  """
  steps: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  log_every: int
  seed: int
  rows_per_step: int
  on_nonfinite: str = "stop"


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """The settings every trainer's config has (a base of `CalibConfig` and `DistillConfig`).

  Attributes:
    train, eval: the data splits.
    steps, eval_every, checkpoint_every, keep_checkpoints, log_every, seed: the run loop (see
      `LoopSettings`).
    chunk: LM-head rows per chunk in the step (0: automatic).
    remat: what the train step's layers keep for the backward pass ("nothing", "dots" or
      "none"; see `ExecConfig`). "nothing" is what lets the paper configs fit.
    attention: the attention form ("auto": cuDNN flash attention on GPU, chunked elsewhere).
    query_chunk: queries per chunk of the chunked attention.
    mesh: mesh axis sizes; rules: logical-axis rules overriding the defaults.
    on_nonfinite: what a NaN/Inf loss, gradient norm or reward does (see `LoopSettings`).
  """
  train: DataSettings = DataSettings()
  eval: EvalDataSettings = EvalDataSettings()
  steps: int = 200
  eval_every: int = 50
  checkpoint_every: int = 25
  keep_checkpoints: int = 3
  log_every: int = 1
  seed: int = 0
  chunk: int = 0
  remat: str = "nothing"
  attention: str = "auto"
  query_chunk: int = 128
  mesh: dict = dataclasses.field(default_factory=lambda: dict(data=1, fsdp=-1, tensor=1))
  rules: tuple = ()
  on_nonfinite: str = "stop"

  def execution(self) -> ExecConfig:
    """How the train step runs the decoder (memory and speed; not part of a run's identity)."""
    return ExecConfig(self.remat, self.attention, self.query_chunk)

  def loop(self) -> LoopSettings:
    """What the run loop reads of this config (a subclass defines `prompts_per_step`)."""
    return LoopSettings(self.steps, self.eval_every, self.checkpoint_every,
                        self.keep_checkpoints, self.log_every, self.seed,
                        self.prompts_per_step,  # pytype: disable=attribute-error
                        self.on_nonfinite)


def check_common(c, full_finetune: bool = False) -> None:
  """The checks every trainer config needs; raises ConfigError naming the value and the fix.

  Args:
    c: a trainer's typed config.
    full_finetune: lora.rank 0 (train every weight) is allowed.
  """
  need(c.dtype in DTYPES, f"config.dtype must be float32 or bfloat16, got {c.dtype!r}.")
  need(c.prompts_per_step >= 1, "config.prompts_per_step must be >= 1.")
  need(c.max_new_tokens >= 1, "config.max_new_tokens must be >= 1.")
  need(c.steps >= 1, "config.steps must be >= 1.")
  need(c.checkpoint_every >= 1, "config.checkpoint_every must be >= 1.")
  need(c.remat in REMAT_POLICIES, f"config.remat must be one of {REMAT_POLICIES}, got "
       f"{c.remat!r}.")
  need(c.attention in IMPLEMENTATIONS, f"config.attention must be one of {IMPLEMENTATIONS}, "
       f"got {c.attention!r}.")
  need(c.query_chunk >= 1, f"config.query_chunk must be >= 1, got {c.query_chunk}.")
  need(c.on_nonfinite in ("stop", "skip"), f"config.on_nonfinite must be 'stop' or 'skip', got "
       f"{c.on_nonfinite!r}.")
  if c.lora.rank:
    targets = targets_from_names(c.lora.targets)
    unknown = sorted(set(targets) - set(INPUT_DIMS))
    need(not unknown and bool(targets), f"config.lora.targets {unknown or '(none)'} are not "
         f"projections; use 'all', 'attention', 'mlp' or names from {sorted(INPUT_DIMS)}.")
  if full_finetune:
    need(c.lora.rank >= 0, "config.lora.rank must be >= 0 (0: full fine-tuning).")
  else:
    need(c.lora.rank >= 1, "config.lora.rank must be >= 1.")
  need(c.optimizer.lr > 0, "config.optimizer.lr must be > 0.")
  need(c.optimizer.schedule in SCHEDULES, f"config.optimizer.schedule must be one of "
       f"{SCHEDULES}, got {c.optimizer.schedule!r}.")
  need(c.optimizer.schedule == "constant" or c.steps > c.optimizer.warmup_steps,
       f"config.optimizer.schedule {c.optimizer.schedule!r} decays to 0 at the last step, so "
       f"config.steps ({c.steps}) must exceed config.optimizer.warmup_steps "
       f"({c.optimizer.warmup_steps}).")
  for name in ("train", "eval"):
    d = getattr(c, name)
    need(bool(d.task) and bool(d.source), f"config.{name} needs task and source.")


def check_positions(cfg, prompt_tokens: int, max_new_tokens: int, who: str) -> None:
  """Raises ConfigError when the longest train prompt plus `max_new_tokens` exceeds the
  model's positions (found at set-up, before the first step samples)."""
  need(prompt_tokens + max_new_tokens <= cfg.max_position_embeddings,
       f"The longest train prompt has {prompt_tokens} tokens under the {who}'s tokenizer; with "
       f"config.max_new_tokens = {max_new_tokens} that exceeds the {who}'s "
       f"{cfg.max_position_embeddings} positions. Lower max_new_tokens, or drop the longest "
       "prompts from the train data.")
