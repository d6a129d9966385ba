"""Pilot study of a paper pair: Gemma-3-4B student, Gemma-3-12B teacher (Table 1, Figure 2).

The weights load from the local Hugging Face cache; fetch them first on a machine with network:
  huggingface-cli download google/gemma-3-4b-it
  huggingface-cli download google/gemma-3-12b-it
Then (bfloat16, FSDP over every device):
  python -m kdknob_jax.pilot --config configs/pilot_gemma3_4b_12b.py \
      --workdir runs/pilot_gemma3_4b_12b
A `:smoke` suffix on the file name shrinks it to 2 prompts x 2 rollouts x 16 tokens.
"""

from kdknob_jax.experiments.pilot_config import paper_config


def get_config(arg: str | None = None):
  """The config; `arg="smoke"` for a quick end-to-end check on the real models."""
  return paper_config("google/gemma-3-4b-it", "google/gemma-3-12b-it", arg)
