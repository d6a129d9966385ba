"""kdknob_jax: a calibration knob for LLM distillability, in JAX/Flax.

Layers (imports run down): entry points (calibrate, distill, pipeline, pilot, evaluate, export,
generate, compare, bench) and cli -> experiments -> {calibration, distillation} -> train ->
runs -> {evals, diagnostics, decode, hf} -> models -> ops; sharding, settings, distributed,
errors and data are leaves. The core package never imports torch. README, "Layout", has the
map.
"""

__version__ = "0.1.0"
