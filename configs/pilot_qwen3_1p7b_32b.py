"""Pilot study of a paper pair: Qwen3-1.7B student, Qwen3-32B teacher (Table 1, Figure 2).

The weights load from the local Hugging Face cache; fetch them first on a machine with network:
  huggingface-cli download Qwen/Qwen3-1.7B
  huggingface-cli download Qwen/Qwen3-32B
Then (bfloat16, FSDP over every device):
  python -m kdknob_jax.pilot --config configs/pilot_qwen3_1p7b_32b.py \
      --workdir runs/pilot_qwen3_1p7b_32b
A `:smoke` suffix on the file name shrinks it to 2 prompts x 2 rollouts x 16 tokens.
"""

from kdknob_jax.experiments.pilot_config import paper_config


def get_config(arg: str | None = None):
  """The config; `arg="smoke"` for a quick end-to-end check on the real models."""
  return paper_config("Qwen/Qwen3-1.7B", "Qwen/Qwen3-32B", arg)
