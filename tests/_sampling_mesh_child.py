"""The two-level draw with the vocabulary split over devices gives one device's tokens and
log-probs: 8 simulated CPU devices, rows over 2 and the vocabulary over 4, for a vocabulary
that whole blocks tile and one that is padded. XLA_FLAGS must precede the jax import, hence a
child process: `python _sampling_mesh_child.py`; it prints SAMPLING_MESH_OK and the bits in
which the blocks' log-masses differ between the mesh and one device."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top,wrong-import-position

from kdknob_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from kdknob_jax.decode.sampling import SamplingConfig, block_log_masses, block_size, sample  # pylint: disable=g-import-not-at-top,wrong-import-position

ROWS, VOCAB = 16, 151_936
# 4 x 12,565: no power-of-two count of blocks tiles it, so 197 padded blocks of 256, which XLA
# cuts after gathering each row's vocabulary.
PADDED_VOCAB = 50_260


def main() -> None:
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
  rng = np.random.default_rng(0)
  # Spread logits (a peaked head over a long tail) and nearly flat ones (every block's mass
  # close to its neighbours', where rounding would most easily move the block argmax).
  rows = {"spread": rng.standard_normal((ROWS, VOCAB)) * 3.0,
          "flat": rng.standard_normal((ROWS, VOCAB)) * 0.05,
          "padded": rng.standard_normal((ROWS, PADDED_VOCAB)) * 3.0}
  assert block_size(VOCAB) == 1187 and block_size(PADDED_VOCAB) == 256
  configs = (SamplingConfig(1.0), SamplingConfig(0.7, top_k=2000, top_p=0.95))
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # pylint: disable=unnecessary-lambda-assignment
  one = jax.devices()[0]
  draws = mismatched = 0
  for cfg in configs:
    step = jax.jit(lambda x, k, cfg=cfg: sample(x, k, cfg))
    for name, logits in rows.items():
      x = jnp.asarray(logits, jnp.float32)
      for seed in range(4 if name != "padded" else 2):
        keys = jax.random.split(jax.random.PRNGKey(seed), ROWS)
        a = step(put(x, P("data", "tensor")), put(keys, P("data")))
        b = step(jax.device_put(x, one), jax.device_put(keys, one))
        same = np.asarray(a[0]) == np.asarray(b[0])
        draws, mismatched = draws + same.size, mismatched + int((~same).sum())
        if not same.all():
          print("MISMATCH", cfg, name, seed, np.flatnonzero(~same))
        for got, want in zip(a[1:], b[1:]):
          np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
  # The block masses themselves: summed within a block, they should not depend on the split.
  differ = []
  for name in ("spread", "padded"):
    x = jnp.asarray(rows[name], jnp.float32)
    masses = jax.jit(lambda x: block_log_masses(x, block_size(x.shape[-1]))[1])
    ma = np.asarray(masses(put(x, P("data", "tensor"))))
    mb = np.asarray(masses(jax.device_put(x, one)))
    differ.append(f"{name} {np.mean(ma != mb):.1e} (max {np.max(np.abs(ma - mb)):.1e})")
  print(f"draws {draws} mismatched {mismatched}; block log-masses differing in bits: "
        + ", ".join(differ))
  if mismatched == 0:
    print("SAMPLING_MESH_OK")


if __name__ == "__main__":
  main()
  sys.exit(0)
