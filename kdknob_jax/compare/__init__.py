"""The PyTorch-path comparison (`python -m kdknob_jax.compare`). Importing this package does not
import torch; `torch_side` does, when a comparison runs."""
