"""The training-step comparison (`python -m kdknob_jax.compare steps`): one calibration update
and one GKD forward-KL and reverse-KL student update, ours (float32) against TRL's, from the
same rollouts, rewards and initial weights. TRL runs twice: on the HF model in float32 (the
like-for-like figures) and on a float64 copy (the reference the gates use; see
`steps_figures`).

Rollouts are sampled once by the HF models (temperature 1, every row `tokens` long, then rows
cut to tokens, tokens − 2 and tokens − 4 so masks and padding count) and handed to both sides
as ids: the teacher's samples serve calibration and GKD-FKL (off policy), the student's serve
GKD-RKL (on policy). Rewards are seeded draws: r_task ∈ {0, 1} (each group has both) and
r_cal ~ N(−30, 8²). The initial adapters are ours (`init_lora`: PEFT's kaiming-uniform A) with
a nonzero random B, so the adapted teacher differs from the base and A's gradients are nonzero;
PEFT gets the same values. The students are full fine-tunes (what `distill` trains by default).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from kdknob_jax.compare import adapters_map, steps_figures, steps_jax
from kdknob_jax.compare.run import DEFAULT_PROMPTS
from kdknob_jax.calibration.config import EMBEDDED_TEACHER
from kdknob_jax.calibration.step import StepConfig
from kdknob_jax.distillation.config import EMBEDDED_STUDENT_KEEP, PRESETS
from kdknob_jax.errors import ConfigError, TokenizerNotFoundError
from kdknob_jax.hf import load_config, load_model, load_tokenizer, resolve
from kdknob_jax.models.derive import parse_keep
from kdknob_jax.models.lora import LoraConfig, init_lora
from kdknob_jax.runs.resolve import load_student
from kdknob_jax.train.settings import OptimizerSettings

UPDATES = ("calibration", "gkd_fkl", "gkd_rkl")
# Where our definitions and TRL 1.16's differ; each comparison is set up where they agree.
DEPARTURES = (
    "advantages: ours (the paper's, renormalize=False) are sum_k w_k * group_norm(r_k); no TRL "
    "mode computes that. TRL's default 'sum_then_normalize' group-normalizes the weighted sum; "
    "'normalize_then_sum' then standardizes it over the batch, which is ours with "
    "renormalize=True: that pair is compared and trains; the others are reported.",
    "KL anchor gradient: TRL 1.16's default use_bias_correction_kl=True multiplies the k3 "
    "term by the ratio pi/pi_old (DeepSeek-V3.2's unbiased reverse-KL gradient): its value is "
    "1 on policy but its gradient adds KL_t * grad log pi_t. Ours is the plain k3 anchor "
    "(paper Eq. 11, as TRL before that option). Compared with use_bias_correction_kl=False; "
    "the gradients under TRL's default are reported as calibration.trl_default_kl.",
    "temperature (calibration): TRL's GRPO divides the policy's logits by args.temperature "
    "when it scores them; ours scores the untempered policy (the temperature only shapes the "
    "rollouts). Compared at temperature 1.",
    "temperature (GKD): TRL's GKDTrainer.compute_loss calls generalized_jsd_loss without its "
    "temperature (it samples at args.temperature, scores at 1); ours divides both models' "
    "logits by config.temperature. Compared at temperature 1.",
    "embedding padding row: HF builds a model's embedding with padding_idx = pad_token_id, "
    "and torch's nn.Embedding gives that row no gradient from its lookups; ours trains it like "
    "any row. SmolLM2-Instruct's pad token is <|im_end|> (id 2), in every chat prompt, so a "
    "full fine-tune's embedding gradient differs in that row (measured on the embedded "
    "student: embed grad rel 0.063 FKL, 0.125 RKL). The students are compared with torch's "
    "padding_idx set to None (gkd_*.setup.hf_padding_idx names the row).",
    "weight decay: the HF Trainer exempts biases and norm weights from AdamW's decay; "
    "optax.adamw in train/optimizer.py decays every trained tensor. Equal for adapters; a "
    "full fine-tune's norm weights differ when weight_decay > 0, so the students are compared "
    "at weight_decay 0 (distill's default).",
    "clipping: torch scales by max_norm / (norm + 1e-6), optax by max_norm / norm: 1e-6/norm "
    "relative in the clipped gradient, which Adam's first step (nearly scale-free) all but "
    "ignores. Gradients are compared before clipping.",
)

NOTES = (
    "torch32's own float32 error: on the embedded student its gradients are up to 1.8e-4 "
    "from torch64's (reverse KL; 5.5e-5 forward KL) where ours stay under 3.3e-5, so the "
    "gradient gate is against torch64; ours against torch32 is reported as grad_rel_t32.",
    "torch64 attends with sdpa (HF's eager attention takes its softmax in float32, where a "
    "float64 mask becomes -inf and left-padded rows give NaN), and its GRPO scores with a plain "
    "float64 log-softmax in place of TRL's chunked log-prob kernel, which folds in float32.",
    "TRL left-pads prompts and HF numbers positions from the padded start, so shorter prompts "
    "sit at shifted positions there; rotary attention depends only on position differences, "
    "so this moves rounding only. Ours numbers each prompt from 0.",
    "GKD on policy: TRL samples from the student inside training_step (with probability "
    "lmbda); here both sides get the same student samples.",
)


@dataclasses.dataclass(frozen=True)
class StepsSettings:
  """What `compare_steps` runs.

  Attributes:
    model: the teacher (calibrated, and the GKD teacher).
    student: the GKD student's weights ("" : the teacher's).
    student_keep: its layers (`parse_keep`); None: the embedded student's cut for the embedded
      teacher, else every layer but the middle one.
    prompts, group_size, tokens: the rollouts (prompts × group_size rows of ≤ tokens).
    rank, alpha, b_scale: the adapters; B starts as b_scale × N(0, 1).
    lam, task_weight, beta: λ, the task reward's weight, the KL anchor's weight.
    optimizer: calibration's AdamW (the students use it with weight_decay 0).
    seed: of the prompts (without a tokenizer), rollouts, rewards and adapters.
    updates: which of `UPDATES` to compare (a GKD-only run skips the adapters, a
      calibration-only one the student's copies).
  """
  model: str = EMBEDDED_TEACHER
  student: str = ""
  student_keep: str | None = None
  prompts: int = 2
  group_size: int = 4
  tokens: int = 16
  rank: int = 8
  alpha: float = 16.0
  b_scale: float = 0.02
  lam: float = 0.5
  task_weight: float = 1.0
  beta: float = 0.04
  optimizer: OptimizerSettings = OptimizerSettings(lr=1e-4, warmup_steps=0, clip=1.0,
                                                   weight_decay=0.01)
  seed: int = 0
  updates: tuple[str, ...] = ("calibration", "gkd_fkl", "gkd_rkl")

  def check(self) -> None:
    """Raises ConfigError naming a value the comparison cannot run with."""
    unknown = [u for u in self.updates if u not in UPDATES]
    if unknown or not self.updates:
      raise ConfigError(f"--updates must name some of {', '.join(UPDATES)}, got "
                        f"{','.join(self.updates) or 'none'}.")
    if not 1 <= self.prompts <= len(DEFAULT_PROMPTS):
      raise ConfigError(f"--prompts must be 1..{len(DEFAULT_PROMPTS)}, got {self.prompts}.")
    if self.group_size < 2:
      raise ConfigError(f"--group-size must be >= 2 (advantages are normalized within each "
                        f"group), got {self.group_size}.")
    if self.tokens < 5:
      raise ConfigError(f"--tokens must be >= 5 (rows are cut to tokens - 4), got "
                        f"{self.tokens}.")
    if self.rank < 1 or self.alpha <= 0 or self.b_scale <= 0:
      raise ConfigError("--rank, --alpha and --b-scale must be positive.")
    if self.optimizer.lr <= 0 or self.optimizer.clip <= 0:
      raise ConfigError("--lr and --clip must be positive.")


def _prompts(source, n: int, vocab_size: int, seed: int) -> tuple[list[list[int]], str]:
  """The n shortest default prompts under the model's tokenizer (few tokens keep the run
  short), or seeded random ids of several lengths when it has none (tiny checkpoints)."""
  try:
    tok = load_tokenizer(source)
  except TokenizerNotFoundError:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, 9 + 6 * i).tolist() for i in range(n)], "random ids"
  ids = sorted((tok.encode_prompt(p) for p in DEFAULT_PROMPTS), key=len)[:n]
  return ids, "chat template" if tok.chat_template else "text"


def _cut(rows: list[list[int]]) -> list[list[int]]:
  return [r[:len(r) - 2 * (i % 3)] for i, r in enumerate(rows)]


def _rewards(n: int, group_size: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([seed, 1])
  task = rng.integers(0, 2, n).astype(np.float32)
  task[0::group_size], task[1::group_size] = 1.0, 0.0  # every group has a task signal
  return {"task": task, "cal": rng.normal(-30.0, 8.0, n).astype(np.float32)}


def _initial_lora(params: dict, lcfg: LoraConfig, b_scale: float, seed: int) -> dict:
  lora = jax.device_get(init_lora(params, lcfg, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng([seed, 2])
  for ab in lora["layers"].values():
    ab["b"] = (b_scale * rng.standard_normal(ab["b"].shape)).astype(np.float32)
  return lora


def _pair(ours: float, t32: float, t64: float, scale: float = 0.0) -> dict[str, float]:
  """A scalar on the three sides; "rel" is ours against torch64 (see `DEFINITIONS`)."""
  den = max(abs(t64), scale)
  return {"ours": ours, "torch32": t32, "torch64": t64,
          "rel": abs(ours - t64) / den if den else float(ours != t64),
          "rel_torch32": abs(ours - t32) / max(abs(t32), scale, 1e-30)}


def _figures(name: str, per_tensor: dict, loss: dict, extra: dict) -> dict:
  summary = steps_figures.summary(per_tensor)
  figures = dict(extra, loss_rel=loss["rel"], grad_rel_max=summary["grad_rel_max"],
                 new_value_rel_max=summary["new_value_rel_max"])
  return {"figures": figures, "failures": steps_figures.check(figures, name),
          "loss": loss, "summary": summary, "by_group": steps_figures.by_group(per_tensor),
          "per_tensor": per_tensor}


class _Clock:
  """Seconds per phase, for the JSON (which side costs what)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._t = time.perf_counter()

  def lap(self, name: str) -> None:
    now = time.perf_counter()
    self.seconds[name] = round(now - self._t, 1)
    self._t = now


