"""The knob study: calibrated teachers at several λ (and the λ = 0 control) over seeds, their
students, Table 2 and Table 4 with confidence intervals, the frontier and the learning curves.

  python -m kdknob_jax.knob --config configs/knob_arith.py --workdir out/knob

Rerunning the same command resumes: finished stages are read back, unfinished ones continue
from their checkpoints. The report is written to <workdir>/report.md (with knob.json,
frontier.png and curves.png) after every seed.
"""

from __future__ import annotations

from kdknob_jax import cli


def _build(values):
  from kdknob_jax.experiments import knob_config  # pylint: disable=g-import-not-at-top
  return knob_config.build(values)


def _run(config, workdir: str) -> dict:
  from kdknob_jax.experiments import knob  # pylint: disable=g-import-not-at-top
  return knob.run(config, workdir)


def _report(result: dict, config, workdir: str) -> None:
  del config
  if result.get("summary"):
    print(result["summary"])
  print(f"knob study in {workdir}: {result['seconds'] / 60:.1f} min this invocation")
  for kind, path in result["paths"].items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  cli.config_command("A knob-study config (configs/knob_*.py).", _build, _run, _report)
