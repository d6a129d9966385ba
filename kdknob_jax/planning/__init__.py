"""Planning a run before renting its machines: its programs compiled ahead of time against
abstract shapes on a simulated mesh, their per-device memory, and whether they fit a named
accelerator (`python -m kdknob_jax.plan`)."""
