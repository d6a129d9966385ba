"""The optimizer of every trainer: AdamW after global-norm clipping, with a linear warm-up."""

from __future__ import annotations

import optax


def make_optimizer(lr: float, warmup_steps: int, clip: float, weight_decay: float,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW after global-norm clipping, the learning rate warmed up linearly then constant."""
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
      [max(warmup_steps, 1)]) if warmup_steps > 0 else optax.constant_schedule(lr)
  return optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
