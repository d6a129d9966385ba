"""The optimizer of every trainer: AdamW after global-norm clipping, with a linear warm-up and
then a constant, linearly decaying or cosine learning rate.

"linear" is Hugging Face's and TRL's default (`lr_scheduler_type="linear"`: from the peak at the
end of the warm-up down to 0 at the last step); "constant" is this library's default, since the
paper gives no schedule and a constant rate makes a run's steps comparable wherever it stops.
"""

from __future__ import annotations

import optax

SCHEDULES = ("constant", "linear", "cosine")


def learning_rate(lr: float, warmup_steps: int, schedule: str = "constant",
                  total_steps: int = 0) -> optax.Schedule:
  """The learning rate of each update (optax counts updates from 0).

  Args:
    lr: the peak rate.
    warmup_steps: updates of linear warm-up from 0.
    schedule: one of `SCHEDULES`, after the warm-up.
    total_steps: the run's updates; "linear" and "cosine" reach 0 there.

  Raises:
    ValueError: an unknown schedule, or a decaying one without `total_steps`.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; use one of {SCHEDULES}.")
  warm = max(warmup_steps, 0)
  if schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    decay = total_steps - warm
    if decay < 1:
      raise ValueError(f"A {schedule!r} schedule needs more steps ({total_steps}) than warm-up "
                       f"steps ({warmup_steps}).")
    after = (optax.linear_schedule(lr, 0.0, decay) if schedule == "linear"
             else optax.cosine_decay_schedule(lr, decay))
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def make_optimizer(lr: float, warmup_steps: int, clip: float, weight_decay: float,
                   b1: float = 0.9, b2: float = 0.999, schedule: str = "constant",
                   total_steps: int = 0) -> optax.GradientTransformation:
  """AdamW after global-norm clipping, at the rate of `learning_rate`."""
  rate = learning_rate(lr, warmup_steps, schedule, total_steps)
  return optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(rate, b1=b1, b2=b2, weight_decay=weight_decay))
