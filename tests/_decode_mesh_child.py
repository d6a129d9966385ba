"""Run in a child process with 8 simulated CPU devices (XLA_FLAGS must precede jax import)."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from kdknob_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.decode import GREEDY, SamplingConfig, generate_ids  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.hf import load_model  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(path: str) -> None:
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
  sharded = load_model(path, mesh=mesh)
  single = load_model(path)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 256, n).tolist() for n in (4, 9, 13)]
  for sampling in (GREEDY, SamplingConfig(1.0, top_k=50, top_p=0.95)):
    kw = dict(n=2, max_new_tokens=12, sampling=sampling, key=jax.random.PRNGKey(5))
    a = generate_ids(sharded.params, sharded.config, prompts, mesh=mesh, **kw)
    b = generate_ids(single.params, single.config, prompts, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=1e-5, rtol=0)
  print("DECODE_MESH_OK")


if __name__ == "__main__":
  main(sys.argv[1])
