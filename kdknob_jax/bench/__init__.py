"""Benchmarks: `python -m kdknob_jax.bench <name> [--json OUT]`. Each measures ours against a
peer in the same run and prints the ratio; none of them is a test."""
