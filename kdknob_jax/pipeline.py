"""The end-to-end experiment (the paper's Table 2): calibrated teachers, students, evaluation.

  python -m kdknob_jax.pipeline --config configs/tiny_pipeline.py --workdir runs/tiny_pipeline
  python -m kdknob_jax.pipeline --config configs/pipeline_qwen3.py --workdir runs/qwen3

Rerunning the same command resumes: finished stages are read back, unfinished ones continue
from their checkpoints. The table is written to <workdir>/table.{md,json,png}.
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
  from kdknob_jax.trainers import pipeline  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  workdir = _FLAGS.workdir or str(Path("runs") / Path(_FLAGS["config"].config_filename).stem)
  try:
    distributed.initialize()
    result = pipeline.run(_FLAGS.config, workdir)
  except KdknobError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if distributed.is_main():
    print(result["table"])
    for kind, path in result["paths"].items():
      print(f"{kind}: {path}")
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "A pipeline config (configs/*pipeline*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
  flags.mark_flags_as_required(["config"])
  return flags.FLAGS


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
