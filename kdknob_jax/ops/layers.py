"""Plain-function math of the decoder: norms, MLP activations and projections with an
applied (never merged) low-rank adapter. Attention lives in `kdknob_jax.ops.attention`.

Modules in `kdknob_jax.models` only hold parameters and call these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdknob_jax.ops.low_rank import adapter_term


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


def projection(eq: str, x: jnp.ndarray, w: jnp.ndarray,
               adapter: tuple[jnp.ndarray, jnp.ndarray] | None = None,
               scale: float = 1.0) -> jnp.ndarray:
  """x·W, plus scale·(x·A)·B when an adapter is given, rounded once to x's dtype.

  Both products accumulate in float32 and the adapter's term is added to the float32 sum
  before the single rounding. Merging the adapter into a bfloat16 W instead would round most
  of a small update away (W's ulp is far above lr-sized changes), and adding it to an already
  rounded output loses as much; here a bfloat16 step moves the output as a float32 step does.
  No weight-sized copy is made, and the backward pass computes the adapter's and x's
  gradients only.

  Args:
    eq: the einsum of x and W, e.g. "btd,dnh->btnh"; W's letters that x lacks are its outputs.
    x: activations.
    w: the frozen weight, input dims first.
    adapter: (A [in..., r], B [r, out...]) or None.
    scale: α / r.

  Returns:
    The projection in x's dtype.
  """
  y = jnp.einsum(eq, x, w, preferred_element_type=jnp.float32)
  if adapter is not None:
    # The rank-r intermediate x·A is rounded to x's dtype: its relative error (2^-9 in bf16) is
    # that of the adapter's term alone, not of W's output.
    y = y + scale * adapter_term(eq, x, *adapter)
  return y.astype(x.dtype)
