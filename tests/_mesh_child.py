"""Checks run in a child process with 8 simulated CPU devices (XLA_FLAGS must precede the jax
import): `python _mesh_child.py {load,decode} CHECKPOINT_DIR`."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import re  # pylint: disable=g-import-not-at-top,wrong-import-position

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top,wrong-import-position

from kdknob_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.decode import GREEDY, Sampler, SamplingConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.hf import load_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.models import forward  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.diagnostics import score_sequences  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.models.derive import first_layers  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.ops.head import HeadSpec  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.ops.fused_kl import fused_divergence  # pylint: disable=g-import-not-at-top,wrong-import-position


def check_load(path: str) -> None:
  """Weights load into their shards, and the forward equals one device's."""
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
  sharded = load_model(path, mesh=mesh)
  single = load_model(path)
  q = sharded.params["layers"]["q_proj"]  # [L, D, N, H], N=8 heads over tensor=2, D over fsdp
  assert q.sharding.spec == P(None, "fsdp", "tensor", None), q.sharding.spec
  # Each device holds only its shard, not a full copy.
  assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2,
                                                 q.shape[3])
  emb = sharded.params["embed"]
  assert emb.sharding.spec == P("tensor", "fsdp"), emb.sharding.spec
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 16)), jnp.int32)
  with mesh:
    out = jax.jit(lambda p, t: forward(p, sharded.config, t)[0])(sharded.params, ids)
  ref = forward(single.params, single.config, ids)[0]
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=0)
  print("MESH_OK")


def check_decode(path: str) -> None:
  """The decoder on the mesh gives one device's tokens and log-probs with the same key."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
  sharded = load_model(path, mesh=mesh)
  single = load_model(path)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 256, n).tolist() for n in (4, 9, 13)]
  for sampling in (GREEDY, SamplingConfig(1.0, top_k=50, top_p=0.95)):
    kw = dict(n=2, max_new_tokens=12, sampling=sampling, key=jax.random.PRNGKey(5))
    a = Sampler(sharded.config, mesh=mesh)(sharded.params, prompts, **kw)
    b = Sampler(single.config)(single.params, prompts, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=1e-5, rtol=0)
  print("DECODE_MESH_OK")


def check_fused(_: str) -> None:
  """The fused divergence with the vocabulary sharded over tensor: one device's value and
  gradients, and no all-gather that rebuilds a full-vocabulary array."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": -1})
  rng = np.random.default_rng(0)
  n, d, v = 96, 32, 1000
  hs, ht = (jnp.asarray(rng.normal(size=(n, d)), jnp.float32) for _ in range(2))
  ws = jnp.asarray(rng.normal(size=(v, d)) * 0.5, jnp.float32)  # tied student: [V, D]
  wt = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
  weights = jnp.full((n,), 1.0 / n, jnp.float32)

  def loss(a, b, c, d):
    return fused_divergence(a, b, c, d, weights, kind="jsd", coef=0.4, chunk_size=16,
                            student_spec=HeadSpec(tied=True))

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  ref_v, ref_g = step(hs, ws, ht, wt)
  put = lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))  # pylint: disable=unnecessary-lambda-assignment
  args = (put(hs, P("data", None)), put(ws, P("tensor", None)), put(ht, P("data", None)),
          put(wt, P(None, "tensor")))
  with mesh, nn.logical_axis_rules(sharding.DEFAULT_RULES):
    compiled = step.lower(*args).compile()
    val, grads = compiled(*args)
  np.testing.assert_allclose(float(val), float(ref_v), rtol=1e-5)
  for a, b in zip(grads, ref_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * float(jnp.abs(b).max()))
  assert grads[1].sharding.spec[0] == "tensor", grads[1].sharding
  # Per-device HLO shapes: a full-vocabulary dimension anywhere would mean some device holds
  # whole [C, V] logits (or a gathered head).
  full_vocab = re.findall(rf"[a-z0-9]+\[[0-9,]*\b{v}\b[0-9,]*\]", compiled.as_text())
  assert not full_vocab, full_vocab[:5]
  # Chunk logits are split over data (rows) and tensor (vocabulary): 16 rows / 2, 1000 / 4.
  # Rows left whole would mean every data shard computes every token's logits.
  hlo = compiled.as_text()
  assert "f32[8,250]" in hlo and "f32[16,250]" not in hlo
  print("FUSED_MESH_OK")


def check_score(path: str) -> None:
  """The pilot's scoring with both models sharded (data 2 x fsdp 2 x tensor 2) equals one
  device's: the pilot runs the paper pairs on a mesh with the same code."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 256, n).tolist() for n in (4, 9)]
  seqs = [(prompts[i % 2], rng.integers(1, 256, 3 + 2 * i).tolist()) for i in range(6)]
  out = []
  for m in (load_model(path, mesh=mesh), load_model(path)):
    student = first_layers(m.params, m.config, 2)
    out.append(score_sequences(student, (m.params, m.config), seqs, ks=(1, 16), rows_per_call=4))
  for key in ("logp_student", "logp_teacher", "rkl", "fkl"):
    np.testing.assert_allclose(getattr(out[0], key), getattr(out[1], key), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[0].contrib, out[1].contrib, rtol=1e-4, atol=1e-6)
  print("SCORE_MESH_OK")


if __name__ == "__main__":
  {"load": check_load, "decode": check_decode, "fused": check_fused,
   "score": check_score}[sys.argv[1]](sys.argv[2])
