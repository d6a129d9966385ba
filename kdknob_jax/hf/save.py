"""Writing our param tree back out as a Hugging Face checkpoint directory.

The tensors are the exact inverse of `convert.py`'s recipes (the HF names come from those
recipes, with the plain `model.` prefix), so `load_model(out)` returns the same params and
`AutoModelForCausalLM.from_pretrained(out)` loads them. Each tensor is gathered to the host one
layer slice at a time and written in shards of bounded size, so host memory holds at most one
shard plus one slice. Tokenizer files are copied from the source model.

A `kdknob_export.json` marker lists what an export wrote: only a directory holding it is
written into again, and only its listed files are replaced or removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from kdknob_jax.errors import CheckpointMismatchError, ConfigError, TokenizerNotFoundError
from kdknob_jax.hf import convert
from kdknob_jax.hf.registry import ModelSource
from kdknob_jax.hf.tokenizer import gguf_tokenizer_dir
from kdknob_jax.models import ModelConfig, abstract_params

MARKER = "kdknob_export.json"
DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' long-standing default max_shard_size, "5GB"
_TMP_SUFFIX = ".kdknob-tmp"
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "gemma3": "Gemma3ForCausalLM"}
# safetensors' numpy API stores ml_dtypes.bfloat16 as BF16, which torch reads natively.
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "tokenizer.model", "chat_template.jinja",
                    "chat_template.json")
# Keys describing the source files rather than the weights we write.
_DROPPED_KEYS = ("quantization_config", "_name_or_path", "auto_map")

log = logging.getLogger(__name__)


def _heads_in(w):  # DNH (or DKH) -> HF [NH, D]
  return w.reshape(w.shape[0], -1).T


def _heads_out(w):  # NHD -> HF [D, NH]
  return w.reshape(-1, w.shape[-1]).T


def _transpose(w):  # DF -> [F, D], FD -> [D, F], DV -> [V, D]
  return w.T


_TO_HF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q_proj": _heads_in, "k_proj": _heads_in, "v_proj": _heads_in, "o_proj": _heads_out,
    "gate_proj": _transpose, "up_proj": _transpose, "down_proj": _transpose,
    "lm_head": _transpose}


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One HF tensor: a param leaf, the layer to slice from it (None if unstacked)."""
  name: str
  leaf: Any
  layer: int | None
  to_hf: Callable[[np.ndarray], np.ndarray]
  nbytes: int

  def host(self, dtype) -> np.ndarray:
    x = self.leaf if self.layer is None else self.leaf[self.layer]
    x = np.asarray(jax.device_get(x)).astype(dtype, copy=False)
    return np.ascontiguousarray(self.to_hf(x))


def _tensors(params: dict, cfg: ModelConfig, itemsize: int) -> list[_Tensor]:
  plan = convert.recipes(cfg, {"model.embed_tokens.weight"})  # plain `model.` + `lm_head.`
  flat = traverse_util.flatten_dict(params)
  want = traverse_util.flatten_dict(abstract_params(cfg))
  if set(flat) != set(plan):
    raise CheckpointMismatchError(
        f"Params do not fit the config: paths {sorted(set(flat) ^ set(plan))} differ. Pass the "
        "ModelConfig these params were loaded or derived with.")
  first, layers, last = [], [], []
  for path, recipe in plan.items():
    leaf = flat[path]
    if tuple(np.shape(leaf)) != tuple(want[path].shape):
      raise CheckpointMismatchError(f"Param {'/'.join(path)} has shape {np.shape(leaf)}, but the "
                                    f"config implies {want[path].shape}.")
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      raise ConfigError(f"Param {'/'.join(path)} spans processes, and save_pretrained gathers "
                        "on one. Gather the params first (jax.experimental.multihost_utils."
                        "process_allgather) and save from process 0.")
    to_hf = _TO_HF.get(path[-1], lambda w: w)
    if recipe.stacked:
      size = math.prod(want[path].shape[1:]) * itemsize
      layers += [(i, _Tensor(n, leaf, i, to_hf, size)) for i, n in enumerate(recipe.hf_names)]
    else:
      size = math.prod(want[path].shape) * itemsize
      (last if path[0] in ("final_norm", "lm_head") else first).append(
          _Tensor(recipe.hf_names[0], leaf, None, to_hf, size))
  # Layer-major order: each shard then holds whole layers, as transformers writes them.
  return first + [t for _, t in sorted(layers, key=lambda x: x[0])] + last


