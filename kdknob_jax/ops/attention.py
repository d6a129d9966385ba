"""Masked grouped-query attention as plain functions, in three exact forms.

- dense: one [B, K, T·G, S] float32 score block per key block; a decode step (T = 1) and short
  prompts use it.
- chunked: the same math over chunks of queries under `jax.checkpoint`, so neither the forward
  nor the backward pass holds more than one chunk's scores (a long completion's [T, S] float32
  scores and probabilities were the largest thing a training step saved). Each query's softmax
  still sees every key at once, so the result equals the dense form's.
- fused: `jax.nn.dot_product_attention` (cuDNN's flash attention on GPU) over the
  concatenated key blocks with the boolean mask; chosen on GPU for bfloat16 without a logit
  softcap.

Einsum letters: B batch, T queries, S keys, N query heads, K key/value heads, G = N / K, H head
dim.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# A finite "minus infinity": fully masked rows (padding queries) then give a uniform softmax
# instead of NaNs that would poison gradients through jnp.where.
_MASKED = -1e30

IMPLEMENTATIONS = ("auto", "dense", "chunked", "cudnn", "xla_fused")
QUERY_CHUNK = 128

Block = tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]


def attention_mask(q_pos: jnp.ndarray, k_pos: jnp.ndarray,
                   window: jnp.ndarray | int | None) -> jnp.ndarray:
  """Boolean [B, T, S]: key s is visible to query t.

  Positions are absolute token positions; a negative position marks padding or an empty cache
  slot. Causality and the sliding window are decided on positions, not on slot indices, so
  padding anywhere in the batch and cache layout do not change results.

  Args:
    q_pos: [B, T] query positions.
    k_pos: [B, S] key positions.
    window: keys with q_pos - k_pos >= window are hidden (HF's sliding-window convention);
      None or a value above every distance for global attention.
  """
  q = q_pos[:, :, None]
  k = k_pos[:, None, :]
  visible = (k >= 0) & (k <= q)
  if window is not None:
    visible = visible & (q - k < window)
  return visible


_BATCH = ((0, 1), (0, 1))


def _scores(q_bkmh: jnp.ndarray, k: jnp.ndarray, keys_transposed: bool, scale: float,
            softcap: float | None) -> jnp.ndarray:
  """Float32 scores [b, k, m, s] of queries [b, k, m, h] against keys [b, k, s, h] (or
  [b, k, h, s] when transposed), scaled and softcapped."""
  contract = 2 if keys_transposed else 3
  s = jax.lax.dot_general(q_bkmh, k, (((3,), (contract,)), _BATCH),
                          preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  return s


def _masked(s: jnp.ndarray, mask: jnp.ndarray, g: int) -> jnp.ndarray:
  """Scores [b, k, t·g, s] with the keys `mask` [b, t, s] hides set to a finite minus infinity."""
  b, t, length = mask.shape
  mask_bms = jnp.broadcast_to(mask[:, :, None, :], (b, t, g, length)).reshape(b, 1, t * g, length)
  return jnp.where(mask_bms, s, _MASKED)


def dense_attention(q: jnp.ndarray, blocks: Sequence[Block], scale: float,
                    softcap: float | None = None, keys_transposed: bool = False) -> jnp.ndarray:
  """Grouped-query attention over one or more blocks of keys, with one joint softmax.

  A decode step attends to the KV cache and to its own new keys as two blocks, so the cache is
  only read (never copied to append the new keys); the result equals attention over the
  concatenated keys.

  Args:
    q: queries [B, T, N, H].
    blocks: (k [B, K, S, H], v [B, K, S, H], mask [B, T, S]) triples, S may differ per block;
      N is a multiple of K; masks come from `attention_mask`.
    scale: multiplies the scores (HF applies it after q.k).
    softcap: if set, scores become softcap * tanh(scores / softcap).
    keys_transposed: keys are stored [B, K, H, S] (a decode loop's per-layer cache). XLA:CPU
      runs the score dot about 6x faster on that layout than on [B, K, S, H] at decode shapes
      (one query per row: the dot is a batch of tiny matrix-vector products).

  Returns:
    [B, T, N, H] in q's dtype. Scores and softmax are float32.
  """
  b, t, n, h = q.shape
  kv = blocks[0][0].shape[1]
  g = n // kv
  # Rows m = (t, g) of each KV head: both dots are then plain batched matmuls over (b, k) with
  # operands in their stored layout, which XLA runs without transposing the cache.
  q_bkmh = q.reshape(b, t, kv, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kv, t * g, h)
  scores = [_masked(_scores(q_bkmh, k, keys_transposed, scale, softcap), mask, g)
            for k, _, mask in blocks]
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  out = 0.0
  start = 0
  for _, v, _ in blocks:
    p = probs[..., start:start + v.shape[2]].astype(v.dtype)
    start += v.shape[2]
    out = out + jax.lax.dot_general(p, v, (((3,), (2,)), _BATCH),
                                    preferred_element_type=jnp.float32)  # [b, k, m, h]
  out = out.reshape(b, kv, t, g, h).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, t, n, h).astype(q.dtype)


def shared_prefix_attention(q: jnp.ndarray, prefix: Block, own: Block, scale: float,
                            softcap: float | None = None) -> jnp.ndarray:
  """Attention of R = B·n rows over a prefix block shared by each n consecutive rows (the n
  samples of one prompt) and the rows' own block, with one joint softmax; keys of both blocks
  are stored transposed, [.., K, H, S].

  Equal to `dense_attention` over the prefix repeated n times and the own block, but the
  prefix is read once per prompt, not once per row, and its dots have n times the query rows.

  Args:
    q: queries [R, T, N, H], rows prompt-major (row r continues prefix r // n).
    prefix: (kt [B, K, H, P], v [B, K, P, H], mask [R, T, P]).
    own: (kt [R, K, H, S], v [R, K, S, H], mask [R, T, S]).
    scale, softcap: as `dense_attention`.

  Returns:
    [R, T, N, H] in q's dtype.
  """
  r, t, nh, h = q.shape
  (pre_k, pre_v, pre_mask), (own_k, own_v, own_mask) = prefix, own
  b, kv, _, p = pre_k.shape
  n, g, m = r // b, nh // kv, t * nh // kv
  q_rkmh = q.reshape(r, t, kv, g, h).transpose(0, 2, 1, 3, 4).reshape(r, kv, m, h)

  def to_prompts(x):  # [R, K, M, X] -> [B, K, n·M, X]
    return x.reshape(b, n, kv, m, -1).transpose(0, 2, 1, 3, 4).reshape(b, kv, n * m, -1)

  def to_rows(x):  # [B, K, n·M, X] -> [R, K, M, X]
    return x.reshape(b, kv, n, m, -1).transpose(0, 2, 1, 3, 4).reshape(r, kv, m, -1)

  pre_s = to_rows(_scores(to_prompts(q_rkmh), pre_k, True, scale, softcap))
  own_s = _scores(q_rkmh, own_k, True, scale, softcap)
  probs = jax.nn.softmax(jnp.concatenate(
      [_masked(pre_s, pre_mask, g), _masked(own_s, own_mask, g)], axis=-1), axis=-1)
  pre_o = jax.lax.dot_general(to_prompts(probs[..., :p].astype(pre_v.dtype)), pre_v,
                              (((3,), (2,)), _BATCH), preferred_element_type=jnp.float32)
  out = to_rows(pre_o) + jax.lax.dot_general(probs[..., p:].astype(own_v.dtype), own_v,
                                             (((3,), (2,)), _BATCH),
                                             preferred_element_type=jnp.float32)
  out = out.reshape(r, kv, t, g, h).transpose(0, 2, 1, 3, 4)
  return out.reshape(r, t, nh, h).astype(q.dtype)


def chunked_attention(q: jnp.ndarray, blocks: Sequence[Block], scale: float,
                      softcap: float | None = None, chunk: int = QUERY_CHUNK) -> jnp.ndarray:
  """`dense_attention` over chunks of at most `chunk` queries, each rematerialized in the backward
  pass: the working set is one chunk's [B, K, chunk·G, S] scores. Same arguments and result
  as `dense_attention`."""
  b, t, n, h = q.shape
  chunks = -(-t // chunk)
  chunk = -(-t // chunks)  # as few chunks as `chunk` allows, evened: 136 → 2 × 68, not 2 × 128
  pad = chunks * chunk - t
  # Padded queries see no key (mask False) and are cut off at the end.
  q_c = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, chunks, chunk, n, h)
  masks = [jnp.pad(m, ((0, 0), (0, pad), (0, 0))).reshape(b, chunks, chunk, m.shape[-1])
           for _, _, m in blocks]
  keys = [(k, v) for k, v, _ in blocks]

  @jax.checkpoint
  def one(xs):
    q_i, masks_i = xs
    return dense_attention(q_i, [(k, v, m) for (k, v), m in zip(keys, masks_i)], scale,
                           softcap)

  out = jax.lax.map(one, (jnp.swapaxes(q_c, 0, 1), [jnp.swapaxes(m, 0, 1) for m in masks]))
  return jnp.swapaxes(out, 0, 1).reshape(b, chunks * chunk, n, h)[:, :t]


def fused_attention(q: jnp.ndarray, blocks: Sequence[Block], scale: float,
                    implementation: str | None = "cudnn") -> jnp.ndarray:
  """`jax.nn.dot_product_attention` over the concatenated blocks (no logit softcap).

  Args:
    q, blocks, scale: as `dense_attention`.
    implementation: "cudnn" (GPU flash attention) or "xla" (its reference form, any backend).
  """
  k = jnp.swapaxes(jnp.concatenate([k for k, _, _ in blocks], axis=2), 1, 2)  # [B, S, K, H]
  v = jnp.swapaxes(jnp.concatenate([v for _, v, _ in blocks], axis=2), 1, 2)
  mask = jnp.concatenate([m for _, _, m in blocks], axis=-1)[:, None]  # [B, 1, T, S]
  out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                     scale=scale, implementation=implementation)
  return out.astype(q.dtype)


def resolve(impl: str, q: jnp.ndarray, softcap: float | None, chunk: int) -> str:
  """The form `attention` runs for `impl` on these queries ("auto" decides by backend, dtype
  and length)."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {impl!r} is not one of {IMPLEMENTATIONS}.")
  if impl != "auto":
    return impl
  if q.shape[1] <= chunk:
    return "dense"
  if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
      and softcap is None and q.shape[-1] <= 128):
    return "cudnn"
  return "chunked"


def attention(q: jnp.ndarray, blocks: Sequence[Block], scale: float,
              softcap: float | None = None, impl: str = "auto",
              chunk: int = QUERY_CHUNK) -> jnp.ndarray:
  """Grouped-query attention in the form `impl` names (see the module docstring); every form
  takes and returns what `dense_attention` does."""
  form = resolve(impl, q, softcap, chunk)
  if form == "dense":
    return dense_attention(q, blocks, scale, softcap)
  if form == "chunked":
    return chunked_attention(q, blocks, scale, softcap, chunk)
  if softcap is not None:
    raise ValueError("The fused attention has no logit softcap; use 'chunked' or 'dense'.")
  return fused_attention(q, blocks, scale, "cudnn" if form == "cudnn" else "xla")
