"""Numerical kernels as plain functions, below the models: RoPE (rope), norms and attention
(layers), the LM head and its row chunking (head), token and sequence divergences (kl) and their
fused chunked form for training (fused_kl). Nothing here imports `kdknob_jax.models`."""
