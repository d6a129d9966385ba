"""Tensor sources: HF safetensors checkpoints (single file or sharded index) and GGUF files.

Safetensors are read with the numpy API (never torch, never pickle); each tensor is read from
disk only when asked for, so a sharded placement reads per layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kdknob_jax.errors import CheckpointMismatchError, ModelNotFoundError
from kdknob_jax.hf import gguf_file


class SafetensorsSource:
  """The tensors of an HF checkpoint directory (`model.safetensors` or an index of shards)."""

  def __init__(self, directory: str | os.PathLike):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    self.directory = Path(directory)
    index = self.directory / "model.safetensors.index.json"
    single = self.directory / "model.safetensors"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    elif single.exists():
      files = ["model.safetensors"]
      weight_map = None
    else:
      found = sorted(p.name for p in self.directory.iterdir())
      hint = (" Only PyTorch .bin/.pt weights are present: convert them to safetensors "
              "(pickle files are never loaded)." if any(f.endswith((".bin", ".pt")) for f in found)
              else "")
      raise ModelNotFoundError(f"{self.directory} has no model.safetensors or "
                               f"model.safetensors.index.json (files: {found[:10]}).{hint}")
    self._handles = {}
    self._where: dict[str, str] = {}
    for f in files:
      path = self.directory / f
      if not path.exists():
        raise ModelNotFoundError(f"Shard {path} listed in the index is missing; download it.")
      try:
        handle = safe_open(str(path), framework="numpy")
      except Exception as e:  # safetensors raises its own SafetensorError for a bad file
        raise CheckpointMismatchError(
            f"{path} ({path.stat().st_size} bytes) cannot be read as safetensors ({e}): it is "
            "damaged or truncated. Download or export it again.") from e
      self._handles[f] = handle
      for name in handle.keys():
        self._where[name] = f
    if weight_map is not None:
      absent = [n for n, f in weight_map.items() if self._where.get(n) != f]
      if absent:
        raise CheckpointMismatchError(f"Index lists tensors not found in their shard: {absent[:5]}")

  def names(self) -> set[str]:
    return set(self._where)

  def get(self, name: str) -> np.ndarray:
    arr = self._handles[self._where[name]].get_tensor(name)
    # bfloat16 arrives as ml_dtypes.bfloat16; compute transforms in float32 for exact casts.
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)


class GGUFSource:
  """The tensors of a GGUF file, dequantized once to float32 under HF names."""

  def __init__(self, g: gguf_file.GGUFFile, config: dict):
    self._tensors = gguf_file.read_tensors(g, config)

  def names(self) -> set[str]:
    return set(self._tensors)

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name]
