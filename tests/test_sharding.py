"""Sharded loading on a simulated 8-device mesh, mesh validation, and the torch-free core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import pytest

from kdknob_jax import sharding

HERE = Path(__file__).parent


def _mesh_child(check: str, path: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs one check of `_mesh_child.py`: 8 simulated devices need their own process."""
  return subprocess.run([sys.executable, str(HERE / "_mesh_child.py"), check, path],
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_sharded_load_on_simulated_mesh_matches_single_device(tiny_dir):
  proc = _mesh_child("load", str(tiny_dir("llama")), timeout=300)
  assert "MESH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_mesh_sizes_are_validated():
  n = jax.device_count()
  with pytest.raises(ValueError, match="needs"):
    sharding.make_mesh({"data": n + 1})
  assert sharding.make_mesh({"data": -1}).shape["data"] == n


def test_spec_drops_axes_that_do_not_divide():
  mesh = sharding.make_mesh({"data": -1})
  spec = sharding.spec_for((3, 5), ("vocab", "embed"), mesh)
  assert tuple(spec) == (None, None)


def test_core_package_never_imports_torch_or_transformers():
  """Loading an embedded model and its tokenizer imports neither torch nor transformers."""
  code = (
      "import sys\n"
      "import kdknob_jax, kdknob_jax.models, kdknob_jax.hf, kdknob_jax.sharding\n"
      "import kdknob_jax.compare, kdknob_jax.compare.run, kdknob_jax.compare.jax_side\n"
      "import kdknob_jax.decode, kdknob_jax.decode.text, kdknob_jax.generate\n"
      "import kdknob_jax.ops.kl, kdknob_jax.ops.fused_kl, kdknob_jax.data\n"
      "import kdknob_jax.diagnostics, kdknob_jax.pilot, kdknob_jax.models.lora\n"
      "import kdknob_jax.calibration.trainer, kdknob_jax.distillation.trainer\n"
      "import kdknob_jax.experiments.pipeline, kdknob_jax.experiments.pilot\n"
      "import kdknob_jax.bench.decode\n"
      "from kdknob_jax.hf import load_model, load_tokenizer\n"
      "m = load_model('smollm2-135m-instruct'); t = load_tokenizer('smollm2-135m-instruct')\n"
      "assert t.encode('Hello world') == [19556, 905], t.encode('Hello world')\n"
      "bad = [k for k in ('torch', 'transformers') if k in sys.modules]\n"
      "print('IMPORTED', bad)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, check=False)
  assert "IMPORTED []" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_decoder_on_simulated_mesh_gives_single_device_tokens(tiny_dir):
  """data 2 x fsdp 2 x tensor 2: same tokens and log-probs as one device, same key."""
  proc = _mesh_child("decode", str(tiny_dir("llama")), timeout=600)
  assert "DECODE_MESH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_fused_divergence_on_simulated_mesh_keeps_the_vocabulary_sharded():
  """data 2 x tensor 4: one device's value and gradients; no device holds a [.., V] array."""
  proc = _mesh_child("fused", "-", timeout=300)
  assert "FUSED_MESH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_pilot_scoring_on_simulated_mesh_matches_single_device(tiny_dir):
  proc = _mesh_child("score", str(tiny_dir("llama")), timeout=600)
  assert "SCORE_MESH_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
