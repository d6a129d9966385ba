"""Distil a student from a teacher (original or calibrated): SFT, GKD with forward KL
(off-policy) or GKD with reverse KL (on-policy), or any GKD mixture.

  python -m kdknob_jax.distill --config configs/tiny_distill_student.py --workdir runs/student
      [--config.method=gkd_rkl --config.teacher=runs/tiny_undistill ...]

`config.teacher` may be a model name or directory, an exported calibrated teacher, or a
calibration workdir. Running the same command again resumes from the workdir's last checkpoint;
the teacher samples are drawn once and cached (`teacher_samples.parquet`).
"""

from __future__ import annotations

from pathlib import Path

from kdknob_jax import cli


def _build(values):
  from kdknob_jax.distillation import config  # pylint: disable=g-import-not-at-top
  return config.build(values)


def _run(config, workdir: str) -> dict:
  from kdknob_jax.distillation import trainer as distill  # pylint: disable=g-import-not-at-top
  return distill.run(config, workdir)


def _report(result: dict, config, workdir: str) -> None:
  m = result.get("metrics", {})
  print(f"step {result.get('step')}: student accuracy (held-out, greedy) "
        f"{m.get('eval/accuracy', float('nan')):.3f}, loss {m.get('train/loss', float('nan')):.4g}")
  print(f"metrics: {Path(workdir) / 'metrics.jsonl'} (TensorBoard: --logdir {workdir})")
  print(f"evaluate: python -m kdknob_jax.evaluate --model {workdir} --task {config.eval.task} "
        f"--out {workdir}/eval")


if __name__ == "__main__":
  cli.config_command("A distillation config (configs/tiny_student.py, ...).", _build, _run,
                     _report)
