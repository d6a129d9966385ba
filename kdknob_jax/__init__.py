"""kdknob_jax: a calibration knob for LLM distillability, in JAX/Flax.

Layers (dependency direction): entry points -> trainers -> {evals, decode, hf} -> models ->
{ops, sharding}; errors is a leaf. The core package never imports torch.
"""

__version__ = "0.1.0"
