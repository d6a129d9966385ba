"""Plain-function math of the decoder: norms, MLP activations, masked grouped-query attention.

Modules in `kdknob_jax.models` only hold parameters and call these.
"""

from __future__ import annotations

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


def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, scale: float,
              softcap: float | None = None) -> jnp.ndarray:
  """Grouped-query attention.

  Args:
    q: queries [B, T, N, H].
    k: keys [B, S, K, H], with N a multiple of K.
    v: values [B, S, K, H].
    mask: [B, T, S] booleans from `attention_mask`.
    scale: multiplies the scores (HF applies it after q·k).
    softcap: if set, scores become softcap * tanh(scores / softcap).

  Returns:
    [B, T, N, H] in q's dtype. Scores and softmax are float32.
  """
  b, t, n, h = q.shape
  kv = k.shape[2]
  qg = q.reshape(b, t, kv, n // kv, h)
  scores = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    scores = softcap * jnp.tanh(scores / softcap)
  scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(b, t, n, h).astype(q.dtype)
