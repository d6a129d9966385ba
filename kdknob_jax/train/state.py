"""Placing a run's state on the mesh and waiting for it: replicated scalars, committed leaves,
one sharded program in flight at a time, and gathering across processes."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def replicate(x: jax.Array, mesh) -> jax.Array:
  """x on every device of the mesh (small values: step counters, keys)."""
  sharding = NamedSharding(mesh, PartitionSpec())
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def commit(tree, mesh):
  """Every leaf committed to the whole mesh (replicated unless it already is). jit caches on
  committedness, and optax's step counters come out of `init` on a single device."""
  devices = set(mesh.devices.flat)
  return jax.tree_util.tree_map(
      lambda x: x if x.committed and x.sharding.device_set == devices else replicate(x, mesh),
      tree)


def shardings_of(tree):
  """The sharding of every leaf (to pin a step's output to its input's)."""
  return jax.tree_util.tree_map(lambda x: x.sharding, tree)


def keep_if_finite(new, old, *checks: jax.Array):
  """`new` when every scalar of `checks` is finite, else `old` (inside a jitted step: a NaN
  loss or gradient leaves the trained state as it was, so no checkpoint can hold it)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ok = jnp.all(jnp.stack([jnp.isfinite(c) for c in checks]))
  return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


def settle(x):
  """Waits for x, so the host reads settled values and a hang shows at the call that caused it
  (the cost is a little host/device overlap). It was added against a deadlock of 8 simulated
  devices on 2 cores, but XLA:CPU itself launches one multi-device program at a time, so it
  was not that deadlock's cure (README, "Calibration")."""
  return jax.block_until_ready(x)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of x on this host, gathered across processes when it is not all addressable."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
