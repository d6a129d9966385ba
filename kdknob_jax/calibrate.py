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

from pathlib import Path

from kdknob_jax import cli


def _build(values):
  from kdknob_jax.calibration import config  # pylint: disable=g-import-not-at-top
  return config.build(values)


def _run(config, workdir: str) -> dict:
  from kdknob_jax.calibration import trainer as calibration  # pylint: disable=g-import-not-at-top
  return calibration.run(config, workdir)


def _report(result: dict, config, workdir: str) -> None:
  del config
  m = result.get("metrics", {})
  print(f"step {result.get('step')}: teacher accuracy (held-out) "
        f"{m.get('eval/accuracy', float('nan')):.3f}, calibration reward "
        f"{m.get('reward/cal', float('nan')):.3f}")
  print(f"metrics: {Path(workdir) / 'metrics.jsonl'} (TensorBoard: --logdir {workdir})")
  print(f"checkpoints: {Path(workdir) / 'checkpoints'}")
  print(f"export: python -m kdknob_jax.export --workdir {workdir} --out {workdir}/export")


if __name__ == "__main__":
  cli.config_command("A calibration config (configs/*distill.py).", _build, _run, _report)
