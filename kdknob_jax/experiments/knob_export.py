"""Copies a knob study's small results out of its workdir, so they can be committed.

  python -m kdknob_jax.experiments.knob_export out/knob results/knob_arith

A study's workdir holds model weights and checkpoints (hundreds of MB a model) beside its
results; only the results are worth keeping in a repository: the report and its JSON, the
figures, the stage plan with wall times, every model's evaluation (metrics and graded
samples, which the report's bootstrap reads), the trap scores, and the runs' settings and
metric logs. Rerunning after a resumed study refreshes the copy (files are overwritten, none
deleted).

The copy has the workdir's layout, so a study can be completed later from it: copy it into
an empty workdir (`cp -r results/knob_arith/. out/knob/`) and run the study there. A stage
whose results are in the copy, for the same settings, is not run again, and a model whose
every stage is there is never rebuilt (`knob.Model`); only what is missing trains.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# (glob under the workdir) of every file copied; the layout of the copy is the workdir's.
PATTERNS = ("report.md", "knob.json", "*.png", "stages.json", "eval/*/metrics.json",
            "eval/*/samples.json", "traps/*.json", "calib/*/metrics.jsonl", "calib/*/run.json",
            "teacher_sft/metrics.jsonl", "teacher_sft/run.json", "students/*/metrics.jsonl",
            "students/*/run.json")


def export(workdir: str | Path, dest: str | Path) -> list[Path]:
  """Copies the study's small results from `workdir` into `dest`.

  Args:
    workdir: the study's workdir (`python -m kdknob_jax.knob --workdir`).
    dest: the folder to copy into (created if needed).

  Returns:
    The copied files' paths under `dest`.

  Raises:
    FileNotFoundError: `workdir` holds no `stages.json` (not a knob study's workdir, or one
      that has not finished a stage yet).
  """
  wd, out = Path(workdir), Path(dest)
  if not (wd / "stages.json").is_file():
    raise FileNotFoundError(
        f"{wd} holds no stages.json: it is not a knob study's workdir, or the study has not "
        "finished a stage yet. Pass the --workdir of `python -m kdknob_jax.knob`.")
  copied = []
  for pattern in PATTERNS:
    for src in sorted(wd.glob(pattern)):
      target = out / src.relative_to(wd)
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(src, target)
      copied.append(target)
  return copied


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(prog="python -m kdknob_jax.experiments.knob_export",
                               description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("workdir")
  ap.add_argument("dest")
  args = ap.parse_args(argv)
  files = export(args.workdir, args.dest)
  print(f"copied {len(files)} files from {args.workdir} to {args.dest}")


if __name__ == "__main__":
  main()
