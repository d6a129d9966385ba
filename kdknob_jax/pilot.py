"""The pilot study: where does the divergence between a student and a teacher come from?

  python -m kdknob_jax.pilot --config configs/pilot_embedded.py [--workdir DIR]
      [--config.rollouts=4 ...]

Writes `table1.md` / `table1.csv` (the paper's Table 1), `figure2_tail.png` and `pilot.json` to
the workdir (see `kdknob_jax.experiments.pilot`).
"""

from __future__ import annotations

from pathlib import Path

from kdknob_jax import cli


def _build(values):
  from kdknob_jax.experiments import pilot_config  # pylint: disable=g-import-not-at-top
  return pilot_config.build(values)


def _run(config, workdir: str) -> dict:
  from kdknob_jax.experiments import pilot  # pylint: disable=g-import-not-at-top
  return pilot.run(config, workdir)


def _report(paths: dict, config, workdir: str) -> None:
  del config, workdir
  print((Path(paths["markdown"]).read_text(encoding="utf-8")))
  for what, path in paths.items():
    print(f"{what}: {path}")


if __name__ == "__main__":
  cli.config_command("A pilot config file (configs/pilot_*.py).", _build, _run, _report,
                     distributed_start=False)
