"""Calibration configs: the defaults every `configs/*distill.py` starts from, the paper's
settings, the laptop shrink, and the checks that run before any model loads.

The objective (paper Eqs. 6–11): per prompt, G rollouts of the teacher; rewards r_task (the
task's verifier) and r_cal = log π_target(y|x) − log π_teacher(y|x); each normalized within its
group, A = w_task·norm(r_task) + λ·norm(r_cal); a clipped surrogate plus β × the k3 KL to the
base teacher. λ > 0 makes the teacher easier to distil into the target ("distill"), λ < 0
harder ("undistill").
"""

from __future__ import annotations

from kdknob_jax.errors import ConfigError
from kdknob_jax.rl.lora import INPUT_DIMS, targets_from_names
from kdknob_jax.rl.objective import AGGREGATIONS

# Settings that define a run: changing one of them and resuming into the same workdir is an
# error, since the checkpoint would not mean what the config says.
IDENTITY_KEYS = ("teacher", "target", "dtype", "lam", "task_weight", "beta", "epsilon",
                 "epsilon_high", "aggregation", "renormalize", "group_size", "prompts_per_step",
                 "inner_updates", "max_new_tokens", "temperature", "top_k", "top_p", "stop_at_eos", "lora",
                 "optimizer", "train", "seed", "chat", "target_chat")

EMBEDDED_TEACHER = "smollm2-135m-instruct"
EMBEDDED_TARGET = "gemma3-270m"


def base_config():
  """Every calibration setting with its default (the paper's where it gives one)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.teacher = ""           # the model being calibrated (LoRA on it)
  c.target = ""            # the calibration target (e.g. the student to be); any tokenizer
  c.dtype = "bfloat16"     # of both models' weights; adapters are float32
  c.lam = 1.0              # λ: > 0 distillable, < 0 undistillable
  c.task_weight = 1.0      # weight of the normalized task reward
  c.beta = 0.04            # KL anchor to the base teacher (k3, per token)
  c.epsilon = 0.2
  c.epsilon_high = 0.2
  c.aggregation = "sequence_mean"
  c.renormalize = False    # standardize the summed advantage over the batch (TRL-style)
  c.group_size = 4         # G rollouts per prompt (the paper: 4)
  c.prompts_per_step = 16
  c.inner_updates = 1      # μ updates on each rollout batch (stored old log-probs)
  c.max_new_tokens = 512
  c.temperature = 1.0
  c.top_k = 0
  c.top_p = 1.0
  c.stop_at_eos = True     # False: every rollout is max_new_tokens long (benchmarks)
  c.chat = True            # teacher prompts through its chat template (if it has one)
  c.target_chat = True     # the same for the target, with its own template
  c.lora = ml_collections.ConfigDict(dict(rank=128, alpha=128.0, targets="all"))
  c.optimizer = ml_collections.ConfigDict(dict(lr=2e-5, warmup_steps=10, clip=1.0,
                                               weight_decay=0.0, b1=0.9, b2=0.999))
  c.train = ml_collections.ConfigDict(dict(task="gsm8k", source="gsm8k/train.jsonl",
                                           split="", offset=0, limit=0))
  c.eval = ml_collections.ConfigDict(dict(task="gsm8k", source="gsm8k/test.jsonl", split="",
                                          offset=0, limit=64, max_new_tokens=0))
  c.steps = 200
  c.eval_every = 50        # held-out accuracy and trap metrics; 0: only at the end
  c.checkpoint_every = 25
  c.keep_checkpoints = 3
  c.log_every = 1
  c.seed = 0
  c.rows_per_call = 16     # target scoring: completions per forward pass
  c.chunk = 0              # LM-head rows per chunk in the step (0: automatic)
  c.peak_flops = 0.0       # per device, for MFU; 0 looks the device up
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.rules = ()             # logical-axis rules overriding the defaults: (("batch", "data"),)
  return c


def paper_config(teacher: str, target: str, lam: float, arg: str | None = None):
  """The paper's recipe (LoRA r = α = 128, lr 2e-5, 4 rollouts per prompt) on GSM8K, bf16.

  `arg`: None is one host of 8×H100 (FSDP over its 8 GPUs); "v5p" is a TPU v5p pod slice
  (FSDP over 8 chips, data parallel across the rest, so any slice of a multiple of 8 chips);
  "laptop" and "smoke" shrink the run onto the embedded models (see `shrink`).
  """
  c = base_config()
  c.teacher, c.target, c.lam = teacher, target, lam
  if arg == "v5p":
    c.mesh = dict(data=-1, fsdp=8, tensor=1)
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
                      "configs also take ':v5p').")
  return c


def check(c) -> None:
  """Raises ConfigError naming the bad value and the fix; runs before any model loads."""
  def need(ok: bool, message: str) -> None:
    if not ok:
      raise ConfigError(message)

  need(bool(c.teacher), "config.teacher is empty: name the model to calibrate (an embedded "
       "name, a checkpoint directory, a .gguf file or a cached hub id).")
  need(bool(c.target), "config.target is empty: name the calibration target model.")
  need(c.dtype in ("float32", "bfloat16"), f"config.dtype must be float32 or bfloat16, got "
       f"{c.dtype!r}.")
  need(c.group_size >= 2, f"config.group_size must be >= 2 (got {c.group_size}): rewards are "
       "normalized within each prompt's group of rollouts.")
  need(c.prompts_per_step >= 1, "config.prompts_per_step must be >= 1.")
  need(c.inner_updates >= 1, "config.inner_updates (μ) must be >= 1.")
  need(c.max_new_tokens >= 1, "config.max_new_tokens must be >= 1.")
  need(c.steps >= 1, "config.steps must be >= 1.")
  need(c.checkpoint_every >= 1, "config.checkpoint_every must be >= 1.")
  need(c.aggregation in AGGREGATIONS, f"config.aggregation must be one of {AGGREGATIONS}, got "
       f"{c.aggregation!r}.")
  need(c.beta >= 0, f"config.beta must be >= 0, got {c.beta}.")
  need(0 < c.epsilon < 1 and c.epsilon_high > 0, "config.epsilon must be in (0, 1) and "
       "config.epsilon_high > 0.")
  need(c.temperature > 0, "config.temperature must be > 0: the policy gradient needs the "
       "sampling distribution (greedy rollouts have no ratio).")
  targets = targets_from_names(c.lora.targets)
  unknown = sorted(set(targets) - set(INPUT_DIMS))
  need(not unknown and bool(targets), f"config.lora.targets {unknown or '(none)'} are not "
       f"projections; use 'all', 'attention', 'mlp' or names from {sorted(INPUT_DIMS)}.")
  need(c.lora.rank >= 1, "config.lora.rank must be >= 1.")
  need(c.optimizer.lr > 0, "config.optimizer.lr must be > 0.")
  for name in ("train", "eval"):
    d = c[name]
    need(bool(d.task) and bool(d.source), f"config.{name} needs task and source.")


def flat_hparams(c) -> dict:
  """The config as flat {"a.b": scalar} pairs, for TensorBoard's hparams view."""
  out = {}

  def walk(prefix, value):
    if hasattr(value, "items"):
      for k, v in value.items():
        walk(f"{prefix}{k}.", v)
    elif isinstance(value, (int, float, str, bool)):
      out[prefix[:-1]] = value
  walk("", c.to_dict())
  return out
