"""Calibration settings, typed: every setting with its default (the paper's where it gives
one), the paper's recipe, the laptop shrink, and the checks that run before any model loads.

The objective (paper Eqs. 6–11): per prompt, G rollouts of the teacher; rewards r_task (the
task's verifier) and r_cal = log π_target(y|x) − log π_teacher(y|x); each normalized within its
group, A = w_task·norm(r_task) + λ·norm(r_cal); a clipped surrogate plus β × the k3 KL to the
base teacher. λ > 0 makes the teacher easier to distil into the target ("distill"), λ < 0
harder ("undistill").

`configs/*distill.py` start from `base_config()` (a ConfigDict made from `CalibConfig`'s
defaults); the command line turns the edited ConfigDict into a `CalibConfig` with `build`.
"""

from __future__ import annotations

import dataclasses

from kdknob_jax import settings as settings_lib
from kdknob_jax.calibration.objective import AGGREGATIONS
from kdknob_jax.errors import ConfigError
from kdknob_jax.settings import need
from kdknob_jax.train.settings import LoraSettings, OptimizerSettings, RunSettings, check_common

# Settings that define a run: changing one of them and resuming into the same workdir is an
# error, since the checkpoint would not mean what the config says.
IDENTITY_KEYS = ("teacher", "target", "dtype", "lam", "task_weight", "beta", "epsilon",
                 "epsilon_high", "aggregation", "renormalize", "group_size", "prompts_per_step",
                 "inner_updates", "max_new_tokens", "temperature", "top_k", "top_p",
                 "stop_at_eos", "lora", "optimizer", "train", "seed", "chat", "target_chat",
                 "loss_temperature")
LOSS_TEMPERATURES = ("model", "sampling")

EMBEDDED_TEACHER = "smollm2-135m-instruct"
EMBEDDED_TARGET = "gemma3-270m"


@dataclasses.dataclass(frozen=True)
class CalibConfig(RunSettings):
  """Every calibration setting.

  Attributes:
    teacher: the model being calibrated (LoRA on it).
    target: the calibration target (e.g. the student to be); any tokenizer.
    dtype: of both models' weights; adapters are float32.
    lam: λ, > 0 distillable, < 0 undistillable.
    task_weight: weight of the normalized task reward.
    beta: KL anchor to the base teacher (k3, per token).
    epsilon, epsilon_high: the ratio's clip range.
    aggregation: "sequence_mean" or "token_mean".
    renormalize: standardize the summed advantage over the batch (TRL-style).
    group_size: G rollouts per prompt (the paper: 4).
    prompts_per_step: prompts per step.
    inner_updates: μ updates on each rollout batch (stored old log-probs when > 1).
    max_new_tokens, temperature, top_k, top_p: the rollouts' sampling.
    loss_temperature: "model" (default): the surrogate's ratio and the KL anchor use the
      model's own log-probs (logits at T = 1); "sampling": those of logits / temperature, TRL's
      convention. The same at temperature 1; r_cal always compares the models themselves.
    stop_at_eos: False makes every rollout max_new_tokens long (benchmarks).
    chat: teacher prompts through its chat template (if it has one).
    target_chat: the same for the target, with its own template.
    lora, optimizer: the adapters and their optimizer.
    rows_per_call: target scoring, completions per forward pass.
    prompt_slots: pad prompts to at least this many tokens (0: the longest train prompt);
      `python -m kdknob_jax.plan` plans for it (256 when 0).
    peak_flops: per device, for MFU; 0 looks the device up.
    The data splits, the loop's cadences, chunk, mesh and rules are `RunSettings`'.
  """
  teacher: str = ""
  target: str = ""
  dtype: str = "bfloat16"
  lam: float = 1.0
  task_weight: float = 1.0
  beta: float = 0.04
  epsilon: float = 0.2
  epsilon_high: float = 0.2
  aggregation: str = "sequence_mean"
  renormalize: bool = False
  group_size: int = 4
  prompts_per_step: int = 16
  inner_updates: int = 1
  max_new_tokens: int = 512
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  loss_temperature: str = "model"
  stop_at_eos: bool = True
  chat: bool = True
  target_chat: bool = True
  lora: LoraSettings = LoraSettings()
  optimizer: OptimizerSettings = OptimizerSettings()
  rows_per_call: int = 16
  prompt_slots: int = 0
  peak_flops: float = 0.0

  @property
  def on_policy(self) -> bool:
    """One update per rollout batch (μ = 1): the sampling policy is the one being trained."""
    return self.inner_updates == 1

  def identity(self) -> dict:
    """The settings a workdir is bound to (`IDENTITY_KEYS`)."""
    d = settings_lib.as_dict(self)
    return {k: d[k] for k in IDENTITY_KEYS}


