"""Runs the tiny calibration of tests/_calib.py in its own process (a simulated 8-device mesh,
or one of 2 `jax.distributed` processes). argv: teacher target data workdir mesh-json steps."""
import faulthandler
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdknob_jax import distributed  # pylint: disable=g-import-not-at-top


def main() -> None:
  faulthandler.dump_traceback_later(300, exit=True)  # a hung collective shows where it hung
  teacher, target, data, workdir, mesh, steps = sys.argv[1:7]
  info = distributed.initialize()
  from kdknob_jax.calibration import trainer as calibration  # pylint: disable=g-import-not-at-top
  from tests import _calib  # pylint: disable=g-import-not-at-top
  config = _calib.tiny_config(Path(teacher), Path(target), Path(data), mesh=json.loads(mesh),
                               steps=int(steps))
  out = calibration.run(config, workdir, progress=False)
  print("RESULT " + json.dumps({"process": info.process_index, "devices": info.device_count,
                                "step": out["step"]}), flush=True)


if __name__ == "__main__":
  main()
