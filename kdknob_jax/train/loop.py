"""The one run loop every trainer shares: one writer per workdir, resume from the workdir's
latest checkpoint, then per step the trainer's own work, a guard against non-finite values,
evaluation, metrics and checkpoints on their cadences, a progress bar, preemption (SIGTERM or
SIGINT: the step in flight finishes, its checkpoint is written, the run stops with
`PreemptedError`), and `stop_after` for tests of resuming.

A trainer is what `Trainer` describes: the loop calls `step(state, step, key)` once per step
(the key is `fold_in(root, step)`, so a resumed run draws what an uninterrupted one does),
`evaluate` on the evaluation cadence, and `saved` to name what a checkpoint holds. Only the
trained tree, the optimizer state, the step and the root key are checkpointed; frozen weights
are reloaded from their source.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from kdknob_jax.errors import NonFiniteError, PreemptedError, RunStateError
from kdknob_jax.runs import metrics as metrics_lib
from kdknob_jax.runs.checkpoints import RunCheckpoints
from kdknob_jax.runs.lock import WorkdirLock
from kdknob_jax.train.settings import LoopSettings
from kdknob_jax.train.state import replicate

# Metrics whose non-finite value means the update (or the rewards behind it) is broken.
GUARDED = ("train/loss", "train/grad_norm", "reward/")


class Trainer(Protocol):
  """What a trainer supplies to `run`."""
  name: str  # the progress bar's label

  def step(self, state: Any, step: int, key: jax.Array) -> tuple[Any, dict[str, float], Any]:
    """One step: its batch and update. Returns (state, scalar metrics, what `evaluate` may
    use of the step)."""

  def evaluate(self, state: Any, aux: Any) -> dict[str, float]:
    """Held-out metrics of the state."""

  def saved(self, state: Any) -> dict:
    """The checkpointed part of the state: a tree with "step" and the trained leaves, whose
    keys name fields of the state."""

  def postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
    """The progress bar's headline numbers."""


@contextlib.contextmanager
def open_workdir(workdir: Path, identity: Mapping[str, Any], keep: int
                 ) -> Iterator[RunCheckpoints]:
  """The workdir's checkpoints, with its lock held until the block ends.

  Opened before any model loads: a workdir of another run, or one another process is writing,
  is refused at once. A workdir that holds a checkpoint says so on the first line.

  Raises:
    RunStateError: the workdir is in use, of another run, not a directory, or not writable.
  """
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    ckpt = RunCheckpoints(workdir, identity, keep=keep)
    latest = ckpt.latest_step()
    if latest is not None and jax.process_index() == 0:
      print(f"resuming {workdir} from its step-{latest} checkpoint", flush=True)
    yield ckpt


def nonfinite(metrics: Mapping[str, float]) -> list[str]:
  """The guarded metrics (`GUARDED`) whose value is NaN or infinite."""
  return sorted(k for k, v in metrics.items()
                if k.startswith(GUARDED) and v is not None and not math.isfinite(v))


