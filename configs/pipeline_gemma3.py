r"""Table 2 for the Gemma-3 family as the paper runs it (§6.1): teacher google/gemma-3-12b-it
calibrated against the proxy google/gemma-3-1b-it at λ = ±1 with the paper's recipe; the student
google/gemma-3-4b-it (the 12B's 262,208-row vocabulary, which the 1B lacks, so token-level GKD
works) distilled from each teacher by SFT, GKD-FKL and GKD-RKL (lr 2e-5, 4 samples per prompt);
GSM8K, bf16, 16 samples per test question. Weights come from the local Hugging Face cache.

  8×H100 (one host):  python -m kdknob_jax.pipeline --config configs/pipeline_gemma3.py --workdir runs/gemma3
  the paper's suite:  ... --config configs/pipeline_gemma3.py:full
  TPU v5p slice:      launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-64 \
                        --module kdknob_jax.pipeline --config configs/pipeline_gemma3.py:v5p \
                        --workdir gs://BUCKET/gemma3
"""

from kdknob_jax.experiments.pipeline_config import paper_pipeline


def get_config(arg: str | None = None):
  """The config; arg "v5p" for a TPU v5p slice, "full" for the paper's evaluation suite."""
  return paper_pipeline("google/gemma-3-12b-it", "google/gemma-3-1b-it", "google/gemma-3-4b-it",
                        arg)
