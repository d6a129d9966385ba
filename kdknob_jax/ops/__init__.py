"""Numerical kernels as plain functions: RoPE, norms, attention (rope, layers), token and
sequence divergences (kl) and their fused chunked form for training (fused_kl)."""