def _shards(tensors: list[_Tensor], max_bytes: int) -> dict[str, list[_Tensor]]:
  groups: list[list[_Tensor]] = [[]]
  size = 0
  for t in tensors:
    if groups[-1] and size + t.nbytes > max_bytes:
      groups.append([])
      size = 0
    groups[-1].append(t)
    size += t.nbytes
  if len(groups) == 1:
    return {"model.safetensors": groups[0]}
  n = len(groups)
  return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": g for i, g in enumerate(groups)}


def export_config(hf_config: dict[str, Any], cfg: ModelConfig, dtype: str) -> dict[str, Any]:
  """The config.json of an export: the source's, made to describe exactly `cfg` for transformers.

  A multimodal Gemma-3 config becomes its text model's (`gemma3_text`), since only the decoder
  is written. Shape keys come from `cfg` (so a derived model, e.g. `first_layers`, is described
  right), and values our loader filled from defaults are spelled out.

  Raises:
    ConfigError: `hf_config` describes a model other than `cfg` (RoPE, norms, softcaps...).
  """
  c = dict(hf_config)
  if c.get("model_type") == "gemma3" and "text_config" in c:
    top = c
    c = dict(c["text_config"] or {}, model_type="gemma3_text")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
      if c.get(key) is None and top.get(key) is not None:
        c[key] = top[key]
  for key in _DROPPED_KEYS:
    c.pop(key, None)
  c.update(architectures=[_ARCHITECTURES[cfg.family]], dtype=dtype, torch_dtype=dtype,
           vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
           intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
           num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
           head_dim=cfg.head_dim, tie_word_embeddings=cfg.tie_embeddings)
  if cfg.gemma:
    # GGUF metadata lacks these; pin them rather than rely on transformers' defaults.
    c["layer_types"] = list(cfg.layer_types)
    c.setdefault("query_pre_attn_scalar", cfg.query_pre_attn_scalar)
    c.setdefault("hidden_activation", "gelu_pytorch_tanh")
    if not c.get("rope_parameters"):
      c.setdefault("rope_local_base_freq", cfg.rope_local.theta)
  else:
    c.setdefault("hidden_act", "silu")
  described = ModelConfig.from_hf(c, dtype=cfg.dtype)
  if described != cfg:
    diff = {f.name: (getattr(described, f.name), getattr(cfg, f.name))
            for f in dataclasses.fields(cfg) if getattr(described, f.name) != getattr(cfg, f.name)}
    raise ConfigError(f"hf_config describes a different model than cfg (config vs cfg): {diff}. "
                      "Pass the hf_config that load_model returned with these params.")
  return c


def _generation_config(hf: dict[str, Any], source_dir: Path | None) -> bytes:
  if source_dir is not None and (source_dir / "generation_config.json").is_file():
    return (source_dir / "generation_config.json").read_bytes()
  ids = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
         if hf.get(k) is not None}
  return _json_bytes(ids)


def _tokenizer_dir(source: ModelSource) -> Path | None:
  if source.kind != "gguf":
    return source.path
  try:
    return gguf_tokenizer_dir(source.path)
  except TokenizerNotFoundError as e:
    log.warning("Exporting without a tokenizer: %s", e)
    return None


