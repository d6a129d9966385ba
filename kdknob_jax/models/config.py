"""The frozen model config, built once from a Hugging Face `config.json` dict.

Modules never see the raw dict: `ModelConfig.from_hf` validates it, fills the defaults that hub
checkpoints omit, and normalizes both RoPE spellings (the older `rope_theta` / `rope_scaling` /
`rope_local_base_freq` keys and the newer `rope_parameters` dict that transformers 5 writes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kdknob_jax.errors import UnsupportedModelError
from kdknob_jax.ops.attention import IMPLEMENTATIONS
from kdknob_jax.ops.rope import RopeConfig

FULL = "full_attention"
SLIDING = "sliding_attention"

# Defaults of transformers' config classes for keys that hub config.json files leave out (the
# multimodal Gemma-3 configs omit most of their text_config). Only keys our numerics depend on.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, hidden_act="silu", max_position_embeddings=2048),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-6,
                  rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu",
                  max_position_embeddings=32768),
    "gemma3": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
                   rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, query_pre_attn_scalar=256,
                   sliding_window=4096, sliding_window_pattern=6, final_logit_softcapping=None,
                   attn_logit_softcapping=None, tie_word_embeddings=True,
                   hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072),
}
_MODEL_TYPES = {"llama": "llama", "qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}
_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that decides a decoder's numerics. Hashable, so it can be a static jit argument.

  Einsum letters used across the package: B batch, T query length, S key/cache length,
  L layers, D hidden (embed), N query heads, K key/value heads, G = N/K, H head dim,
  F MLP hidden, V vocabulary.
  """
  family: str  # "llama" (also SmolLM2), "qwen3" or "gemma3"
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float
  tie_embeddings: bool
  rope: RopeConfig
  rope_local: RopeConfig | None = None  # sliding-window layers' table (Gemma-3)
  layer_types: tuple[str, ...] = ()
  sliding_window: int | None = None
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  max_position_embeddings: int = 8192
  dtype: str = "float32"  # params and activations; logits and softmax are float32

  @property
  def qk_norm(self) -> bool:
    return self.family in ("qwen3", "gemma3")

  @property
  def gemma(self) -> bool:
    """Gemma conventions: (1+w) norms, four norms a layer, scaled embedding, gelu-tanh MLP."""
    return self.family == "gemma3"

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
    return float(scalar) ** -0.5

  @property
  def sliding_flags(self) -> tuple[bool, ...]:
    return tuple(t == SLIDING for t in self.layer_types)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], dtype: str = "float32") -> "ModelConfig":
    """Builds the config from a parsed HF `config.json`.

    Args:
      hf: the JSON dict. A multimodal Gemma-3 config is read through its `text_config`.
      dtype: "float32" or "bfloat16", the dtype of params and activations.

    Raises:
      UnsupportedModelError: an architecture or option that the ports do not implement.
    """
    if dtype not in ("float32", "bfloat16"):
      raise UnsupportedModelError(f"dtype {dtype!r} is not supported; use 'float32' or 'bfloat16'.")
    model_type = hf.get("model_type")
    if model_type == "gemma3" and "text_config" in hf:
      hf = dict(hf["text_config"] or {}, model_type="gemma3_text")
    family = _MODEL_TYPES.get(model_type)
    if family is None:
      raise UnsupportedModelError(
          f"model_type {model_type!r} is not supported; kdknob_jax ports llama (incl. SmolLM2), "
          f"qwen3 and gemma3_text. Architectures: {hf.get('architectures')}.")
    c = dict(_FAMILY_DEFAULTS[family])
    c.update(hf)
    _reject_unsupported(c, family)

    heads = int(c["num_attention_heads"])
    head_dim = int(c.get("head_dim") or c["hidden_size"] // heads)
    layers = int(c["num_hidden_layers"])
    rope_global, rope_local = _parse_rope(c, family)
    layer_types: tuple[str, ...] = (FULL,) * layers
    window = None
    if family == "gemma3":
      window = int(c["sliding_window"])
      if c.get("layer_types"):
        layer_types = tuple(c["layer_types"])
      else:
        pattern = int(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6)
        layer_types = tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers))
      if len(layer_types) != layers or set(layer_types) - {FULL, SLIDING}:
        raise UnsupportedModelError(f"layer_types {layer_types} must list {FULL!r} or "
                                    f"{SLIDING!r} for each of the {layers} layers.")
    return cls(
        family=family, vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
        intermediate_size=int(c["intermediate_size"]), num_layers=layers, num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads), head_dim=head_dim,
        rms_norm_eps=float(c["rms_norm_eps"]), tie_embeddings=bool(c["tie_word_embeddings"]),
        rope=rope_global, rope_local=rope_local, layer_types=layer_types, sliding_window=window,
        query_pre_attn_scalar=c.get("query_pre_attn_scalar") if family == "gemma3" else None,
        attn_logit_softcap=c.get("attn_logit_softcapping"),
        final_logit_softcap=c.get("final_logit_softcapping"),
        max_position_embeddings=int(c.get("max_position_embeddings") or 8192), dtype=dtype)


