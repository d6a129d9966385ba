"""Runs the tiny calibration of tests/_calib.py and kills itself with SIGKILL at a chosen
point: the Nth rollout sampling call, target scoring call, train step, or checkpoint save
(right after the save is issued, while Orbax writes it). argv: teacher target data workdir
point count ("none" 0 runs to the end)."""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _die_on(owner, name, count, after=False):
  original = getattr(owner, name)
  calls = [0]

  def wrapped(*args, **kwargs):
    if not (name == "__call__" and kwargs.get("n", 1) == 1):  # rollouts, not evaluations
      calls[0] += 1
    if calls[0] == count and not after:
      os.kill(os.getpid(), signal.SIGKILL)
    out = original(*args, **kwargs)
    if calls[0] == count and after:
      os.kill(os.getpid(), signal.SIGKILL)
    return out
  setattr(owner, name, wrapped)


def main() -> None:
  teacher, target, data, workdir, point, count = sys.argv[1:7]
  count = int(count)
  from kdknob_jax.calibration import rollouts, trainer  # pylint: disable=g-import-not-at-top
  from kdknob_jax.decode.engine import Sampler  # pylint: disable=g-import-not-at-top
  from kdknob_jax.runs.checkpoints import RunCheckpoints  # pylint: disable=g-import-not-at-top
  from tests import _calib  # pylint: disable=g-import-not-at-top
  if point == "sample":
    _die_on(Sampler, "__call__", count)
  elif point == "target":
    _die_on(rollouts, "target_logprobs", count)
  elif point == "save":
    _die_on(RunCheckpoints, "save", count, after=True)
  elif point == "train":
    make = trainer.Calibration.initial_state

    def initial_state(self):
      state = make(self)
      holder = type("Holder", (), {"step": staticmethod(self.train_step)})
      _die_on(holder, "step", count)
      self.train_step = holder.step
      return state
    trainer.Calibration.initial_state = initial_state
  config = _calib.tiny_config(Path(teacher), Path(target), Path(data))
  out = trainer.run(config, workdir, progress=False)
  print("RESULT", out["step"], flush=True)


if __name__ == "__main__":
  main()
