"""Shared fixtures: tiny random HF checkpoints written by transformers (PyTorch) in temp dirs."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# One compilation cache for the session, inherited by child processes: the calibration tests
# run the same programs several times (resume, errors), and each repeat then skips XLA.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kdknob-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# Shapes chosen so each architecture feature changes the numbers: GQA ratios above 2, a Gemma
# window shorter than the test sequences, Llama-3 scaling with all three frequency bands inside
# head_dim 16 (wavelengths 6 .. 2e4 against bands at 16 and 64), untied Qwen3 with a head_dim
# that is not hidden/heads, YaRN as DeepSeek-R1-0528-Qwen3 uses it.
TINY = {
    "llama": dict(
        model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=96,
        num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, hidden_act="silu",
        max_position_embeddings=256,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama_untied": dict(
        model_type="llama", vocab_size=256, hidden_size=48, intermediate_size=80,
        num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=False, hidden_act="silu",
        max_position_embeddings=256),
    "qwen3": dict(
        model_type="qwen3", vocab_size=256, hidden_size=32, intermediate_size=64,
        num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=False, hidden_act="silu",
        max_position_embeddings=256, attention_bias=False),
    "qwen3_yarn": dict(
        model_type="qwen3", vocab_size=256, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, hidden_act="silu",
        max_position_embeddings=512, attention_bias=False,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    "gemma3": dict(
        model_type="gemma3_text", vocab_size=256, hidden_size=48, intermediate_size=96,
        num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_local_base_freq=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0}, query_pre_attn_scalar=24,
        sliding_window=5, sliding_window_pattern=3, final_logit_softcapping=30.0,
        attn_logit_softcapping=None, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=256),
}


def _perturb_norms(model) -> None:
  """Random norm weights, so a wrong norm convention ((1+w) vs w) cannot pass unnoticed."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.3 * torch.randn(p.shape, generator=gen))


def make_tiny_checkpoint(directory: Path, hf_config: dict) -> Path:
  """Writes a random HF checkpoint (config.json + model.safetensors) with transformers."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoConfig, AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = dict(hf_config)
  config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
  model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  _perturb_norms(model)
  model.save_pretrained(directory, safe_serialization=True)
  return directory


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
  """A function name -> path of that tiny checkpoint (made once per session)."""
  made: dict[str, Path] = {}

  def get(name: str) -> Path:
    if name not in made:
      made[name] = make_tiny_checkpoint(tmp_path_factory.mktemp(name), TINY[name])
    return made[name]

  return get


def read_config(path: Path) -> dict:
  return json.loads((path / "config.json").read_text())


def random_ids(vocab: int, shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def normal(seed: int, shape, scale: float = 1.0) -> jnp.ndarray:
  """Float32 standard-normal test data drawn by numpy: every `jax.random.normal` of a new shape
  is an XLA compile (about a second on a 2-core CPU), and the suite draws dozens of shapes."""
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# `make test` runs two pytest-xdist workers, each test module whole on one worker. The modules
# that hold PyTorch copies of the embedded models share a worker, which keeps them apart in
# time (two at once came within 0.7 GB of the 24 GB machine) and lets the later one reuse the
# kept GGUF loads. The grouping is a scheduler of our own: xdist 3.8's `--dist loadgroup`
# renames test ids through an attribute pytest 9.2 no longer reads, so its groups are ignored.
_SHARED_WORKER = {"test_embedded_parity.py": "torch_models",
                  "test_compare_steps.py": "torch_models"}

try:
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top
except ImportError:  # pytest-xdist absent: the suite runs in one process
  LoadScopeScheduling = None

if LoadScopeScheduling is not None:

  class _ModuleGroups(LoadScopeScheduling):
    """xdist's scope scheduling with a test module (or a shared group of them) as the unit."""

    def _split_scope(self, nodeid: str) -> str:
      path = nodeid.split("::", 1)[0]
      return _SHARED_WORKER.get(path.rsplit("/", 1)[-1], path)

  def pytest_xdist_make_scheduler(config, log):
    return _ModuleGroups(config, log)


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
  """Drops the module's compiled programs when it ends, and hands freed heap back to the OS:
  a worker otherwise keeps every executable of the session (the persistent cache on disk still
  serves any repeat) and glibc keeps the freed pages of the models' large host arrays."""
  yield
  jax.clear_caches()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: nothing to hand back this way
    pass