def _reject_unsupported(c: Mapping[str, Any], family: str) -> None:
  problems = []
  if c.get("attention_bias"):
    problems.append("attention_bias=true (q/k/v/o biases)")
  if c.get("mlp_bias"):
    problems.append("mlp_bias=true")
  act = c.get("hidden_activation") if family == "gemma3" else c.get("hidden_act")
  expected = "gelu_pytorch_tanh" if family == "gemma3" else "silu"
  if act != expected:
    problems.append(f"activation {act!r} (expected {expected!r})")
  if family == "qwen3" and c.get("use_sliding_window"):
    problems.append("use_sliding_window=true for qwen3")
  if c.get("use_bidirectional_attention"):
    problems.append("use_bidirectional_attention=true")
  if problems:
    raise UnsupportedModelError(f"Unsupported {family} options: {', '.join(problems)}. "
                                "Convert the checkpoint or open an issue with its config.json.")


def _rope_from_params(p: Mapping[str, Any], theta_default: float, where: str) -> RopeConfig:
  kind = p.get("rope_type", p.get("type", "default")) or "default"
  if kind not in _ROPE_TYPES:
    raise UnsupportedModelError(f"{where}: rope_type {kind!r} is not supported; "
                                f"supported: {', '.join(_ROPE_TYPES)}.")
  if float(p.get("partial_rotary_factor", 1.0)) != 1.0:
    raise UnsupportedModelError(f"{where}: partial_rotary_factor != 1 is not supported.")
  theta = float(p.get("rope_theta", theta_default))
  if kind == "default":
    return RopeConfig(theta=theta)
  if kind == "linear":
    return RopeConfig(theta=theta, kind=kind, factor=float(p["factor"]))
  if kind == "llama3":
    return RopeConfig(theta=theta, kind=kind, factor=float(p["factor"]),
                      low_freq_factor=float(p["low_freq_factor"]),
                      high_freq_factor=float(p["high_freq_factor"]),
                      original_max_position=int(p["original_max_position_embeddings"]))
  # yarn. HF reads `attention_factor` only; a file's `attn_factor` (DeepSeek's spelling) is
  # ignored by transformers, and we follow transformers so that logits match it.
  return RopeConfig(theta=theta, kind=kind, factor=float(p["factor"]),
                    original_max_position=int(p["original_max_position_embeddings"]),
                    attention_factor=p.get("attention_factor"),
                    beta_fast=float(p.get("beta_fast") or 32.0),
                    beta_slow=float(p.get("beta_slow") or 1.0),
                    truncate=bool(p.get("truncate", True)))


def _parse_rope(c: Mapping[str, Any], family: str) -> tuple[RopeConfig, RopeConfig | None]:
  params = c.get("rope_parameters")
  if family == "gemma3":
    if params and FULL in params:  # transformers 5: one dict per layer type
      return (_rope_from_params(params[FULL], 1_000_000.0, "rope_parameters.full_attention"),
              _rope_from_params(params.get(SLIDING, {}), 10_000.0,
                                "rope_parameters.sliding_attention"))
    global_params = dict(c.get("rope_scaling") or {}, rope_theta=c["rope_theta"])
    return (_rope_from_params(global_params, 1_000_000.0, "rope_scaling"),
            RopeConfig(theta=float(c["rope_local_base_freq"])))
  if params:
    return _rope_from_params(params, float(c.get("rope_theta", 10000.0)), "rope_parameters"), None
  scaling = dict(c.get("rope_scaling") or {}, rope_theta=c["rope_theta"])
  return _rope_from_params(scaling, 10000.0, "rope_scaling"), None


REMAT_POLICIES = ("nothing", "dots", "none")


@dataclasses.dataclass(frozen=True)
class ExecConfig:
  """How a program runs the decoder: settings that change memory and speed, never the math.

  Attributes:
    remat: what the scanned layer keeps for the backward pass: "nothing" (only each layer's
      input; the layer is recomputed), "dots" (the projections' outputs too), or "none" (no
      rematerialization: everything, the most memory).
    attention: "auto", "dense", "chunked", "cudnn" or "xla_fused" (`kdknob_jax.ops.attention`).
    query_chunk: queries per chunk of the chunked attention.
  """
  remat: str = "none"
  attention: str = "auto"
  query_chunk: int = 128

  def forward_only(self) -> "ExecConfig":
    """The same settings for a program that takes no gradient: nothing to rematerialize."""
    return dataclasses.replace(self, remat="none")

  def __post_init__(self):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}.")
    if self.attention not in IMPLEMENTATIONS:
      raise ValueError(f"attention must be one of {IMPLEMENTATIONS}, got {self.attention!r}.")
    if self.query_chunk < 1:
      raise ValueError(f"query_chunk must be >= 1, got {self.query_chunk}.")
