"""Config parsing (both RoPE spellings, multimodal Gemma-3) and the clear errors of bad input."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import TINY, read_config
from kdknob_jax.errors import (CheckpointMismatchError, ModelNotFoundError, TokenizerNotFoundError,
                               UnsupportedModelError)
from kdknob_jax.hf import load_model, load_tokenizer, resolve
from kdknob_jax.models import ModelConfig


@pytest.mark.parametrize("name", ["gemma3", "llama", "qwen3_yarn"])
def test_old_and_new_rope_spellings_agree(tiny_dir, name):
  """Our hand-written (old-form) dict and the transformers-5 config.json (rope_parameters)."""
  saved = read_config(tiny_dir(name))
  assert "rope_parameters" in saved  # transformers 5 rewrote it in the new form
  assert ModelConfig.from_hf(TINY[name]) == ModelConfig.from_hf(saved)


def test_gemma3_layer_pattern_and_scaling():
  cfg = ModelConfig.from_hf(TINY["gemma3"])
  assert cfg.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
  assert cfg.rope.kind == "linear" and cfg.rope.factor == 8.0 and cfg.rope.theta == 1e6
  assert cfg.rope_local.kind == "default" and cfg.rope_local.theta == 1e4
  assert cfg.query_scale == pytest.approx(24 ** -0.5)


def test_multimodal_gemma3_checkpoint_loads_text_weights(tiny_dir, tmp_path):
  """A `gemma3` (vision) checkpoint: text_config and `language_model.model.` tensor names."""
  src = tiny_dir("gemma3")
  tensors = load_file(str(src / "model.safetensors"))
  renamed = {"language_model." + k: v for k, v in tensors.items()}
  renamed["vision_tower.dummy.weight"] = np.zeros((2, 2), np.float32)  # ignored
  save_file(renamed, str(tmp_path / "model.safetensors"))
  text = dict(TINY["gemma3"])
  text.pop("model_type")
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text}))
  a, b = load_model(src), load_model(tmp_path)
  assert a.config == b.config
  jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


def test_unknown_name_is_clear():
  with pytest.raises(ModelNotFoundError, match="Unknown model 'no-such-model'.*embedded"):
    resolve("no-such-model")


def test_hub_id_not_cached_says_how_to_provide(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  with pytest.raises(ModelNotFoundError, match="huggingface-cli download Qwen/Qwen3-8B"):
    resolve("Qwen/Qwen3-8B")


def test_hub_id_resolves_from_local_cache(tiny_dir, tmp_path, monkeypatch):
  snap = tmp_path / "models--Org--Tiny" / "snapshots" / "abc123"
  shutil.copytree(tiny_dir("llama"), snap)
  (tmp_path / "models--Org--Tiny" / "refs").mkdir()
  (tmp_path / "models--Org--Tiny" / "refs" / "main").write_text("abc123")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  assert resolve("Org/Tiny").path == snap
  assert load_model("Org/Tiny").config.num_layers == 3


def test_missing_weights_file(tiny_dir, tmp_path):
  shutil.copy(tiny_dir("llama") / "config.json", tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(ModelNotFoundError, match="pickle files are never loaded"):
    load_model(tmp_path)


def test_unsupported_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
  with pytest.raises(UnsupportedModelError, match="model_type 'mistral' is not supported"):
    load_model(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic'"),
])
def test_unsupported_options(change, message):
  with pytest.raises(UnsupportedModelError, match=message):
    ModelConfig.from_hf(dict(TINY["qwen3"], **change))


def test_shape_mismatch_names_the_tensor(tiny_dir, tmp_path):
  src = tiny_dir("qwen3")
  shutil.copy(src / "model.safetensors", tmp_path / "model.safetensors")
  cfg = read_config(src)
  cfg["intermediate_size"] = 72  # the weights have 64
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointMismatchError,
                     match=r"mlp\.gate_proj\.weight.*config implies \(3, 32, 72\)"):
    load_model(tmp_path)


def test_missing_tensor_is_listed(tiny_dir, tmp_path):
  src = tiny_dir("llama")
  tensors = load_file(str(src / "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  shutil.copy(src / "config.json", tmp_path / "config.json")
  with pytest.raises(CheckpointMismatchError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    load_model(tmp_path)


def test_tokenizer_missing(tiny_dir):
  with pytest.raises(TokenizerNotFoundError, match="no tokenizer.json"):
    load_tokenizer(tiny_dir("llama"))


def test_bad_dtype():
  with pytest.raises(UnsupportedModelError, match="float16"):
    ModelConfig.from_hf(TINY["llama"], dtype="float16")


def test_truncated_safetensors_is_named_and_left_alone(tiny_dir, tmp_path):
  shutil.copytree(tiny_dir("llama"), tmp_path / "m")
  weights = tmp_path / "m" / "model.safetensors"
  cut = weights.read_bytes()[: weights.stat().st_size // 2]
  weights.write_bytes(cut)
  with pytest.raises(CheckpointMismatchError, match="damaged or truncated.*Download"):
    load_model(str(tmp_path / "m"))
  assert weights.read_bytes() == cut


# Inside the header; past the last tensor's start; inside the last tensor.
@pytest.mark.parametrize("keep", [0.001, 0.9, 0.9999])
def test_truncated_gguf_is_named(tmp_path, keep):
  src = resolve("smollm2-135m-instruct").path
  data = src.read_bytes()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[: int(len(data) * keep)])
  with pytest.raises(CheckpointMismatchError, match="truncated.*Download"):
    load_model(str(cut))


def test_compare_prompt_files_name_their_bad_lines(tmp_path):
  from kdknob_jax.compare.run import read_prompts  # pylint: disable=g-import-not-at-top
  good = tmp_path / "ok.jsonl"
  good.write_text('Plain line\n{"question": "Q?"}\n\n', encoding="utf-8")
  assert read_prompts(str(good)) == ["Plain line", "Q?"]
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a"}\n{"prompt": oops}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=f"{bad}:2: invalid JSON"):
    read_prompts(str(bad))
  latin = tmp_path / "latin1.txt"
  latin.write_bytes(b"caf\xe9\n")
  with pytest.raises(ValueError, match="not UTF-8 text.*save it as UTF-8"):
    read_prompts(str(latin))
