"""Metric writing (clu writers: console and TensorBoard, plus a JSONL file) and throughput.

Only process 0 writes; the others get a writer that drops everything, so a multi-host run
logs once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import jax

from kdknob_jax.errors import RunStateError
from kdknob_jax.runs.checkpoints import write_atomic

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets. Unknown devices report no
# MFU rather than a guess; `peak_flops` can be set in the config instead.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of a device from `PEAK_FLOPS`, or None when it is not listed."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def decoder_flops_per_token(params: int, layers: int, hidden: int, context: int,
                            backward: bool = False, weight_grads: bool = True) -> float:
  """Matmul FLOPs of one token through a decoder: 2·params forward plus attention
  (2·2·L·D·context), the backward twice the forward, or once it when no weight gradients
  are needed (a frozen base under LoRA computes input gradients only)."""
  forward = 2.0 * params + 4.0 * layers * hidden * context
  if not backward:
    return forward
  return forward * (3.0 if weight_grads else 2.0)


class Writer:
  """Scalars to clu's default writer (logging and TensorBoard under `logdir`) and to
  `logdir/metrics.jsonl`, from process 0 only."""

  def __init__(self, logdir: str | Path, console: bool = True):
    self.logdir = Path(logdir)
    self._on = jax.process_index() == 0
    self._clu = None
    self._jsonl = None
    if self._on:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self.logdir.mkdir(parents=True, exist_ok=True)
      if console:
        self._clu = metric_writers.create_default_writer(
            str(self.logdir), just_logging=False, asynchronous=False)
      else:  # TensorBoard only: a progress bar shows the headline numbers instead
        self._clu = metric_writers.SummaryWriter(str(self.logdir))
      self._jsonl = (self.logdir / "metrics.jsonl").open("a", encoding="utf-8")

  def truncate_after(self, step: int) -> None:
    """Drops JSONL rows of steps after `step` (a resumed run repeats them)."""
    if not self._on:
      return
    self._jsonl.close()
    path = self.logdir / "metrics.jsonl"
    kept = [r for r in read_jsonl(path) if r["step"] <= step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    self._jsonl = path.open("a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._on:
      return
    clean = {k: float(v) for k, v in scalars.items() if v is not None}
    self._clu.write_scalars(step, clean)
    row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    if self._on:
      self._clu.write_hparams({k: v for k, v in hparams.items()
                               if isinstance(v, (int, float, str, bool))})

  def close(self) -> None:
    if self._on:
      self._clu.flush()
      self._clu.close()
      self._jsonl.close()


def read_jsonl(path: str | Path) -> list[dict]:
  """The rows of a `metrics.jsonl` (for tests, plots and resume checks). A last line cut short
  (the process was killed while writing it) is dropped; a bad line elsewhere is an error.

  Raises:
    RunStateError: a line other than the last is not JSON.
  """
  path = Path(path)
  if not path.exists():
    return []
  lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
           if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise RunStateError(f"{path} line {i + 1} is not JSON ({e}). Delete that line (the "
                          "metrics of one step), or the file, to go on.") from e
  return rows