def _calibration(s: StepsSettings, teacher, t32, t64, prompts, owner, rows, rewards,
                 clock: _Clock) -> dict:
  """One calibration update on the three sides; PEFT wraps `t32` and `t64` in place."""
  from kdknob_jax.compare import steps_torch  # pylint: disable=g-import-not-at-top
  lcfg = LoraConfig(s.rank, s.alpha)
  lora = _initial_lora(teacher.params, lcfg, s.b_scale, s.seed)
  weights = {"task": s.task_weight, "cal": s.lam}
  adv_paper = steps_jax.advantages(rewards, weights, s.group_size, renormalize=False)
  adv = steps_jax.advantages(rewards, weights, s.group_size, renormalize=True)
  scfg = StepConfig(s.beta, 0.2, 0.2, "sequence_mean", on_policy=True)
  optimizer = s.optimizer.make()
  arrays = steps_jax.rollout_arrays(prompts, owner, rows)
  ours = steps_jax.calibration_update(teacher, lcfg, lora, arrays, adv, scfg, optimizer)
  clock.lap("calibration_ours")
  peft = adapters_map.lora_to_peft(lora)
  ref = {}
  for side, model in (("t32", t32), ("t64", t64)):
    ref[side] = steps_torch.grpo_update(model, lcfg, peft, prompts, owner, rows, rewards,
                                        weights, s.group_size, s.beta, 0.2, 0.2, s.optimizer,
                                        pad_id=0, default_kl=side == "t32", step=side == "t32")
    clock.lap(f"calibration_{side}")
  keys = adapters_map.per_layer_adapters

  def theirs(flat):  # PEFT's tensors, per key in our layout
    return keys(adapters_map.lora_from_peft(flat, lora))

  grads_t32 = adapters_map.lora_from_peft(ref["t32"]["grads"], lora)
  grads_t64 = adapters_map.lora_from_peft(ref["t64"]["grads"], lora)
  per = steps_figures.tensor_figures(
      grads={"ours": keys(ours["grads"]), "t32": keys(grads_t32), "t64": keys(grads_t64)},
      old={"ours": keys(lora), "t32": keys(lora)},
      new={"ours": keys(ours["new"]), "t32": theirs(ref["t32"]["new"]),
           "opt": keys(steps_jax.optimizer_step(optimizer, lora, grads_t32)),
           "opt64": keys(steps_jax.optimizer_step(optimizer, lora, grads_t64))})
  trl_adv = ref["t32"]["advantages"]
  scale = float(np.abs(trl_adv["normalize_then_sum"]).mean())
  loss = _pair(ours["loss"], ref["t32"]["loss"], ref["t64"]["loss"], scale)
  out = _figures("calibration", per, loss, {
      "advantages_rel": steps_figures.rel(adv, trl_adv["normalize_then_sum"])})
  mask = arrays["mask"].astype(bool)
  width = max(len(r) for r in rows)
  ref_diff = (float(np.abs(ours["ref_logp"][:, :width] - ref["t64"]["ref_logp"])[
      mask[:, :width]].max()) if s.beta else 0.0)
  corrected = theirs(ref["t32"]["grads_bias_corrected_kl"])
  ours_grads = keys(ours["grads"])
  out.update(
      kl=_pair(ours["kl"], ref["t32"]["kl"], ref["t64"]["kl"]),
      grad_norm=_pair(ours["grad_norm"], ref["t32"]["grad_norm"], ref["t64"]["grad_norm"]),
      ref_logp_max_abs_diff=ref_diff,
      trl_default_kl={"use_bias_correction_kl": True, "grad_rel_t32_max": max(
          steps_figures.rel(ours_grads[k], corrected[k]) for k in corrected)},
      advantages={
          "ours_renormalized": adv.tolist(), "ours_paper": adv_paper.tolist(),
          "trl": {k: v.tolist() for k, v in trl_adv.items()},
          "rel_ours_renormalized_vs_trl_normalize_then_sum": out["figures"]["advantages_rel"],
          "rel_ours_paper_vs_trl_normalize_then_sum": steps_figures.rel(
              adv_paper, trl_adv["normalize_then_sum"]),
          "rel_ours_paper_vs_trl_sum_then_normalize": steps_figures.rel(
              adv_paper, trl_adv["sum_then_normalize"]),
      },
      setup={"rank": s.rank, "alpha": s.alpha, "targets": list(lcfg.targets),
             "b_scale": s.b_scale, "lam": s.lam, "task_weight": s.task_weight, "beta": s.beta,
             "trl": {"loss_type": "grpo", "multi_objective_aggregation": "normalize_then_sum",
                     "scale_rewards": "group", "num_iterations": 1, "temperature": 1.0,
                     "use_bias_correction_kl": False, "importance_sampling_level": "token"},
             "ours": {"aggregation": "sequence_mean", "renormalize": True, "on_policy": True}})
  return out


