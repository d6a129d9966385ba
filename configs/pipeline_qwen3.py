r"""Table 2 for the Qwen3 family: teacher Qwen/Qwen3-8B, student Qwen/Qwen3-0.6B, GSM8K, bf16.
Calibrated teachers at λ = ±1 with the paper's recipe; students by SFT, GKD-FKL and GKD-RKL
from each teacher; 16 samples per test question. Weights come from the local Hugging Face
cache (nothing is downloaded at run time).

  8×H100 (one host):  python -m kdknob_jax.pipeline --config configs/pipeline_qwen3.py --workdir runs/qwen3
  TPU v5p slice:      launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-64 \
                        --module kdknob_jax.pipeline --config configs/pipeline_qwen3.py:v5p \
                        --workdir gs://BUCKET/qwen3
"""

from kdknob_jax.experiments.pipeline_config import paper_pipeline


def get_config(arg: str | None = None):
  """The config; arg "v5p" for a TPU v5p slice."""
  return paper_pipeline("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B", arg)
