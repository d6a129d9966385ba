"""The shared shape of the config-driven command lines (calibrate, distill, pipeline, pilot):
`--config FILE[:arg]` with `--config.key=value` overrides, `--workdir`, multi-process start-up,
the one conversion of the ConfigDict into the command's typed, checked settings, and errors of
ours printed as one line with exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from kdknob_jax.errors import EXIT_PREEMPTED, KdknobError, PreemptedError


def config_command(what: str, build: Callable[[object], object],
                   run: Callable[[object, str], dict],
                   report: Callable[[dict, object, str], None],
                   distributed_start: bool = True) -> None:
  """Parses the flags, builds the typed settings with `build(config_dict)` and runs
  `run(settings, workdir)`, then `report(result, settings, workdir)` on the main process.
  Exits with 0; 2 after printing a `KdknobError`; `EXIT_PREEMPTED` (75) when a signal stopped
  the run after saving it (the same command resumes).

  Args:
    what: the config files it takes, for --help ("A calibration config (configs/...)").
    build: turns the ConfigDict into the command's checked, typed settings.
    run: the command's work.
    report: prints the outcome.
    distributed_start: join a multi-process run first (`kdknob_jax.distributed.initialize`).
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, what, lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
  flags.mark_flags_as_required(["config"])
  parsed = flags.FLAGS

  def main(argv: list[str]) -> int:
    del argv
    from absl import logging  # pylint: disable=g-import-not-at-top
    from kdknob_jax import distributed  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is noise here
    workdir = parsed.workdir or str(Path("runs") / Path(parsed["config"].config_filename).stem)
    try:
      settings = build(parsed.config)  # checked before a multi-process run joins up
      if distributed_start:
        distributed.initialize()
      result = run(settings, workdir)
    except PreemptedError as e:
      print(f"stopped: {e}", file=sys.stderr)
      return EXIT_PREEMPTED
    except KdknobError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    if distributed.is_main():
      report(result, settings, workdir)
    return 0

  app.run(lambda argv: sys.exit(main(argv)))