def _tokenizer_json(path: Path, tok_cfg: dict[str, Any]) -> bytes:
  """tokenizer.json, with a BOS post-processor added where the config asks for BOS and the file
  has none: transformers then ignores `add_bos_token`, while our `Tokenizer` honors it."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  bos = tok_cfg.get("bos_token")
  bos = bos.get("content") if isinstance(bos, dict) else bos
  if not tok_cfg.get("add_bos_token") or bos is None:
    return path.read_bytes()
  tok = tokenizers.Tokenizer.from_file(str(path))
  bos_id = tok.token_to_id(bos)
  if tok.post_processor is not None or bos_id is None:
    return path.read_bytes()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
  return tok.to_str().encode()


def _json_bytes(obj) -> bytes:
  return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _previous_files(out: Path, planned: set[str]) -> set[str]:
  """Files of an earlier export in `out` (empty for a new directory).

  Raises:
    ConfigError: `out` holds files that no export of ours wrote.
  """
  if out.exists() and not out.is_dir():
    raise ConfigError(f"Output path {out} is a file; pass a directory.")
  present = {p.name for p in out.iterdir()} if out.exists() else set()
  if not present:
    return set()
  fix = "Pass a new or empty directory, or delete the files yourself."
  if MARKER not in present:
    raise ConfigError(f"Output directory {out} is not empty ({sorted(present)[:5]}) and is not a "
                      f"kdknob_jax export (no {MARKER}); nothing was written. {fix}")
  try:
    previous = set(json.loads((out / MARKER).read_text())["files"])
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ConfigError(f"{out / MARKER} is unreadable ({e}); nothing was written. {fix}") from e
  clobbered = sorted((planned & present) - previous - {MARKER})
  if clobbered:
    raise ConfigError(f"{out} holds {clobbered}, which the earlier export did not write and this "
                      f"one would overwrite; nothing was written. {fix}")
  return previous & present


def _write(out: Path, name: str, write: Callable[[Path], None]) -> None:
  tmp = out / f".{name}{_TMP_SUFFIX}"
  write(tmp)
  os.replace(tmp, out / name)  # a reader never sees a half-written file


def save_pretrained(params: dict, cfg: ModelConfig, hf_config: dict, source: ModelSource,
                    out_dir: str | os.PathLike, dtype: str | None = None, *,
                    max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
  """Writes params as a Hugging Face checkpoint that transformers and `load_model` both read.

  Args:
    params: our param tree (jax arrays, possibly sharded on one process's devices, or numpy).
    cfg: its config.
    hf_config: the source's config dict (`LoadedModel.hf_config`).
    source: the source model, whose tokenizer files (and generation_config.json) are copied; a
      source without tokenizer files gives an export without them.
    out_dir: a new or empty directory, or one an earlier export wrote.
    dtype: "float32", "bfloat16" or "float16"; default the params' dtype (`cfg.dtype`).
    max_shard_bytes: above this, weights go to several files with an index, as transformers
      writes them.

  Returns:
    The output directory.

  Raises:
    ConfigError: out_dir holds unrelated files, an unknown dtype, or an hf_config of another
      model.
    CheckpointMismatchError: params whose paths or shapes do not fit cfg.
  """
  dtype = dtype or cfg.dtype
  if dtype not in _DTYPES:
    raise ConfigError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}.")
  np_dtype = np.dtype(_DTYPES[dtype])
  out = Path(out_dir)
  config = export_config(hf_config, cfg, dtype)
  shards = _shards(_tensors(params, cfg, np_dtype.itemsize), max_shard_bytes)
  tok_dir = _tokenizer_dir(source)
  tok_files = [n for n in _TOKENIZER_FILES if tok_dir is not None and (tok_dir / n).is_file()]
  planned = {"config.json", "generation_config.json", *shards, *tok_files}
  if len(shards) > 1:
    planned.add("model.safetensors.index.json")
  previous = _previous_files(out, planned)
  out.mkdir(parents=True, exist_ok=True)
  for p in out.glob(f".*{_TMP_SUFFIX}"):  # left by an interrupted export
    p.unlink()
  # The marker goes first, so an interrupted export is still recognized as ours.
  marker = {"source": source.name, "dtype": dtype}
  _write(out, MARKER, lambda p: p.write_bytes(_json_bytes(
      dict(marker, files=sorted(planned | previous), complete=False))))

  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  weight_map, total = {}, 0
  for fname, group in shards.items():
    arrays = {t.name: t.host(np_dtype) for t in group}
    _write(out, fname, lambda p, a=arrays: save_file(a, str(p), metadata={"format": "pt"}))
    weight_map.update({t.name: fname for t in group})
    total += sum(t.nbytes for t in group)
    del arrays
  if len(shards) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write(out, "model.safetensors.index.json", lambda p: p.write_bytes(_json_bytes(index)))

  _write(out, "config.json", lambda p: p.write_bytes(_json_bytes(config)))
  gen = _generation_config(config, source.path if source.kind == "hf" else None)
  _write(out, "generation_config.json", lambda p: p.write_bytes(gen))
  tok_cfg = (json.loads((tok_dir / "tokenizer_config.json").read_text())
             if "tokenizer_config.json" in tok_files else {})
  for name in tok_files:
    src = tok_dir / name
    if name == "tokenizer.json":
      data = _tokenizer_json(src, tok_cfg)
      _write(out, name, lambda p, d=data: p.write_bytes(d))
    else:
      _write(out, name, lambda p, s=src: shutil.copyfile(s, p))
  for name in previous - planned - {MARKER}:
    (out / name).unlink()
  _write(out, MARKER, lambda p: p.write_bytes(_json_bytes(
      dict(marker, files=sorted(planned), complete=True))))
  return out
