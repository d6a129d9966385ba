"""Distil a student from a teacher (original or calibrated): SFT, GKD with forward KL
(off-policy) or GKD with reverse KL (on-policy), or any GKD mixture.

  python -m kdknob_jax.distill --config configs/tiny_distill_student.py --workdir runs/student
      [--config.method=gkd_rkl --config.teacher=runs/tiny_undistill ...]

`config.teacher` may be a model name or directory, an exported calibrated teacher, or a
calibration workdir. Running the same command again resumes from the workdir's last checkpoint;
the teacher samples are drawn once and cached (`teacher_samples.parquet`).
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
  from kdknob_jax.trainers import distill  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  workdir = _FLAGS.workdir or str(Path("runs") / Path(_FLAGS["config"].config_filename).stem)
  try:
    distributed.initialize()
    result = distill.run(_FLAGS.config, workdir)
  except KdknobError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if distributed.is_main():
    m = result.get("metrics", {})
    print(f"step {result.get('step')}: student accuracy (held-out, greedy) "
          f"{m.get('eval/accuracy', float('nan')):.3f}, loss {m.get('train/loss', float('nan')):.4g}")
    print(f"metrics: {Path(workdir) / 'metrics.jsonl'} (TensorBoard: --logdir {workdir})")
    print(f"evaluate: python -m kdknob_jax.evaluate --model {workdir} --task "
          f"{_FLAGS.config.eval.task} --out {workdir}/eval")
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "A distillation config (configs/*student*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
  flags.mark_flags_as_required(["config"])
  return flags.FLAGS


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
