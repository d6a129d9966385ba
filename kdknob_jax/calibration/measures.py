"""What a calibration step reports besides its loss: reward and trap statistics of its
rollouts, and the matmul FLOPs of the step for MFU."""

from __future__ import annotations

import numpy as np

from kdknob_jax.diagnostics.summary import wrong_trace_preference
from kdknob_jax.models import ModelConfig, param_count
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


def step_flops(c, teacher: ModelConfig, target: ModelConfig, info: dict) -> float:
  """Matmul FLOPs of one step (sampling, scoring, target scoring, μ updates), for MFU.

  Args:
    c: the run's `CalibConfig`.
    teacher, target: the two models' configs.
    info: the step's rollout info (prompt ids and completion lengths).
  """
  n_t, n_g = _matmul_params(teacher), _matmul_params(target)
  comp = float(np.sum(info["lengths"]))
  prompt = float(sum(len(p) for p in info["ids"]))
  ctx = float(np.mean([len(p) for p in info["ids"]])) + c.max_new_tokens / 2
  fwd = decoder_flops_per_token(n_t, teacher.num_layers, teacher.hidden_size, ctx)
  # The step differentiates through the merged weights W + (α/r)·A·B, so it computes the full
  # weight gradient dW (then projects it onto A and B): a backward with weight gradients.
  bwd = decoder_flops_per_token(n_t, teacher.num_layers, teacher.hidden_size, ctx,
                                backward=True, weight_grads=True)
  tgt = decoder_flops_per_token(n_g, target.num_layers, target.hidden_size, ctx)
  # Scoring: the base for the KL anchor, and the sampling policy only off policy (μ > 1).
  scored = int(bool(c.beta)) + int(not c.on_policy)
  return ((prompt + comp) * fwd + (prompt + comp) * fwd * scored
          + (prompt + comp) * bwd * c.inner_updates + (prompt + comp) * tgt * bool(c.lam))
