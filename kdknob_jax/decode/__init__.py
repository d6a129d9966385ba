"""Batched JAX decoding (our replacement for vLLM): prefill plus a while_loop over the KV cache."""

from kdknob_jax.decode.engine import DecodeState, Generation, Sampler, check_prompts
from kdknob_jax.decode.sampling import GREEDY, SamplingConfig, filtered_logits, sample

__all__ = ["GREEDY", "DecodeState", "Generation", "Sampler", "SamplingConfig", "check_prompts",
           "filtered_logits", "sample"]
