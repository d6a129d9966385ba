r"""Make Llama-3.1-8B-Instruct resist distillation into Llama-3.2-3B-Instruct.

Teacher meta-llama/Llama-3.1-8B-Instruct, calibration target meta-llama/Llama-3.2-3B-Instruct, λ = -1.0 (undistillable):
the paper's recipe (LoRA r = α = 128 on every projection, lr 2e-5, 4 rollouts per prompt, KL anchor β = 0.04) on GSM8K, bfloat16.
Weights come from the local Hugging Face cache (nothing is downloaded at run time).

  8×H100 (one host):   python -m kdknob_jax.calibrate --config configs/llama8b_undistill.py --workdir runs/llama8b_undistill
  TPU v5p pod slice:   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-64 \
                         --config configs/llama8b_undistill.py:v5p --workdir gs://BUCKET/llama8b_undistill
  GPU cluster (SLURM): CONFIG=configs/llama8b_undistill.py WORKDIR=/shared/runs/llama8b_undistill sbatch launch/slurm.sbatch
  Laptop (same recipe on the embedded models, minutes):
                       python -m kdknob_jax.calibrate --config configs/llama8b_undistill.py:laptop
"""

from kdknob_jax.calibration.config import paper_config


def get_config(arg: str | None = None):
  """The config; arg "v5p", "laptop" or "smoke" (see `paper_config`)."""
  return paper_config("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", -1.0, arg)