def _distillation(name: str, s: StepsSettings, teacher, student, models, s_state: dict,
                  prompts, owner, rows, clock: _Clock) -> dict:
  """One GKD update on the three sides, each from the student's initial weights.

  Args:
    models: {"t32": (teacher, student), "t64": (teacher, None)} HF models; the float32
      student is trained in place, the float64 one is built from `s_state` for this call.
    s_state: the student's initial HF weights.
  """
  from kdknob_jax.compare import steps_torch  # pylint: disable=g-import-not-at-top
  share, beta = PRESETS[name]
  optimizer_settings = dataclasses.replace(s.optimizer, weight_decay=0.0)
  optimizer = optimizer_settings.make()
  ours = steps_jax.distillation_update(student, teacher, steps_jax.rollout_arrays(
      prompts, owner, rows), beta, 1.0, optimizer)
  clock.lap(f"{name}_ours")
  cfg = student.config
  names = list(s_state)

  def tree(tensors):  # HF's tensors as our param tree
    return adapters_map.params_from_hf(tensors, cfg, names)

  keys = adapters_map.per_layer_params
  t32, s32 = models["t32"]
  s32.load_state_dict(s_state)
  ref = steps_torch.gkd_update(s32, t32, prompts, owner, rows, beta, share, optimizer_settings,
                               pad_id=0)
  old = tree({k: v.numpy() for k, v in s_state.items()})
  grads_t32, new_t32 = tree(ref["grads"]), tree(ref["new"])
  loss_t32, norm_t32 = ref["loss"], ref["grad_norm"]
  del ref
  clock.lap(f"{name}_t32")
  s64 = steps_torch.as_float64(s32, s_state)
  ref = steps_torch.gkd_update(s64, models["t64"][0], prompts, owner, rows, beta, share,
                               optimizer_settings, pad_id=0, step=False)
  del s64
  grads_t64 = tree(ref["grads"])
  loss_t64, norm_t64 = ref["loss"], ref["grad_norm"]
  del ref
  clock.lap(f"{name}_t64")
  per = steps_figures.tensor_figures(
      grads={"ours": keys(ours["grads"]), "t32": keys(grads_t32), "t64": keys(grads_t64)},
      old={"ours": keys(student.params), "t32": keys(old)},
      new={"ours": keys(ours["new"]), "t32": keys(new_t32),
           "opt": keys(steps_jax.optimizer_step(optimizer, old, grads_t32)),
           "opt64": keys(steps_jax.optimizer_step(optimizer, old, grads_t64))})
  out = _figures(name, per, _pair(ours["loss"], loss_t32, loss_t64), {})
  out.update(grad_norm=_pair(ours["grad_norm"], norm_t32, norm_t64),
             setup={"jsd_beta": beta, "on_policy_share": share, "temperature": 1.0,
                    "trained": "every student weight", "weight_decay": 0.0,
                    "completions": "student samples" if share else "teacher samples"})
  return out


