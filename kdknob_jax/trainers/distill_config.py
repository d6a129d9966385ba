"""Distillation configs: the defaults every student run starts from, the method presets, the
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

from kdknob_jax.errors import ConfigError
from kdknob_jax.rl.lora import INPUT_DIMS, targets_from_names

METHODS = ("sft", "gkd_fkl", "gkd_rkl")
# (on_policy_share, jsd_beta) of each method when the config leaves them at -1.
PRESETS = {"sft": (0.0, 0.0), "gkd_fkl": (0.0, 0.0), "gkd_rkl": (1.0, 1.0)}

IDENTITY_KEYS = ("teacher", "student", "student_keep", "dtype", "method", "on_policy_share",
                 "jsd_beta", "temperature", "top_k", "top_p", "samples_per_prompt",
                 "prompts_per_step", "max_new_tokens", "chat", "lora", "optimizer", "train", "seed")

EMBEDDED_TEACHER = "smollm2-135m-instruct"
# The embedded student: SmolLM2-135M-Instruct without its layers 15..20 (24 of 30 kept). It
# shares the teacher's tokenizer, so every token-level method applies. Dropping late layers
# (21+) or more of the middle gave no English at all, so this is the smallest cut we measured
# that still answers some questions (3 of 24 capitals greedy, vs 17 for the teacher).
EMBEDDED_STUDENT_KEEP = "0-14,21-29"


def base_config():
  """Every distillation setting with its default."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.teacher = ""            # a model name/dir/.gguf, or a calibration workdir
  c.student = ""            # a model name/dir/.gguf (its tokenizer must be the teacher's for GKD)
  c.student_keep = ""       # keep only these student layers ("0-14,21-29"); "": all
  c.dtype = "float32"
  c.method = "gkd_fkl"
  c.on_policy_share = -1.0  # −1: the method's preset (see PRESETS)
  c.jsd_beta = -1.0         # −1: the method's preset
  c.temperature = 1.0       # of every sample (teacher and student) and of the GKD loss
  c.top_k = 0
  c.top_p = 1.0
  c.samples_per_prompt = 1  # completions per prompt (teacher samples cached; student on-policy)
  c.prompts_per_step = 8
  c.max_new_tokens = 256
  c.chat = True
  c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=0.0, targets="all"))  # rank 0: full FT
  c.optimizer = ml_collections.ConfigDict(dict(lr=1e-5, warmup_steps=10, clip=1.0,
                                               weight_decay=0.0, b1=0.9, b2=0.999))
  c.train = ml_collections.ConfigDict(dict(task="gsm8k", source="gsm8k/train.jsonl",
                                           split="", offset=0, limit=0))
  c.eval = ml_collections.ConfigDict(dict(task="gsm8k", source="gsm8k/test.jsonl", split="",
                                          offset=0, limit=64, max_new_tokens=0))
  c.samples_cache = ""      # teacher samples (Parquet); "": <workdir>/teacher_samples.parquet
  c.sample_batch = 64       # prompts per decoder call while caching teacher samples
  c.steps = 200
  c.eval_every = 50         # held-out greedy accuracy; 0: only at the end
  c.checkpoint_every = 25
  c.keep_checkpoints = 3
  c.log_every = 1
  c.seed = 0
  c.chunk = 0               # LM-head rows per chunk in the losses (0: automatic)
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.rules = ()
  return c


def knobs(c) -> tuple[float, float]:
  """(on_policy_share, jsd_beta) in effect: the config's, or the method's preset."""
  share, beta = PRESETS[c.method]
  return (share if c.on_policy_share < 0 else float(c.on_policy_share),
          beta if c.jsd_beta < 0 else float(c.jsd_beta))


def parse_keep(spec: str, num_layers: int) -> tuple[int, ...]:
  """Layer indices from "0-14,21-29" (inclusive ranges and single indices); "" is all.

  Raises:
    ConfigError: a malformed range, an index outside 0..num_layers−1, or a repeat.
  """
  if not str(spec).strip():
    return tuple(range(num_layers))
  out = []
  for part in str(spec).split(","):
    lo, _, hi = part.strip().partition("-")
    try:
      a, b = int(lo), int(hi or lo)
    except ValueError as e:
      raise ConfigError(f"config.student_keep {spec!r}: {part!r} is not an index or a range "
                        "like 0-14.") from e
    out.extend(range(a, b + 1))
  bad = [i for i in out if not 0 <= i < num_layers]
  if bad or len(set(out)) != len(out) or not out:
    raise ConfigError(f"config.student_keep {spec!r} must list distinct layers in "
                      f"0..{num_layers - 1} (the student's layers), in order.")
  return tuple(out)


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


def check(c) -> None:
  """Raises ConfigError naming the bad value and the fix; runs before any model loads."""
  def need(ok: bool, message: str) -> None:
    if not ok:
      raise ConfigError(message)

  need(bool(c.teacher), "config.teacher is empty: name the teacher (a model, an export "
       "directory, or a calibration workdir).")
  need(bool(c.student), "config.student is empty: name the student model.")
  need(c.method in METHODS, f"config.method must be one of {METHODS}, got {c.method!r}.")
  need(c.dtype in ("float32", "bfloat16"), f"config.dtype must be float32 or bfloat16, got "
       f"{c.dtype!r}.")
  share, beta = knobs(c)
  need(0.0 <= share <= 1.0, f"config.on_policy_share must be in [0, 1] (or −1 for the "
       f"method's preset), got {c.on_policy_share}.")
  need(0.0 <= beta <= 1.0, f"config.jsd_beta must be in [0, 1] (or −1), got {c.jsd_beta}.")
  need(not (c.method == "sft" and share > 0), "config.method 'sft' learns from teacher samples "
       "only; on_policy_share must be 0 (use gkd_rkl or set a share with a gkd method).")
  need(c.temperature > 0, "config.temperature must be > 0.")
  need(c.samples_per_prompt >= 1, "config.samples_per_prompt must be >= 1.")
  need(c.prompts_per_step >= 1, "config.prompts_per_step must be >= 1.")
  need(c.max_new_tokens >= 1, "config.max_new_tokens must be >= 1.")
  need(c.steps >= 1, "config.steps must be >= 1.")
  need(c.checkpoint_every >= 1, "config.checkpoint_every must be >= 1.")
  need(c.sample_batch >= 1, "config.sample_batch must be >= 1.")
  if c.lora.rank:
    targets = targets_from_names(c.lora.targets)
    unknown = sorted(set(targets) - set(INPUT_DIMS))
    need(not unknown and bool(targets), f"config.lora.targets {unknown or '(none)'} are not "
         f"projections; use 'all', 'attention', 'mlp' or names from {sorted(INPUT_DIMS)}.")
  need(c.lora.rank >= 0, "config.lora.rank must be >= 0 (0: full fine-tuning).")
  need(c.optimizer.lr > 0, "config.optimizer.lr must be > 0.")
  for name in ("train", "eval"):
    d = c[name]
    need(bool(d.task) and bool(d.source), f"config.{name} needs task and source.")
