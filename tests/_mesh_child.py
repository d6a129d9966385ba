"""Run in a child process with 8 simulated CPU devices (XLA_FLAGS must precede jax import)."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top,wrong-import-position

from kdknob_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.hf import load_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.models import forward  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(path: str) -> None:
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


if __name__ == "__main__":
  main(sys.argv[1])
