"""Exporting our params as an HF checkpoint: transformers and our loader both read it back."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import TINY, random_ids
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf import load_model, load_tokenizer
from kdknob_jax.hf.save import MARKER, save_pretrained
from kdknob_jax.models import forward
from kdknob_jax.models.derive import first_layers

SEQ = 24  # past the tiny Gemma window, as in test_tiny_parity


def _perturbed(params: dict, seed: int = 1) -> dict:
  """Params nudged off the source's values, so an export that copied the file would fail."""
  rng = np.random.default_rng(seed)  # numpy: jax.random would compile once per leaf shape
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(np.asarray(x) + 0.01 * rng.standard_normal(x.shape), x.dtype), params)


def _torch_model(path):
  model, info = AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  return model.eval()


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def _assert_same_params(a: dict, b: dict) -> None:
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape, path
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_export_loads_in_transformers_and_back(tiny_dir, tmp_path, name):
  m = load_model(tiny_dir(name))
  params = _perturbed(m.params)
  out = save_pretrained(params, m.config, m.hf_config, m.source, tmp_path / "export")
  hf = json.loads((out / "config.json").read_text())
  assert hf["dtype"] == "float32" and hf["architectures"]
  with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
    names = set(f.keys())
  assert ("lm_head.weight" in names) != m.config.tie_embeddings
  assert all(n.startswith("model.") or n == "lm_head.weight" for n in names)

  ids = random_ids(TINY[name]["vocab_size"], (2, SEQ))
  ref = _torch_logits(_torch_model(out), ids)
  ours = np.asarray(forward(params, m.config, jnp.asarray(ids))[0])
  # Measured: max |diff| 2e-7 .. 6e-7 over the five architectures (float32).
  np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)

  back = load_model(out)
  assert back.config == m.config
  _assert_same_params(back.params, params)


def test_bfloat16_sharded_export_and_reexport(tiny_dir, tmp_path):
  """bfloat16 weights in several shards with an index, then a float32 re-export into the same
  directory, which replaces the shards with one file."""
  m = load_model(tiny_dir("qwen3"))
  params = _perturbed(m.params)
  out = tmp_path / "export"
  save_pretrained(params, m.config, m.hf_config, m.source, out, dtype="bfloat16",
                  max_shard_bytes=20_000)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1
  with safe_open(str(out / shards[0]), framework="numpy") as f:
    assert f.get_tensor(next(iter(f.keys()))).dtype == jnp.bfloat16
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  back = load_model(out, dtype="bfloat16")
  _assert_same_params(back.params, jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16),
                                                          params))
  torch_model = _torch_model(out)  # reads the bfloat16 shards by the index
  assert torch_model.model.embed_tokens.weight.dtype == torch.float32
  assert np.isfinite(_torch_logits(torch_model, random_ids(256, (1, 12)))).all()

  save_pretrained(params, m.config, m.hf_config, m.source, out)
  left = sorted(p.name for p in out.iterdir())
  assert left == sorted(["config.json", "generation_config.json", "model.safetensors", MARKER])
  _assert_same_params(load_model(out).params, params)


