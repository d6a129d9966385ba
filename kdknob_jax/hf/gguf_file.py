"""Reading GGUF files: metadata, tensors dequantized to numpy, and HF-style names and config.

The header is parsed here directly (the `gguf` package's reader builds a numpy view for every
vocabulary string, which takes tens of seconds on a 262k vocabulary); `gguf` does the
dequantization. Tensors come out under Hugging Face names and layouts, undoing the two changes
llama.cpp's converter makes: the rotary row permutation of Llama q/k weights and the +1 folded
into Gemma's norm weights.
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

import numpy as np

from kdknob_jax.errors import CheckpointMismatchError, UnsupportedModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFile:
  """A memory-mapped GGUF file: `metadata` (dict) and `tensors` (name -> (qtype, shape, offset)).

  Args:
    path: the .gguf file.
    skip_arrays: names of array fields to skip rather than decode (the vocabulary, for speed).
  """

  def __init__(self, path: str, skip_arrays: tuple[str, ...] = ()):
    self.path = str(path)
    with open(self.path, "rb") as f:
      self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = self._buf
    if buf[:4] != b"GGUF":
      raise UnsupportedModelError(f"{self.path} is not a GGUF file (bad magic bytes).")
    try:
      self._parse_header(skip_arrays)
    except (struct.error, ValueError, OverflowError, MemoryError) as e:
      raise CheckpointMismatchError(
          f"{self.path} ({len(buf)} bytes) has a damaged or truncated GGUF header ({e}). "
          "Download the file again.") from e
    last = max((off for _, _, off in self.tensors.values()), default=0)
    if self._data_start + last > len(buf):
      raise CheckpointMismatchError(
          f"{self.path} is truncated: its tensors start at byte {self._data_start} and reach "
          f"past {self._data_start + last}, but the file has {len(buf)} bytes. Download it "
          "again.")

  def _parse_header(self, skip_arrays: tuple[str, ...]) -> None:
    buf = self._buf
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
      raise UnsupportedModelError(f"{self.path}: GGUF version {version} is too old; need >= 2.")
    self._pos = 24
    self.metadata: dict[str, Any] = {}
    for _ in range(n_kv):
      key = self._string()
      (vtype,) = self._unpack("<I")
      self.metadata[key] = self._value(vtype, skip=key in skip_arrays)
    self.tensors: dict[str, tuple[int, tuple[int, ...], int]] = {}
    for _ in range(n_tensors):
      name = self._string()
      (n_dims,) = self._unpack("<I")
      dims = self._unpack("<" + "Q" * n_dims)
      qtype, offset = self._unpack("<IQ")
      # GGUF lists dimensions fastest-first; numpy (and HF) shapes are the reverse.
      self.tensors[name] = (qtype, tuple(int(d) for d in reversed(dims)), offset)
    align = int(self.metadata.get("general.alignment", 32))
    self._data_start = (self._pos + align - 1) // align * align

  def _unpack(self, fmt: str):
    out = struct.unpack_from(fmt, self._buf, self._pos)
    self._pos += struct.calcsize(fmt)
    return out

  def _string(self) -> str:
    (n,) = self._unpack("<Q")
    s = self._buf[self._pos:self._pos + n].decode("utf-8", errors="replace")
    self._pos += n
    return s

  def _value(self, vtype: int, skip: bool = False):
    if vtype == _STRING:
      return self._string()
    if vtype in _SCALARS:
      return self._unpack(_SCALARS[vtype])[0]
    if vtype != _ARRAY:
      raise UnsupportedModelError(f"{self.path}: unknown GGUF value type {vtype}.")
    etype, count = self._unpack("<IQ")
    if etype in _SCALARS:
      dt = np.dtype(_SCALARS[etype])
      arr = np.frombuffer(self._buf, dtype=dt, count=count, offset=self._pos)
      self._pos += dt.itemsize * count
      return None if skip else arr.copy()
    if etype == _STRING:
      if skip:
        for _ in range(count):
          (n,) = self._unpack("<Q")
          self._pos += n
        return None
      return [self._string() for _ in range(count)]
    return [self._value(etype) for _ in range(count)]

  def tensor(self, name: str) -> np.ndarray:
    """The named tensor dequantized to float32, in numpy (HF) layout."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # pylint: disable=g-import-not-at-top
    from gguf.quants import dequantize  # pylint: disable=g-import-not-at-top
    qtype, shape, offset = self.tensors[name]
    kind = GGMLQuantizationType(qtype)
    block, type_size = GGML_QUANT_SIZES[kind]
    n_elems = int(np.prod(shape))
    n_bytes = n_elems // block * type_size
    end = self._data_start + offset + n_bytes
    if end > len(self._buf):
      raise CheckpointMismatchError(
          f"{self.path} is truncated: tensor {name} ends at byte {end}, but the file has "
          f"{len(self._buf)} bytes. Download it again.")
    raw = np.frombuffer(self._buf, dtype=np.uint8, count=n_bytes,
                        offset=self._data_start + offset)
    rows = n_elems // shape[-1]
    out = dequantize(raw.reshape(rows, n_bytes // rows), kind)
    return np.asarray(out, dtype=np.float32).reshape(shape)

  @property
  def architecture(self) -> str:
    return str(self.metadata.get("general.architecture", "?"))


_ARCH_MODEL_TYPE = {"llama": "llama", "qwen3": "qwen3", "gemma3": "gemma3_text"}


def hf_config(g: GGUFFile) -> dict[str, Any]:
  """The HF `config.json` dict that a GGUF file's metadata describes.

  Keys a GGUF does not carry (Gemma-3's query_pre_attn_scalar, rope_local_base_freq, layer
  pattern) keep transformers' defaults, as transformers' own GGUF loader does.
  """
  arch = g.architecture
  if arch not in _ARCH_MODEL_TYPE:
    raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported; supported: "
                                f"{', '.join(_ARCH_MODEL_TYPE)}.")
  if "rope_freqs.weight" in g.tensors:
    raise UnsupportedModelError("This GGUF stores llama3 RoPE scaling as a rope_freqs tensor, "
                                "which the GGUF path does not read; load the HF checkpoint.")
  m = g.metadata

  def get(key, default=None):
    return m.get(f"{arch}.{key}", default)

  tokens = m.get("tokenizer.ggml.tokens")
  vocab = get("vocab_size") or (len(tokens) if tokens is not None else None)
  if vocab is None:
    vocab = g.tensors["token_embd.weight"][1][0]
  heads = int(get("attention.head_count"))
  cfg: dict[str, Any] = {
      "model_type": _ARCH_MODEL_TYPE[arch],
      "vocab_size": int(vocab),
      "hidden_size": int(get("embedding_length")),
      "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(get("attention.head_count_kv", heads)),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
      "max_position_embeddings": int(get("context_length", 8192)),
      "tie_word_embeddings": "output.weight" not in g.tensors,
      "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
      "pad_token_id": m.get("tokenizer.ggml.padding_token_id"),
  }
  theta = get("rope.freq_base")
  if theta is not None:
    cfg["rope_theta"] = float(theta)
  head_dim = get("attention.key_length") or (get("rope.dimension_count") if arch == "llama"
                                             else None)
  if head_dim:
    cfg["head_dim"] = int(head_dim)
  scaling = get("rope.scaling.type")
  if scaling and scaling != "none":
    cfg["rope_scaling"] = {"rope_type": scaling, "factor": float(get("rope.scaling.factor"))}
  if arch == "gemma3":
    cfg["sliding_window"] = int(get("attention.sliding_window"))
  else:
    cfg["hidden_act"] = "silu"
  return cfg


_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def hf_name(gguf_name: str, arch: str) -> str | None:
  """The HF tensor name of a GGUF tensor name, or None for tensors HF does not have."""
  top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
  if gguf_name in top:
    return top[gguf_name]
  parts = gguf_name.split(".")
  if len(parts) != 4 or parts[0] != "blk":
    return None
  _, layer, kind, suffix = parts
  if kind == "ffn_norm":
    # llama.cpp's ffn_norm is the norm before the MLP: HF calls it post_attention_layernorm in
    # Llama/Qwen3 (whose only other norm is the input norm) and pre_feedforward in Gemma-3.
    target = "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"
  else:
    target = _LAYER_NAMES.get(kind)
  return None if target is None else f"model.layers.{layer}.{target}.{suffix}"


def _unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  # llama.cpp's converter reorders each head's rows from HF's half-split rotary layout to
  # interleaved pairs (view [heads, 2, R/2] -> [heads, R/2, 2]); this view swaps them back.
  rows = w.shape[0]
  return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(g: GGUFFile, config: dict[str, Any]) -> dict[str, np.ndarray]:
  """All tensors of a GGUF file under HF names and layouts, dequantized to float32."""
  arch = g.architecture
  out = {}
  for name in g.tensors:
    target = hf_name(name, arch)
    if target is None:
      continue
    w = g.tensor(name)
    if arch == "llama" and ".attn_q." in name:
      w = _unpermute_rotary(w, config["num_attention_heads"])
    elif arch == "llama" and ".attn_k." in name:
      w = _unpermute_rotary(w, config["num_key_value_heads"])
    elif arch == "gemma3" and name.endswith("norm.weight"):
      w = w - np.float32(1.0)  # llama.cpp stores Gemma's (1 + w)
    out[target] = w
  return out
