"""One process of the 2-process CPU run in test_distributed.py. The parent sets KDKNOB_* and
XLA_FLAGS (2 devices per process); this prints one JSON line that starts with RESULT."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kdknob_jax import distributed, sharding

ROWS_PER_PROCESS = 4


def main() -> None:
  info = distributed.initialize()
  assert distributed.initialize() is info  # a second call neither re-joins nor fails
  assert info.process_count == 2 and info.device_count == 4, info
  assert info.local_device_count == 2, info
  mesh = sharding.make_mesh({"data": -1})
  assert mesh.shape["data"] == 4, mesh.shape
  # Process p holds rows 10p .. 10p+3, so only a cross-process sum sees both halves.
  local = np.arange(ROWS_PER_PROCESS, dtype=np.int32) + 10 * info.process_index
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local,
                                             (2 * ROWS_PER_PROCESS,))
  assert not x.is_fully_addressable
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
  distributed.sync("dist_child_done")
  print("RESULT " + json.dumps({
      "process_index": info.process_index, "is_main": distributed.is_main(),
      "sum": int(total), "coordinator": info.coordinator,
      "local_rows": local.tolist()}), flush=True)


if __name__ == "__main__":
  main()
