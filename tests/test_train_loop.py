"""The run loop's guards, on a toy trainer (no model): a non-finite loss stops the run with
nothing of its step saved (or is skipped when asked), SIGTERM finishes the step, checkpoints it
and stops with PreemptedError, a rerun resumes and says so, one writer per workdir, a workdir
that is a file, and a metrics file cut short by a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdknob_jax.errors import NonFiniteError, PreemptedError, RunStateError
from kdknob_jax.runs.lock import WorkdirLock
from kdknob_jax.runs.metrics import read_jsonl
from kdknob_jax.train import loop
from kdknob_jax.train.settings import LoopSettings
from kdknob_jax.train.state import keep_if_finite


@flax.struct.dataclass
class _State:
  step: jax.Array
  w: jax.Array


class _Toy:
  """w ← w + 1 each step; the loss is w, or NaN at `nan_at`; SIGTERM to itself at `term_at`."""
  name = "toy"

  def __init__(self, nan_at=(), term_at=None):
    self.nan_at, self.term_at = set(nan_at), term_at

  def step(self, state, step, key):
    del key
    done = step + 1
    bad = done in self.nan_at
    new = _State(step=state.step + 1, w=state.w + 1.0)
    new = new.replace(w=keep_if_finite(new.w, state.w, jnp.float32(np.nan if bad else 0.0)))
    if done == self.term_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return new, {"train/loss": float("nan") if bad else float(new.w)}, None

  def evaluate(self, state, aux):
    return {}

  def saved(self, state):
    return {"step": state.step, "w": state.w}

  def postfix(self, m):
    return {}


def _run(trainer, workdir, steps=4, on_nonfinite="stop", stop_after=None):
  settings = LoopSettings(steps, 0, 1, 10, 1, 0, 1, on_nonfinite)
  state = _State(step=jnp.zeros((), jnp.int32), w=jnp.zeros((), jnp.float32))
  with loop.open_workdir(workdir, {"toy": 1}, 10) as ckpt:
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    from kdknob_jax.train.state import commit  # pylint: disable=g-import-not-at-top
    return loop.run(trainer, commit(state, mesh), ckpt, settings, workdir, mesh, {},
                    progress=False, stop_after=stop_after)


def test_keep_if_finite_selects_the_old_state_on_nan():
  new, old = {"a": jnp.ones(3)}, {"a": jnp.zeros(3)}
  assert float(keep_if_finite(new, old, jnp.float32(1.0))["a"].sum()) == 3.0
  assert float(keep_if_finite(new, old, jnp.float32(1.0), jnp.float32(np.inf))["a"].sum()) == 0


def test_a_nan_loss_stops_the_run_and_saves_nothing_of_its_step(tmp_path):
  with pytest.raises(NonFiniteError, match=r"Step 3 .*train/loss = nan.*checkpoint \(2\)"):
    _run(_Toy(nan_at=[3]), tmp_path)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1, 2]
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
  out = _run(_Toy(), tmp_path)  # the last good checkpoint restores and the run finishes
  assert out["step"] == 4 and out["metrics"]["train/loss"] == 4.0


def test_skip_mode_drops_the_update_and_counts_it(tmp_path):
  out = _run(_Toy(nan_at=[2]), tmp_path, on_nonfinite="skip")
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["train/skipped"] for r in rows] == [0.0, 1.0, 0.0, 0.0]
  assert out["metrics"]["train/loss"] == 3.0  # step 2's update was not applied


def test_sigterm_checkpoints_the_finished_step_and_a_rerun_resumes(tmp_path, capsys):
  with pytest.raises(PreemptedError, match="after step 2 of 4"):
    _run(_Toy(term_at=2), tmp_path)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1, 2]
  capsys.readouterr()
  out = _run(_Toy(), tmp_path)
  assert capsys.readouterr().out.splitlines()[0].startswith(f"resuming {tmp_path} from its "
                                                              "step-2 checkpoint")
  assert out["step"] == 4 and [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
      1, 2, 3, 4]


def test_one_writer_per_workdir_and_a_dead_holder_is_taken_over(tmp_path):
  with WorkdirLock(tmp_path):
    with pytest.raises(RunStateError, match=rf"in use by another run \(pid {os.getpid()} on"):
      WorkdirLock(tmp_path)
  code = textwrap.dedent(f"""
      import os, signal
      from kdknob_jax.runs.lock import WorkdirLock
      lock = WorkdirLock({str(tmp_path)!r})
      os.kill(os.getpid(), signal.SIGKILL)""")
  proc = subprocess.run([sys.executable, "-c", code], check=False, timeout=120)
  assert proc.returncode == -signal.SIGKILL
  with WorkdirLock(tmp_path):  # the killed holder's lock went with it
    pass


def test_a_workdir_that_is_a_file_is_named(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(RunStateError, match="is a file"):
    WorkdirLock(path)
  with pytest.raises(RunStateError, match="is a file"):
    WorkdirLock(path / "below")
  assert path.read_text() == "x"


def test_a_full_disk_mid_run_stops_with_the_last_checkpoint_restorable(tmp_path, monkeypatch):
  """ENOSPC while writing step 3's checkpoint (simulated: the tests run as root on a disk with
  room) stops the run with a RunStateError naming the workdir, the error and the newest
  complete checkpoint; with space again the same command resumes and finishes."""
  import errno  # pylint: disable=g-import-not-at-top
  from kdknob_jax.runs.checkpoints import RunCheckpoints  # pylint: disable=g-import-not-at-top
  real = RunCheckpoints.save

  def full_at_3(self, step, tree, meta):
    if step == 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(self, step, tree, meta)
  monkeypatch.setattr(RunCheckpoints, "save", full_at_3)
  with pytest.raises(RunStateError, match=rf"{tmp_path} failed at step 3 \(No space left "
                     r"on device\).*step 2, stays restorable.*resume"):
    _run(_Toy(), tmp_path)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1, 2]
  monkeypatch.setattr(RunCheckpoints, "save", real)
  out = _run(_Toy(), tmp_path)
  assert out["step"] == 4 and out["metrics"]["train/loss"] == 4.0


def test_a_workdir_that_cannot_be_written_is_named(tmp_path, monkeypatch):
  """A read-only or full file system at start (simulated through the lock's first write, since
  root ignores a read-only mode): RunStateError naming the workdir and the fix, nothing
  written."""
  import errno  # pylint: disable=g-import-not-at-top
  from kdknob_jax.runs import lock as lock_lib  # pylint: disable=g-import-not-at-top

  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
  monkeypatch.setattr(lock_lib.os, "open", read_only)
  with pytest.raises(RunStateError, match=r"Cannot write the workdir .*Read-only file system.*"
                     r"writable"):
    _run(_Toy(), tmp_path / "wd")
  monkeypatch.undo()
  assert not (tmp_path / "wd" / "checkpoints").exists()


def test_metrics_cut_short_by_a_kill_are_read_and_truncated(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 1, "a": 1.0}) + "\n" + '{"step": 2, "a"')
  assert read_jsonl(path) == [{"step": 1, "a": 1.0}]
  path.write_text('{"step": 1\n' + json.dumps({"step": 2}) + "\n")
  with pytest.raises(RunStateError, match="line 1 is not JSON"):
    read_jsonl(path)
