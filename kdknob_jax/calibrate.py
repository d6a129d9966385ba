"""Calibrate a teacher's distillability (the paper's knob): LoRA reinforcement fine-tuning with
a task reward, a calibration reward against a target model, and a KL anchor.

  python -m kdknob_jax.calibrate --config configs/qwen8b_undistill.py --workdir runs/q8u
  python -m kdknob_jax.calibrate --config configs/tiny_undistill.py --workdir runs/tiny
      [--config.steps=20 --config.lam=-2 ...]

Config files take an argument after a colon: `configs/qwen8b_undistill.py:laptop` runs the same
recipe on the embedded models in minutes. Running the same command again resumes from the
workdir's last checkpoint. Multi-host runs (TPU pods, SLURM) run this same command on every
process; see launch/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kdknob_jax.errors import KdknobError


def main(argv: list[str]) -> int:
  """absl entry point: `--config FILE[:arg]`, `--workdir`, `--config.key=value` overrides."""
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  from kdknob_jax import distributed  # pylint: disable=g-import-not-at-top
  from kdknob_jax.trainers import calibration  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  workdir = _FLAGS.workdir or str(Path("runs") / Path(_FLAGS["config"].config_filename).stem)
  try:
    distributed.initialize()
    result = calibration.run(_FLAGS.config, workdir)
  except KdknobError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if distributed.is_main():
    m = result.get("metrics", {})
    print(f"step {result.get('step')}: teacher accuracy (held-out) "
          f"{m.get('eval/accuracy', float('nan')):.3f}, calibration reward "
          f"{m.get('reward/cal', float('nan')):.3f}")
    print(f"metrics: {Path(workdir) / 'metrics.jsonl'} (TensorBoard: --logdir {workdir})")
    print(f"checkpoints: {Path(workdir) / 'checkpoints'}")
    print(f"export: python -m kdknob_jax.export --workdir {workdir} --out {workdir}/export")
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "A calibration config (configs/*distill.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
  flags.mark_flags_as_required(["config"])
  return flags.FLAGS


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