_SHARDED_CHILD = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
from kdknob_jax import sharding
from kdknob_jax.hf import load_model
from kdknob_jax.hf.save import save_pretrained
assert jax.device_count() == 8
m = load_model(sys.argv[1], mesh=sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": -1}))
assert len(m.params["layers"]["q_proj"].sharding.device_set) == 8
save_pretrained(m.params, m.config, m.hf_config, m.source, sys.argv[2])
print("SAVED", [k for k in ("torch", "transformers") if k in sys.modules])
"""


def test_export_of_params_sharded_on_a_mesh(tiny_dir, tmp_path):
  """Params sharded over 8 simulated devices (a child process) are gathered slice by slice;
  the core stays torch-free."""
  src = tiny_dir("llama")
  proc = subprocess.run([sys.executable, "-c", _SHARDED_CHILD, str(src), str(tmp_path / "out")],
                        capture_output=True, text=True, timeout=300, check=False)
  assert "SAVED []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
  _assert_same_params(load_model(tmp_path / "out").params, load_model(src).params)


def test_export_of_a_derived_model_describes_it(tiny_dir, tmp_path):
  """A model cut to its first layers: config.json says so (layer count and Gemma pattern)."""
  m = load_model(tiny_dir("gemma3"))
  params, cfg = first_layers(m.params, m.config, 4)
  out = save_pretrained(params, cfg, m.hf_config, m.source, tmp_path / "export")
  back = load_model(out)
  assert back.config == cfg
  _assert_same_params(back.params, params)


def test_multimodal_gemma3_exports_its_text_decoder(tiny_dir, tmp_path):
  """A `gemma3` (vision) checkpoint's decoder exports as a `gemma3_text` causal LM."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  src, multi = tiny_dir("gemma3"), tmp_path / "multi"
  multi.mkdir()
  tensors = load_file(str(src / "model.safetensors"))
  save_file({"language_model." + k: v for k, v in tensors.items()},
            str(multi / "model.safetensors"))
  text = {k: v for k, v in TINY["gemma3"].items() if k != "model_type"}
  (multi / "config.json").write_text(json.dumps(
      {"model_type": "gemma3", "text_config": text, "eos_token_id": [1, 106]}))
  m = load_model(multi)
  out = save_pretrained(m.params, m.config, m.hf_config, m.source, tmp_path / "export")
  hf = json.loads((out / "config.json").read_text())
  assert hf["model_type"] == "gemma3_text" and hf["eos_token_id"] == [1, 106]
  _torch_model(out)  # loads with no missing or unexpected tensors
  back = load_model(out)
  assert back.config == m.config
  _assert_same_params(back.params, m.params)


def test_unrelated_nonempty_dir_is_refused_untouched(tiny_dir, tmp_path):
  m = load_model(tiny_dir("llama"))
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError, match="not a kdknob_jax export"):
    save_pretrained(m.params, m.config, m.hf_config, m.source, tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_reexport_keeps_foreign_files_and_never_overwrites_them(tiny_dir, tmp_path):
  m = load_model(tiny_dir("llama"))
  out = save_pretrained(m.params, m.config, m.hf_config, m.source, tmp_path / "export")
  (out / "README.md").write_text("kept")
  save_pretrained(m.params, m.config, m.hf_config, m.source, out)
  assert (out / "README.md").read_text() == "kept"
  # A file the export would write, but which the marker says it did not: someone else's.
  marker = json.loads((out / MARKER).read_text())
  marker["files"].remove("generation_config.json")
  (out / MARKER).write_text(json.dumps(marker))
  (out / "generation_config.json").write_text("theirs")
  with pytest.raises(ConfigError, match="generation_config.json"):
    save_pretrained(m.params, m.config, m.hf_config, m.source, out)
  assert (out / "generation_config.json").read_text() == "theirs"


def test_hf_config_of_another_model_is_refused(tiny_dir, tmp_path):
  m = load_model(tiny_dir("llama"))
  wrong = dict(m.hf_config, rms_norm_eps=1e-3)
  with pytest.raises(ConfigError, match="different model"):
    save_pretrained(m.params, m.config, wrong, m.source, tmp_path / "export")
  assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_embedded_gguf_export_with_tokenizer(tmp_path):
  """SmolLM2 from its GGUF: the export loads in transformers (model and AutoTokenizer), both
  tokenizers agree with the original, and our loader reads back the same params."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  name = "smollm2-135m-instruct"
  m = load_model(name)
  out = save_pretrained(m.params, m.config, m.hf_config, m.source, tmp_path / "export")
  for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert (out / f).is_file(), f

  probe = "Hello  world! 12*7=84, naïve café 🙂\n  def f(x):\treturn x<|im_end|>"
  chat = [{"role": "user", "content": "What is 12 * 7?"}]
  original, ours, theirs = load_tokenizer(name), load_tokenizer(out), AutoTokenizer.from_pretrained(
      out)
  assert ours.encode(probe) == original.encode(probe) == theirs(probe)["input_ids"]
  want = original.encode_prompt(chat)
  assert ours.encode_prompt(chat) == want
  assert theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                    return_dict=True)["input_ids"] == want
  assert ours.eos_ids == original.eos_ids

  ids = np.asarray([want])
  ref = _torch_logits(_torch_model(out), ids)
  got = np.asarray(forward(m.params, m.config, jnp.asarray(ids))[0])
  np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)  # measured max |diff| 1.1e-4 (|logit| <= 38)

  back = load_model(out)
  assert back.config == m.config
  _assert_same_params(back.params, m.params)
