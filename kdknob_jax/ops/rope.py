"""Rotary position embeddings: inverse-frequency tables and their application.

The tables are computed in float32 numpy with the same formulas as transformers'
`modeling_rope_utils` (default, linear, llama3, yarn), so that positions rotate identically.
Rotation uses the half-split ("rotate_half") layout of HF checkpoints, not interleaved pairs.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """One RoPE table: base frequency and an optional scaling scheme (HF `rope_type`)."""
  theta: float
  kind: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 0
  attention_factor: float | None = None
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  truncate: bool = True


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
  """Returns (inv_freq [H/2] float32, attention scaling of cos/sin) for one RoPE table."""
  dim = head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  pos_freqs = np.float32(rope.theta) ** exponents
  inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
  if rope.kind == "default":
    return inv_freq, 1.0
  if rope.kind == "linear":
    return (inv_freq / np.float32(rope.factor)).astype(np.float32), 1.0
  if rope.kind == "llama3":
    return _llama3(inv_freq, rope), 1.0
  if rope.kind == "yarn":
    return _yarn(pos_freqs, rope, dim)
  raise ValueError(f"unknown rope kind {rope.kind!r}")


def _llama3(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
  # Frequencies whose wavelength exceeds the original context are slowed by `factor`, short
  # ones kept, and the band between blended smoothly (Llama-3.1's long-context recipe).
  old_len = rope.original_max_position
  low_wavelen = old_len / rope.low_freq_factor
  high_wavelen = old_len / rope.high_freq_factor
  wavelen = (2 * math.pi / inv_freq).astype(np.float32)
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(rope.factor), inv_freq)
  smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
  smoothed = (1 - smooth) * scaled / np.float32(rope.factor) + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(pos_freqs: np.ndarray, rope: RopeConfig, dim: int) -> tuple[np.ndarray, float]:
  factor = rope.factor

  def mscale(scale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0

  attention = rope.attention_factor if rope.attention_factor is not None else mscale(factor)

  def correction_dim(rotations: float) -> float:
    return (dim * math.log(rope.original_max_position / (rotations * 2 * math.pi))) / (
        2 * math.log(rope.theta))

  low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
  if rope.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoid a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation = (1 - ramp).astype(np.float32)
  inv_extra = np.float32(1.0) / pos_freqs
  inv_inter = np.float32(1.0) / (np.float32(factor) * pos_freqs)
  inv_freq = inv_inter * (1 - extrapolation) + inv_extra * extrapolation
  return inv_freq.astype(np.float32), float(attention)


def rope_tables(positions: jnp.ndarray, rope: RopeConfig, head_dim: int,
                dtype: jnp.dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos and sin [B, T, H] for integer positions [B, T], cast to the activation dtype."""
  inv_freq, scaling = inverse_frequencies(rope, head_dim)
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return ((jnp.cos(angles) * scaling).astype(dtype), (jnp.sin(angles) * scaling).astype(dtype))


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotates x [B, T, N, H] by tables [B, T, H] (half-split layout)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
