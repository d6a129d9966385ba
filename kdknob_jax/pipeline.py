"""The end-to-end experiment (the paper's Table 2): calibrated teachers, students, evaluation.

  python -m kdknob_jax.pipeline --config configs/tiny_pipeline.py --workdir runs/tiny_pipeline
  python -m kdknob_jax.pipeline --config configs/pipeline_qwen3.py --workdir runs/qwen3

Rerunning the same command resumes: finished stages are read back, unfinished ones continue
from their checkpoints. The table is written to <workdir>/table.{md,json,png}.
"""

from __future__ import annotations

from kdknob_jax import cli


def _build(values):
  from kdknob_jax.experiments import pipeline_config  # pylint: disable=g-import-not-at-top
  return pipeline_config.build(values)


def _run(config, workdir: str) -> dict:
  from kdknob_jax.experiments import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.run(config, workdir)


def _report(result: dict, config, workdir: str) -> None:
  del config, workdir
  print(result["table"])
  for kind, path in result["paths"].items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  cli.config_command("A pipeline config (configs/*pipeline*.py).", _build, _run, _report)
