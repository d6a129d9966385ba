"""The LM head as plain functions: its layout (`HeadSpec`), float32 logits with the final
softcap, and the row chunking every head-sized computation uses (scoring, the losses, the fused
divergence), so that no [N, V] logits of all rows are held at once.

Shapes: C rows of a chunk, D hidden, V vocabulary (`c d v` in einsum letters).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Rows per chunk. Each chunk reads and writes the [D, V] float32 gradient accumulator of the
# head once, against the student's 6·C·D·V flops of matmuls (logits, and the gradients of the
# hidden states and the head): C alone sets how well that traffic is amortized, whatever V. On CPU a fixed 256 rows met both goals of `bench kl` (time ≤ 1.2x
# plain, working memory ≤ 0.2x) at V = 151,936 and 262,144 on a Zen 4 EPYC, where the former
# rule of 2**24 logits (104 and 64 rows) took 1.45x plain at V = 151,936 (README). GPUs want
# bigger chunks to fill their matmuls: 2**26 logits (256 rows at a 262k vocabulary; 64 rows
# took 3.4x the plain time in bf16 on an H100).
_CPU_ROWS = 256
_CHUNK_ELEMENTS_ACCELERATOR = 2**26


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """How a model turns final hidden states into logits.

  Attributes:
    tied: the weight is the embedding [V, D] rather than an LM head [D, V].
    softcap: Gemma-2-style final logit soft-capping, cap·tanh(z / cap), or None.
  """
  tied: bool = False
  softcap: float | None = None

  def vocab(self, weight: Array) -> int:
    """V of a head weight in this layout."""
    return weight.shape[0] if self.tied else weight.shape[1]


def head_matmul(h: Array, weight: Array, spec: HeadSpec) -> Array:
  """Float32 pre-softcap logits [..., V] of hidden states [..., D]."""
  eq = "...d,vd->...v" if spec.tied else "...d,dv->...v"
  return jnp.einsum(eq, h, weight, preferred_element_type=jnp.float32)


def softcap(z: Array, spec: HeadSpec) -> Array:
  """The final-logit softcap of the spec, cap·tanh(z / cap), or z unchanged."""
  return z if spec.softcap is None else spec.softcap * jnp.tanh(z / spec.softcap)


def raw_logits(h: Array, weight: Array, spec: HeadSpec) -> Array:
  """Float32 pre-softcap logits [C, V] of hidden rows h [C, D]; rows stay sharded like the
  batch and the vocabulary like the head."""
  return nn.with_logical_constraint(head_matmul(h, weight, spec), ("batch", "vocab"))


def head_logits(h: Array, weight: Array, spec: HeadSpec) -> Array:
  """Float32 logits [C, V] of hidden rows h [C, D], softcap included."""
  return softcap(raw_logits(h, weight, spec), spec)


def auto_chunk(n: int, vocab: int, backend: str | None = None) -> int:
  """Rows per chunk: at most 256 on CPU, about 2**26 logits on accelerators; a multiple of 8,
  at least 8. The n rows are split into as few chunks as that bound allows, and evenly, so
  padding stays under 8 rows a chunk (a fixed size would pad 257 rows to 512).
  `backend` defaults to JAX's default backend."""
  if (backend or jax.default_backend()) == "cpu":
    most = _CPU_ROWS
  else:
    most = max(8, (_CHUNK_ELEMENTS_ACCELERATOR // max(vocab, 1)) // 8 * 8)
  chunks = max(1, -(-n // most))
  per_chunk = -(-n // chunks)
  return -(-per_chunk // 8) * 8


def chunk_rows(x: Array, c: int) -> Array:
  """[N, ...] → [N/C, C, ...], zero-padding N up to a multiple of C.

  Chunk j holds rows j, j + N/C, j + 2N/C, ...: strided, so that every chunk takes rows from
  every batch shard and data-parallel devices each compute their own part of every chunk (a
  contiguous split would put whole chunks on one shard, to be gathered for the scan).
  `unchunk_rows` undoes it.
  """
  pad = (-x.shape[0]) % c
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return jnp.swapaxes(x.reshape((c, -1) + x.shape[1:]), 0, 1)


def unchunk_rows(x: Array, n: int) -> Array:
  """[N/C, C, ...] from `chunk_rows` → the first n rows [n, ...] in their original order."""
  return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])[:n]