def base_config():
  """A ConfigDict of every setting at its default: what `configs/*distill.py` edit."""
  return settings_lib.to_configdict(CalibConfig())


def paper_config(teacher: str, target: str, lam: float, arg: str | None = None):
  """The paper's recipe (LoRA r = α = 128, lr 2e-5, 4 rollouts per prompt) on GSM8K, bf16.

  `arg`: None is one host of 8×H100 (FSDP over its 8 GPUs); "v5p" is a TPU v5p pod slice
  (FSDP over 8 chips, data parallel across the rest, so any slice of a multiple of 8 chips);
  "1gpu" is one GPU (one H200 holds the whole recipe: `python -m kdknob_jax.plan --devices 1`);
  "laptop" and "smoke" shrink the run onto the embedded models (see `shrink`).
  """
  c = base_config()
  c.teacher, c.target, c.lam = teacher, target, lam
  c.prompt_slots = 256
  if arg == "v5p":
    c.mesh = dict(data=-1, fsdp=8, tensor=1)
    return c
  if arg == "1gpu":
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return c
  c.mesh = dict(data=1, fsdp=8, tensor=1)
  return shrink(c, arg)


def shrink(c, arg: str | None):
  """A config file's `:arg`. "laptop" swaps in the embedded pair (SmolLM2-135M teacher,
  Gemma-3-270M target: two tokenizers) and minutes-sized settings, keeping λ and the objective;
  "smoke" is smaller still (for tests); None keeps the config."""
  if arg in ("laptop", "smoke"):
    c.teacher, c.target = EMBEDDED_TEACHER, EMBEDDED_TARGET
    c.dtype = "float32"
    c.prompt_slots = 0
    c.remat = "none"  # the embedded models' activations are small: no recomputation
    c.target_chat = False  # Gemma-3-270M is a base model without a chat template
    c.train.update(task="commonsenseqa", source="commonsenseqa/sample200.jsonl", offset=40,
                   limit=0)
    c.eval.update(task="commonsenseqa", source="commonsenseqa/sample200.jsonl", offset=0,
                  limit=8 if arg == "laptop" else 2, max_new_tokens=0)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.lora.update(rank=16 if arg == "laptop" else 4, alpha=16.0 if arg == "laptop" else 4.0)
    c.optimizer.update(lr=2e-4 if arg == "laptop" else 1e-3, warmup_steps=0)
    c.group_size = 4 if arg == "laptop" else 2
    c.prompts_per_step = 2
    c.max_new_tokens = 40 if arg == "laptop" else 8
    c.steps = 10 if arg == "laptop" else 2
    c.eval_every = 5 if arg == "laptop" else 0
    c.checkpoint_every = 5 if arg == "laptop" else 1
  elif arg:
    raise ConfigError(f"Unknown config argument {arg!r}: use ':laptop' or ':smoke' (paper "
                      "configs also take ':v5p' and ':1gpu').")
  return c


def check(c: CalibConfig) -> None:
  """Raises ConfigError naming the bad value and the fix; runs before any model loads."""
  need(bool(c.teacher), "config.teacher is empty: name the model to calibrate (an embedded "
       "name, a checkpoint directory, a .gguf file or a cached hub id).")
  need(bool(c.target), "config.target is empty: name the calibration target model.")
  need(c.group_size >= 2, f"config.group_size must be >= 2 (got {c.group_size}): rewards are "
       "normalized within each prompt's group of rollouts.")
  need(c.inner_updates >= 1, "config.inner_updates (μ) must be >= 1.")
  need(c.aggregation in AGGREGATIONS, f"config.aggregation must be one of {AGGREGATIONS}, got "
       f"{c.aggregation!r}.")
  need(c.beta >= 0, f"config.beta must be >= 0, got {c.beta}.")
  need(0 < c.epsilon < 1 and c.epsilon_high > 0, "config.epsilon must be in (0, 1) and "
       "config.epsilon_high > 0.")
  need(c.prompt_slots >= 0, f"config.prompt_slots must be >= 0, got {c.prompt_slots}.")
  need(c.loss_temperature in LOSS_TEMPERATURES, f"config.loss_temperature must be one of "
       f"{LOSS_TEMPERATURES}, got {c.loss_temperature!r}.")
  need(c.temperature > 0, "config.temperature must be > 0: the policy gradient needs the "
       "sampling distribution (greedy rollouts have no ratio).")
  check_common(c)


def build(values) -> CalibConfig:
  """The checked `CalibConfig` of a config file's values (a ConfigDict or nested dicts)."""
  return settings_lib.build(CalibConfig, values, check)
