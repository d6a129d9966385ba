"""Distillable calibration on the embedded default (λ > 0): the SmolLM2-135M-Instruct teacher
is tuned so that its samples become more likely under the Gemma-3-270M target, whose tokenizer
differs (the reward is computed on text). CommonsenseQA sample from ../shared/data. Runs on a
laptop CPU in minutes (README, "Calibration", has the measured time).

  python -m kdknob_jax.calibrate --config configs/tiny_distill.py --workdir runs/tiny_distill

`--config configs/tiny_distill.py:smoke` is a 2-step run for tests and first tries.
"""

from kdknob_jax.calibration.config import base_config, shrink


def get_config(arg: str | None = None):
  """The config; `arg="smoke"` shrinks it further."""
  c = shrink(base_config(), "smoke" if arg == "smoke" else "laptop")
  if arg not in (None, "smoke", "laptop"):
    shrink(c, arg)  # raises the unknown-argument error
  c.lam = 1.0
  return c
