"""What a calibration step reports besides its loss: reward and trap statistics of its
rollouts, and the matmul FLOPs of the step for MFU."""

from __future__ import annotations

import functools

import jax
import numpy as np

from kdknob_jax.diagnostics.summary import wrong_trace_preference
from kdknob_jax.models import ModelConfig, abstract_params, param_count
from kdknob_jax.models.lora import LoraConfig, count, init_lora
from kdknob_jax.runs.metrics import decoder_flops_per_token


def rollout_metrics(info: dict) -> dict[str, float]:
  """Per-step scalars of the rewards and the trap metrics against the target."""
  pref = wrong_trace_preference(info["r_cal"], info["correct"], info["prompt_of"])
  seq_rkl = info["logp_teacher"] - info["logp_target"]
  return {
      "reward/task": float(np.mean(info["r_task"])),
      "reward/cal": float(np.mean(info["r_cal"])),
      "reward/cal_std": float(np.std(info["r_cal"])),
      "advantage/mean": float(np.mean(info["adv"])),
      "advantage/std": float(np.std(info["adv"])),
      "advantage/abs_max": float(np.max(np.abs(info["adv"]))),
      # Rounding of the rewards, relative, times this bounds the advantages' (objective.py).
      "advantage/sensitivity": info["sensitivity"],
      "logp/teacher": float(np.mean(info["logp_teacher"])),
      "logp/target": float(np.mean(info["logp_target"])),
      # On the teacher's samples: the k1 estimate of KL(teacher‖target) per sequence.
      "trap/seq_kl_teacher_target": float(np.mean(seq_rkl)),
      "trap/wrong_trace_preference": pref["share"],
      "trap/wrong_trace_pairs": float(pref["pairs"]),
      "rollout/completion_tokens": float(np.mean(info["lengths"])),
      "rollout/stopped": float(np.mean(info["stopped"])),
  }


def _matmul_params(cfg: ModelConfig) -> int:
  n = param_count(cfg) - cfg.vocab_size * cfg.hidden_size  # the embedding lookup is no matmul
  return n + (cfg.vocab_size * cfg.hidden_size if cfg.tie_embeddings else 0)


@functools.lru_cache(maxsize=None)
def _adapter_params(teacher: ModelConfig, lcfg: LoraConfig) -> int:
  """Adapter parameters (traced once per model and adapter settings, not every step)."""
  shapes = abstract_params(teacher)
  return count(jax.eval_shape(lambda: init_lora(shapes, lcfg, jax.random.PRNGKey(0))))


def step_flops(c, teacher: ModelConfig, target: ModelConfig, info: dict) -> float:
  """Model matmul FLOPs of one step (sampling, scoring, target scoring, μ updates), for MFU.

  The adapters are applied, not merged, so the teacher's token costs its base matmuls plus
  2·r·(in + out) per adapted weight, and the update's backward computes the activations'
  gradients through the frozen base (one forward's worth) and the adapters' own gradients, no
  full weight gradient. Rematerialization's recomputation is not counted (model FLOPs, as MFU
  is usually reported).

  Args:
    c: the run's `CalibConfig`.
    teacher, target: the two models' configs.
    info: the step's rollout info (prompt ids and completion lengths).
  """
  n_t, n_g = _matmul_params(teacher), _matmul_params(target)
  n_a = _adapter_params(teacher, c.lora.config())
  comp = float(np.sum(info["lengths"]))
  prompt = float(sum(len(p) for p in info["ids"]))
  ctx = float(np.mean([len(p) for p in info["ids"]])) + c.max_new_tokens / 2
  fwd = decoder_flops_per_token(n_t, teacher.num_layers, teacher.hidden_size, ctx) + 2.0 * n_a
  base_fwd = decoder_flops_per_token(n_t, teacher.num_layers, teacher.hidden_size, ctx)
  # forward + input gradients through the base, + the adapters' input and weight gradients.
  update = (decoder_flops_per_token(n_t, teacher.num_layers, teacher.hidden_size, ctx,
                                    backward=True, weight_grads=False) + 6.0 * n_a)
  tgt = decoder_flops_per_token(n_g, target.num_layers, target.hidden_size, ctx)
  tokens = prompt + comp
  # Scoring: the base for the KL anchor, and the sampling policy only off policy (μ > 1).
  scoring = base_fwd * bool(c.beta) + fwd * (not c.on_policy)
  return tokens * (fwd + scoring + update * c.inner_updates + tgt * bool(c.lam))
