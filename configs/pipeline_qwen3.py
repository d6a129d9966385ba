r"""Table 2 for the Qwen3 family as the paper runs it (§6.1): teacher Qwen/Qwen3-8B calibrated
against the proxy Qwen/Qwen3-0.6B at λ = ±1 with the paper's recipe; the student Qwen/Qwen3-1.7B
distilled from each teacher by SFT, GKD-FKL and GKD-RKL (lr 2e-5, 4 samples per prompt);
GSM8K, bf16, 16 samples per test question. Weights come from the local Hugging Face cache
(nothing is downloaded at run time).

  8×H100 (one host):  python -m kdknob_jax.pipeline --config configs/pipeline_qwen3.py --workdir runs/qwen3
  the paper's suite:  ... --config configs/pipeline_qwen3.py:full   (BigMath L4/L5, CSQA,
                      MMLU-Pro, SuperGPQA files under the data root; README, "Paper pipeline")
  TPU v5p slice:      launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-64 \
                        --module kdknob_jax.pipeline --config configs/pipeline_qwen3.py:v5p \
                        --workdir gs://BUCKET/qwen3
"""

from kdknob_jax.experiments.pipeline_config import paper_pipeline


def get_config(arg: str | None = None):
  """The config; arg "v5p" for a TPU v5p slice, "full" for the paper's evaluation suite."""
  return paper_pipeline("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", arg)