class _StopRequest:
  """Records SIGTERM/SIGINT instead of dying mid-step (main thread only; elsewhere a no-op)."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # a second signal: the user insists, stop now
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name

  def requested(self) -> bool:
    """Whether any process was signalled: every process of a multi-process run agrees."""
    flag = self.signal is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
    return flag

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def resume(ckpt: RunCheckpoints, writer: metrics_lib.Writer, state, trainer: Trainer, seed: int,
           mesh, hparams: Mapping[str, object]):
  """(state, root key, first step): restored from the workdir's latest checkpoint (metrics
  past it dropped), or the initial state and a fresh key (hparams written)."""
  root = replicate(jax.random.PRNGKey(seed), mesh)
  if ckpt.latest_step() is None:
    # Rows of an earlier start killed before its first checkpoint was complete (Orbax saves
    # asynchronously) belong to steps this run repeats.
    writer.truncate_after(0)
    writer.write_hparams(hparams)
    return state, root, 0
  restored, meta = ckpt.restore(dict(trainer.saved(state), rng=root))
  root = restored.pop("rng")
  start = int(meta["step"])
  writer.truncate_after(start)
  return state.replace(**restored), root, start


def _failing() -> bool:
  """Whether an exception is propagating (closing then must not replace it with its own)."""
  return sys.exc_info()[0] is not None


def run(trainer: Trainer, state, ckpt: RunCheckpoints, settings: LoopSettings, workdir: Path,
        mesh, hparams: Mapping[str, object], progress: bool = True,
        stop_after: int | None = None) -> dict:
  """Runs (or resumes) `trainer` from `state` to `settings.steps`.

  Args:
    trainer: the step, evaluation and checkpoint contents.
    state: the initial state (a flax struct dataclass), on the mesh.
    ckpt: the workdir's checkpoints (opened before any model loaded, so a workdir of another
      run is refused early).
    settings: steps and cadences.
    workdir: metrics (`metrics.jsonl`, TensorBoard) go here.
    mesh: the run's mesh (the root key is replicated on it).
    hparams: flat settings for TensorBoard, written once at a fresh start.
    progress: show a progress bar (metrics then go to TensorBoard and JSONL only).
    stop_after: end after this many steps of this process, as if killed right after that
      step's checkpoint was written (for tests of resuming).

  Returns:
    {"step": last step, "metrics": its metrics, "workdir": path}.
  """
  writer = metrics_lib.Writer(workdir, console=not progress)
  state, root, start = resume(ckpt, writer, state, trainer, settings.seed, mesh, hparams)
  bar = tqdm(total=settings.steps, initial=start, desc=trainer.name, unit="step",
             disable=not progress or jax.process_index() != 0)
  last, done_here, at = {}, 0, start

  def save(done):
    ckpt.save(done, dict(trainer.saved(state), rng=root),
              {"step": done, "data_position": done * settings.rows_per_step,
               "seed": settings.seed})

  try:
    with _StopRequest() as stop:
      for step in range(start, settings.steps):
        at = step + 1
        state, m, aux = trainer.step(state, step, jax.random.fold_in(root, step))
        done = step + 1
        bad = nonfinite(m)
        if bad and settings.on_nonfinite != "skip":
          # The step's update was not applied (the jitted steps keep the old state when the
          # loss or gradient is not finite) and nothing of it is written: the last checkpoint
          # stays the newest, and resuming repeats from there.
          raise NonFiniteError(
              f"Step {done} produced non-finite {', '.join(f'{k} = {m[k]}' for k in bad)}. "
              f"Nothing of it was saved; the last checkpoint ({ckpt.latest_step()}) is intact. "
              "Lower the learning rate, check the data and models, or set "
              "config.on_nonfinite='skip' to skip such batches.")
        m["train/skipped"] = float(bool(bad))
        final = done == settings.steps
        if (settings.eval_every and done % settings.eval_every == 0) or final:
          m.update(trainer.evaluate(state, aux))
        if done % settings.log_every == 0 or final:
          writer.write_scalars(done, m)
        saved_now = done % settings.checkpoint_every == 0 or final
        if saved_now:
          save(done)
        bar.update(1)
        bar.set_postfix(trainer.postfix(m))
        last = dict(step=done, metrics=m)
        done_here += 1
        if stop.requested() and not final:
          if not saved_now:
            if done % settings.log_every:
              writer.write_scalars(done, m)  # the resumed run starts after this row
            save(done)
          raise PreemptedError(
              f"Stopped on {stop.signal or 'another process'}'s request after step {done} "
              f"of {settings.steps}; its checkpoint is in {workdir}. Run the same command "
              "again to resume.")
        if stop_after is not None and done_here >= stop_after:
          break
  except OSError as e:  # a full disk, a read-only or vanished workdir, mid-run
    raise RunStateError(
        f"Writing to the workdir {workdir} failed at step {at} "
        f"({e.strerror or e}). The newest complete checkpoint, step {ckpt.latest_step()}, "
        "stays restorable (a half-written one is never restored). Free space or make the "
        "workdir writable, then run the same command to resume.") from e
  finally:
    bar.close()
    # Under an error the closing writes would only fail again and hide it.
    with contextlib.suppress(Exception) if _failing() else contextlib.nullcontext():
      ckpt.close()
      writer.close()
  if not last:  # the workdir's run had already reached its last step: report where it ended
    rows = metrics_lib.read_jsonl(Path(workdir) / "metrics.jsonl")
    if rows:
      last = dict(step=rows[-1]["step"], metrics=rows[-1])
  return dict(last, workdir=str(workdir))
