"""The token-level divergence computed from hidden states and LM heads, chunk by chunk.

A distillation loss over N = B·T tokens and a vocabulary V needs the logits of two models,
2·N·V float32 values (2.5 GB each for 2,048 tokens of a 151,936-entry vocabulary), and plain
autodiff keeps several such arrays alive for the backward pass. Here the tokens are cut into
chunks of C rows; each chunk's logits [C, V] live only inside one step of a `lax.scan`.

Under differentiation the custom VJP computes the student's gradients in the same forward scan
(the logits are at hand there), so the backward pass is a scaling by the incoming cotangent:
the matmul count equals plain autodiff's and no logits are recomputed. The teacher is a frozen
reference: its hidden states and head get zero gradients (the public function stop-gradients
them, so that is also what autodiff of the plain form gives).

Under a mesh the chunk logits carry the logical axes ("batch", "vocab"): a vocabulary sharded
over "tensor" stays sharded (log-softmax reductions become all-reduces of [C] rows), and since
chunks are strided over the tokens, each data-parallel device computes only its own rows.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdknob_jax.ops.head import (HeadSpec, auto_chunk, chunk_rows, head_logits, raw_logits, softcap,
                                 unchunk_rows)
from kdknob_jax.ops.kl import divergence_from_logp, log_probs

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Spec:
  kind: str
  coef: float
  temperature: float
  student: HeadSpec
  teacher: HeadSpec
  chunk: int


def _values_from_raw(spec: _Spec, zs_raw: Array, zt: Array) -> Array:
  ls = log_probs(softcap(zs_raw, spec.student), spec.temperature)
  lt = log_probs(zt, spec.temperature)
  return divergence_from_logp(ls, lt, spec.kind, spec.coef)


def _value_scan(spec: _Spec, hs, ws, ht, wt, w):
  def body(total, xs):
    hs_c, ht_c, w_c = xs
    v = _values_from_raw(spec, raw_logits(hs_c, ws, spec.student),
                         head_logits(ht_c, wt, spec.teacher))
    return total + jnp.sum(v * w_c), v

  xs = (chunk_rows(hs, spec.chunk), chunk_rows(ht, spec.chunk), chunk_rows(w, spec.chunk))
  total, per_token = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
  return total, unchunk_rows(per_token, hs.shape[0])


def _grad_scan(spec: _Spec, hs, ws, ht, wt, w):
  """Value, per-token values and d(value)/d(hs), d(value)/d(ws), in one pass over chunks."""
  tied = spec.student.tied
  dw_axes = ("vocab", "embed") if tied else ("embed", "vocab")
  h_eq, w_eq = ("cv,vd->cd", "cv,cd->vd") if tied else ("cv,dv->cd", "cv,cd->dv")

  def body(carry, xs):
    total, dws = carry
    hs_c, ht_c, w_c = xs
    zt = head_logits(ht_c, wt, spec.teacher)
    zs = raw_logits(hs_c, ws, spec.student)
    part, vjp, v = jax.vjp(lambda z: _weighted(spec, z, zt, w_c), zs, has_aux=True)
    (dz,) = vjp(jnp.ones((), jnp.float32))
    # The two matmuls plain autodiff would do, in the weights' dtype with float32 sums.
    dz = dz.astype(ws.dtype)
    dh = jnp.einsum(h_eq, dz, ws, preferred_element_type=jnp.float32).astype(hs.dtype)
    dws = dws + jnp.einsum(w_eq, dz, hs_c, preferred_element_type=jnp.float32)
    dws = nn.with_logical_constraint(dws, dw_axes)
    return (total + part, dws), (v, dh)

  init = (jnp.zeros((), jnp.float32), jnp.zeros(ws.shape, jnp.float32))
  xs = (chunk_rows(hs, spec.chunk), chunk_rows(ht, spec.chunk), chunk_rows(w, spec.chunk))
  (total, dws), (per_token, dhs) = jax.lax.scan(body, init, xs)
  n = hs.shape[0]
  return total, unchunk_rows(per_token, n), unchunk_rows(dhs, n), dws


def _weighted(spec: _Spec, zs_raw: Array, zt: Array, w_c: Array):
  v = _values_from_raw(spec, zs_raw, zt)
  return jnp.sum(v * w_c), v


@functools.lru_cache(maxsize=None)
def _fused_fn(spec: _Spec):
  """The custom-VJP function of one static configuration (cached so jit sees one function)."""

  @jax.custom_vjp
  def fused(hs, ws, ht, wt, w):
    return _value_scan(spec, hs, ws, ht, wt, w)[0]

  def fwd(hs, ws, ht, wt, w):
    total, per_token, dhs, dws = _grad_scan(spec, hs, ws, ht, wt, w)
    return total, (per_token, dhs, dws.astype(ws.dtype), ht, wt)

  def bwd(res, g):
    per_token, dhs, dws, ht, wt = res
    return ((g * dhs).astype(dhs.dtype), (g * dws).astype(dws.dtype), jnp.zeros_like(ht),
            jnp.zeros_like(wt), g * per_token)

  fused.defvjp(fwd, bwd)
  return fused


def _flat(x: Array, rank: int) -> Array:
  return x.reshape((-1,) + x.shape[x.ndim - rank + 1:]) if rank > 1 else x.reshape(-1)


def fused_divergence(student_hidden: Array, student_head: Array, teacher_hidden: Array,
                     teacher_head: Array, weights: Array, *, kind: str = "fkl", coef: float = 0.0,
                     temperature: float = 1.0, student_spec: HeadSpec = HeadSpec(),
                     teacher_spec: HeadSpec = HeadSpec(), chunk_size: int | None = None) -> Array:
  """Σ_n weights_n · divergence_n over tokens, never holding [N, V] logits.

  Same value and student gradients as `materialized_divergence`; `weights` carry the mask and
  the normalization (e.g. mask / mask.sum() for a per-token mean).

  Args:
    student_hidden: final-normed hidden states [B, T, D] (or [N, D]).
    student_head: the student's head weight, [D, V], or the embedding [V, D] when tied.
    teacher_hidden: the teacher's hidden states, same leading shape (its D may differ).
    teacher_head: the teacher's head weight (same vocabulary V).
    weights: [B, T] (or [N]) per-token weights; 0 drops a token.
    kind: a divergence of `kdknob_jax.ops.kl.DIVERGENCES` ("fkl" is KL(teacher‖student)).
    coef: β of "jsd", α of the skew kinds.
    temperature: divides both models' logits.
    student_spec: tying and softcap of the student head.
    teacher_spec: the same for the teacher.
    chunk_size: tokens per chunk; default `head.auto_chunk` (256 on CPU).

  Returns:
    A float32 scalar. Gradients flow to the student's hidden states and head and to the
    weights; the teacher's inputs get zeros.
  """
  hs, ht = _flat(student_hidden, 2), _flat(teacher_hidden, 2)
  w = _flat(weights, 1).astype(jnp.float32)
  if not hs.shape[0] == ht.shape[0] == w.shape[0]:
    raise ValueError(f"Student ({hs.shape[0]}), teacher ({ht.shape[0]}) and weights "
                     f"({w.shape[0]}) must cover the same tokens.")
  vs, vt = student_spec.vocab(student_head), teacher_spec.vocab(teacher_head)
  if vs != vt:
    raise ValueError(f"Token-level divergences need one vocabulary; the student has {vs} "
                     f"entries and the teacher {vt}.")
  chunk = chunk_size or auto_chunk(hs.shape[0], vs)
  spec = _Spec(kind, float(coef), float(temperature), student_spec, teacher_spec, int(chunk))
  ht, wt = jax.lax.stop_gradient(ht), jax.lax.stop_gradient(teacher_head)
  return _fused_fn(spec)(hs, student_head, ht, wt, w)


def fused_token_values(student_hidden: Array, student_head: Array, teacher_hidden: Array,
                       teacher_head: Array, *, kind: str = "fkl", coef: float = 0.0,
                       temperature: float = 1.0, student_spec: HeadSpec = HeadSpec(),
                       teacher_spec: HeadSpec = HeadSpec(), chunk_size: int | None = None
                       ) -> Array:
  """Per-token divergences [B, T] (or [N]) chunk by chunk, for metrics (no gradients)."""
  lead = student_hidden.shape[:-1]
  hs, ht = _flat(student_hidden, 2), _flat(teacher_hidden, 2)
  chunk = chunk_size or auto_chunk(hs.shape[0], student_spec.vocab(student_head))
  spec = _Spec(kind, float(coef), float(temperature), student_spec, teacher_spec, int(chunk))
  w = jnp.zeros(hs.shape[:1], jnp.float32)
  return _value_scan(spec, hs, student_head, ht, teacher_head, w)[1].reshape(lead)


def materialized_divergence(student_hidden: Array, student_head: Array, teacher_hidden: Array,
                            teacher_head: Array, weights: Array, *, kind: str = "fkl",
                            coef: float = 0.0, temperature: float = 1.0,
                            student_spec: HeadSpec = HeadSpec(),
                            teacher_spec: HeadSpec = HeadSpec()) -> Array:
  """The plain form of `fused_divergence`: all [N, V] logits at once (reference and baseline)."""
  hs, ht = _flat(student_hidden, 2), _flat(teacher_hidden, 2)
  zs = head_logits(hs, student_head, student_spec)
  zt = head_logits(jax.lax.stop_gradient(ht), jax.lax.stop_gradient(teacher_head), teacher_spec)
  v = divergence_from_logp(log_probs(zs, temperature), log_probs(zt, temperature), kind, coef)
  return jnp.sum(v * _flat(weights, 1).astype(jnp.float32))