def compare_steps(s: StepsSettings) -> dict:
  """Runs the comparisons `s.updates` names and returns every figure (see `steps_figures`).

  Raises:
    ConfigError: a setting the comparison cannot run with.
    ModelNotFoundError, CheckpointMismatchError: a model that cannot be loaded.
  """
  from kdknob_jax.compare import steps_torch  # pylint: disable=g-import-not-at-top
  s.check()
  clock = _Clock()
  source = resolve(s.model)
  student_name = s.student or s.model
  n_layers = load_config(student_name).num_layers
  keep_spec = s.student_keep
  if keep_spec is None:
    keep_spec = (EMBEDDED_STUDENT_KEEP if student_name == EMBEDDED_TEACHER
                 else ",".join(str(i) for i in range(n_layers) if i != n_layers // 2))
  keep = parse_keep(keep_spec, n_layers)
  gkd = [u for u in ("gkd_fkl", "gkd_rkl") if u in s.updates]
  teacher = load_model(source, "float32")
  student = load_student(student_name, keep_spec, "float32") if gkd else None
  if student is not None and student.config.vocab_size != teacher.config.vocab_size:
    raise ConfigError(f"The student's vocabulary ({student.config.vocab_size}) is not the "
                      f"teacher's ({teacher.config.vocab_size}); GKD needs one vocabulary.")
  clock.lap("load_ours")
  t32 = steps_torch.trainable_model(source)
  same = resolve(student_name).path == source.path
  s32 = steps_torch.cut_layers(t32 if same else steps_torch.trainable_model(
      resolve(student_name)), keep)
  # HF's embedding drops the gradient of its pad row; ours does not (see DEPARTURES).
  pad_row = s32.get_input_embeddings().padding_idx
  s_state = {k: v.clone() for k, v in s32.state_dict().items()} if gkd else None
  t64 = steps_torch.as_float64(t32)
  clock.lap("load_torch")
  prompts, encoding = _prompts(source, s.prompts, teacher.config.vocab_size, s.seed)
  owner = [p for p in range(s.prompts) for _ in range(s.group_size)]
  t_rows = _cut(steps_torch.sample(t32, prompts, s.group_size, s.tokens, s.seed))
  # Each sample call seeds itself: the teacher's rows are the same whichever updates run.
  s_rows = (_cut(steps_torch.sample(s32, prompts, s.group_size, s.tokens, s.seed + 1))
            if "gkd_rkl" in s.updates else [])
  clock.lap("sample")
  rewards = _rewards(len(t_rows), s.group_size, s.seed)
  result = {"mode": "steps", "model": s.model, "source": str(source.path),
            "student": student_name, "student_keep": keep_spec, "dtype": "float32",
            "reference_dtypes": ["float32", "float64"], "encoding": encoding,
            "updates": list(s.updates),
            "rollouts": {"prompts": s.prompts, "group_size": s.group_size,
                         "prompt_tokens": [len(p) for p in prompts],
                         "teacher_completion_tokens": [len(r) for r in t_rows],
                         "student_completion_tokens": [len(r) for r in s_rows]},
            "optimizer": dataclasses.asdict(s.optimizer),
            "rewards": {k: v.tolist() for k, v in rewards.items()}}
  models = {"t32": (t32, s32), "t64": (t64, None)}
  for name in gkd:
    rows = t_rows if name == "gkd_fkl" else s_rows
    result[name] = _distillation(name, s, teacher, student, models, s_state, prompts, owner,
                                 rows, clock)
    result[name]["setup"]["hf_padding_idx"] = pad_row
  del models, s32, s_state, student
  if "calibration" in s.updates:
    result["calibration"] = _calibration(s, teacher, t32, t64, prompts, owner, t_rows,
                                         rewards, clock)
  failures = [f for k in UPDATES if k in result for f in result[k]["failures"]]
  result.update(departures=list(DEPARTURES), notes=list(NOTES),
                tolerances=steps_figures.TOLERANCES, definitions=steps_figures.DEFINITIONS,
                seconds_by_phase=clock.seconds,
                seconds=round(sum(clock.seconds.values()), 1),
                failures=failures, passed=not failures)
  return result
