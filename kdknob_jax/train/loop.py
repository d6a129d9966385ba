"""The one run loop every trainer shares: resume from the workdir's latest checkpoint, then per
step the trainer's own work, evaluation, metrics and checkpoints on their cadences, a progress
bar, and `stop_after` for tests of resuming.

A trainer is what `Trainer` describes: the loop calls `step(state, step, key)` once per step
(the key is `fold_in(root, step)`, so a resumed run draws what an uninterrupted one does),
`evaluate` on the evaluation cadence, and `saved` to name what a checkpoint holds. Only the
trained tree, the optimizer state, the step and the root key are checkpointed; frozen weights
are reloaded from their source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

import jax
from tqdm.auto import tqdm

from kdknob_jax.runs import metrics as metrics_lib
from kdknob_jax.runs.checkpoints import RunCheckpoints
from kdknob_jax.train.settings import LoopSettings
from kdknob_jax.train.state import replicate


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


def resume(ckpt: RunCheckpoints, writer: metrics_lib.Writer, state, trainer: Trainer, seed: int,
           mesh, hparams: Mapping[str, object]):
  """(state, root key, first step): restored from the workdir's latest checkpoint (metrics
  past it dropped), or the initial state and a fresh key (hparams written)."""
  root = replicate(jax.random.PRNGKey(seed), mesh)
  if ckpt.latest_step() is None:
    writer.write_hparams(hparams)
    return state, root, 0
  restored, meta = ckpt.restore(dict(trainer.saved(state), rng=root))
  root = restored.pop("rng")
  start = int(meta["step"])
  writer.truncate_after(start)
  return state.replace(**restored), root, start


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
  last, done_here = {}, 0
  for step in range(start, settings.steps):
    state, m, aux = trainer.step(state, step, jax.random.fold_in(root, step))
    done = step + 1
    final = done == settings.steps
    if (settings.eval_every and done % settings.eval_every == 0) or final:
      m.update(trainer.evaluate(state, aux))
    if done % settings.log_every == 0 or final:
      writer.write_scalars(done, m)
    if done % settings.checkpoint_every == 0 or final:
      ckpt.save(done, dict(trainer.saved(state), rng=root),
                {"step": done, "data_position": done * settings.rows_per_step,
                 "seed": settings.seed})
    bar.update(1)
    bar.set_postfix(trainer.postfix(m))
    last = dict(step=done, metrics=m)
    done_here += 1
    if stop_after is not None and done_here >= stop_after:
      break
  bar.close()
  ckpt.close()
  writer.close()
  if not last:  # the workdir's run had already reached its last step: report where it ended
    rows = metrics_lib.read_jsonl(Path(workdir) / "metrics.jsonl")
    if rows:
      last = dict(step=rows[-1]["step"], metrics=rows[-1])
  return dict(last, workdir=str(workdir))
