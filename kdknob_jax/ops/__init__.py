"""Numerical kernels as plain functions (RoPE, norms, attention; divergences in later modules)."""
