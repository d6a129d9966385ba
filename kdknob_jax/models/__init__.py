"""Model ports: config, decoder, KV cache, and the paper's variants."""

from kdknob_jax.models.api import (abstract_params, forward, head_of, init_params,
                                   logits_from_hidden, param_axes, param_count)
from kdknob_jax.models.cache import CACHE_AXES, init_cache
from kdknob_jax.models.config import ExecConfig, ModelConfig
from kdknob_jax.ops.rope import RopeConfig

__all__ = ["ExecConfig", "ModelConfig", "RopeConfig", "abstract_params", "forward", "head_of", "init_cache", "init_params",
           "logits_from_hidden", "param_axes", "param_count", "CACHE_AXES"]
