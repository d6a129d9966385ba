"""Run checkpoints in a workdir, through Orbax: a pytree of arrays plus JSON metadata.

A run's identity (the config keys that must not change across a resume) is written once to
`run.json`; a later start with a different identity is refused before anything is written,
so the old run's checkpoints stay valid. Orbax writes each step to a temporary directory and
renames it when complete, so a process killed mid-save leaves the previous steps intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax

from kdknob_jax.errors import RunStateError

_IDENTITY_FILE = "run.json"
DISTILL_KIND = "distill"  # run.json's "run_kind" of a distillation; calibrations have none


def _describe(diff: Mapping[str, tuple[Any, Any]]) -> str:
  return "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diff.items())


# Settings added to run identities after workdirs with them absent were written, each with the
# value that reproduces how those runs behaved: an older run.json reads as if it held them, so
# its checkpoints resume (a run that sets another value is still refused).
ADDED_SETTINGS = {("optimizer", "schedule"): "constant", ("loss_temperature",): "model",
                  ("filter_correct",): False}


def with_added_settings(saved: dict) -> dict:
  """A saved identity with every absent `ADDED_SETTINGS` key at its old behavior's value."""
  out = json.loads(json.dumps(saved))
  for path, value in ADDED_SETTINGS.items():
    node = out
    for key in path[:-1]:
      node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and path[-1] not in node:
      node[path[-1]] = value
  return out


def identity_diff(saved: dict, identity: dict) -> dict:
  """{key: (saved, wanted)} of every setting of `identity` that the saved identity (a run.json,
  read with `ADDED_SETTINGS`) holds otherwise; {} when the run is this config's."""
  saved = with_added_settings(saved)
  wanted = json.loads(json.dumps(dict(identity)))  # tuples compare as the lists JSON holds
  return {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}


class RunCheckpoints:
  """The checkpoints of one run directory.

  Args:
    directory: the workdir; checkpoints go to `directory/checkpoints/<step>`.
    identity: JSON-able settings that define the run (model, adapter, data, seed...).
    keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str | Path, identity: Mapping[str, Any], keep: int = 3):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.directory = Path(directory).absolute()
    self.identity = json.loads(json.dumps(dict(identity)))  # normalize tuples to lists
    if keep < 1:
      raise RunStateError(f"keep_checkpoints must be >= 1, got {keep}.")
    self._check_identity()
    self._manager = ocp.CheckpointManager(
        self.directory / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def _check_identity(self) -> None:
    path = self.directory / _IDENTITY_FILE
    if not path.exists():
      if jax.process_index() == 0:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.identity, indent=1, sort_keys=True))
      return
    try:
      saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise RunStateError(f"{path} is not valid JSON ({e}); it records which run this workdir "
                          "holds. Restore it, or start the run in a new --workdir.") from e
    diff = identity_diff(saved, self.identity)
    if diff:
      raise RunStateError(
          f"The workdir {self.directory} holds a run with other settings ({_describe(diff)}). "
          "Its checkpoints were left untouched. Resume it with its own settings, or pass a new "
          "--workdir for this config.")

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def restore(self, abstract: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores (tree, metadata) of `step` (default: the latest) onto `abstract`'s shardings.

    Raises:
      RunStateError: the checkpoint is unreadable or its arrays do not fit `abstract`.
    """
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    where = self.directory / "checkpoints" / str(step)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for a damaged or foreign directory
      raise RunStateError(
          f"The checkpoint {where} cannot be restored ({type(e).__name__}: {str(e)[:300]}). It "
          "was left in place. If it is damaged, move that step directory aside to resume from "
          "the previous checkpoint, or start in a new --workdir.") from e
    return out["state"], dict(out["meta"])

  def save(self, step: int, tree: Any, meta: Mapping[str, Any]) -> None:
    """Saves (tree, metadata) as `step` (asynchronously; `wait` or `close` to finish)."""
    ocp = self._ocp
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(dict(meta))))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def write_atomic(path: Path, text: str) -> None:
  """Writes `text` to a temporary file, then renames it over `path`: a process killed
  mid-write leaves the old file or none, never a half-written one."""
  tmp = path.with_name(path.name + ".tmp")
  with tmp.open("w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_identity(directory: str | Path) -> dict:
  """The identity a workdir's run was started with (for export and tools).

  Raises:
    RunStateError: the directory holds no run.
  """
  path = Path(directory) / _IDENTITY_FILE
  if not path.exists():
    raise RunStateError(f"{directory} holds no calibration run (no {_IDENTITY_FILE}); pass the "
                        "--workdir a `python -m kdknob_jax.calibrate` run wrote.")
  return json.loads(path.read_text())
