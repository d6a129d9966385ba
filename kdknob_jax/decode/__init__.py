"""Batched JAX decoding (our replacement for vLLM): prefill plus a while_loop over the KV cache."""

from kdknob_jax.decode.engine import Generation, check_prompts, generate_ids
from kdknob_jax.decode.sampling import GREEDY, SamplingConfig, filtered_logits, sample

__all__ = ["GREEDY", "Generation", "SamplingConfig", "check_prompts", "filtered_logits",
           "generate_ids", "sample"]
