"""Plain-function math of the decoder: norms, MLP activations, masked grouped-query attention.

Modules in `kdknob_jax.models` only hold parameters and call these.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# A finite "minus infinity": fully masked rows (padding queries) then give a uniform softmax
# instead of NaNs that would poison gradients through jnp.where.
_MASKED = -1e30


def rms_norm(x: jnp.ndarray, scale: jnp.ndarray, eps: float, gemma: bool) -> jnp.ndarray:
  """RMSNorm over the last axis.

  Args:
    x: activations [..., D].
    scale: weight [D].
    eps: added to the mean square.
    gemma: Gemma's convention, (1 + w) applied in float32 before casting back; otherwise the
      Llama/Qwen convention, normalize in float32, cast to x's dtype, then multiply by w.
  """
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  if gemma:
    return (xf * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
  return scale * xf.astype(x.dtype)


def mlp_activation(x: jnp.ndarray, gemma: bool) -> jnp.ndarray:
  """gelu with tanh approximation (Gemma) or SiLU (Llama, Qwen3), computed in float32 and rounded
  once to x's dtype, as PyTorch's fused kernels do (bf16 op-by-op would round twice)."""
  xf = x.astype(jnp.float32)
  return (jax.nn.gelu(xf, approximate=True) if gemma else jax.nn.silu(xf)).astype(x.dtype)


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


def attention(q: jnp.ndarray, blocks: Sequence[tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]],
              scale: float, softcap: float | None = None) -> jnp.ndarray:
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

  Returns:
    [B, T, N, H] in q's dtype. Scores and softmax are float32.
  """
  b, t, n, h = q.shape
  kv = blocks[0][0].shape[1]
  g = n // kv
  # Rows m = (t, g) of each KV head: both dots are then plain batched matmuls over (b, k) with
  # operands in their stored layout, which XLA runs without transposing the cache.
  q_bkmh = q.reshape(b, t, kv, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kv, t * g, h)
  batch_dims = ((0, 1), (0, 1))
  scores = []
  for k, _, mask in blocks:
    s = jax.lax.dot_general(q_bkmh, k, (((3,), (3,)), batch_dims),
                            preferred_element_type=jnp.float32) * scale  # [b, k, m, s]
    if softcap is not None:
      s = softcap * jnp.tanh(s / softcap)
    mask_bms = jnp.broadcast_to(mask[:, :, None, :], (b, t, g, mask.shape[-1]))
    scores.append(jnp.where(mask_bms.reshape(b, 1, t * g, -1), s, _MASKED))
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  out = 0.0
  start = 0
  for k, v, _ in blocks:
    p = probs[..., start:start + k.shape[2]].astype(v.dtype)
    start += k.shape[2]
    out = out + jax.lax.dot_general(p, v, (((3,), (2,)), batch_dims),
                                    preferred_element_type=jnp.float32)  # [b, k, m, h]
  out = out.reshape(b, kv, t, g, h).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, t, n, h).astype(q.dtype)
