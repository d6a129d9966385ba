r"""Make Gemma-3-12B resist distillation into Gemma-3-1B.

Teacher google/gemma-3-12b-it, calibration target google/gemma-3-1b-it, λ = -1.0 (undistillable):
the paper's recipe (LoRA r = α = 128 on every projection, lr 2e-5, 4 rollouts per prompt, KL anchor β = 0.04) on GSM8K, bfloat16.
Weights come from the local Hugging Face cache (nothing is downloaded at run time).

  8×H100 (one host):   python -m kdknob_jax.calibrate --config configs/gemma12b_undistill.py --workdir runs/gemma12b_undistill
  TPU v5p pod slice:   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-64 \
                         --config configs/gemma12b_undistill.py:v5p --workdir gs://BUCKET/gemma12b_undistill
  GPU cluster (SLURM): CONFIG=configs/gemma12b_undistill.py WORKDIR=/shared/runs/gemma12b_undistill sbatch launch/slurm.sbatch
  Laptop (same recipe on the embedded models, minutes):
                       python -m kdknob_jax.calibrate --config configs/gemma12b_undistill.py:laptop
"""

from kdknob_jax.calibration.config import paper_config


def get_config(arg: str | None = None):
  """The config; arg "v5p", "laptop" or "smoke" (see `paper_config`)."""
  return paper_config("google/gemma-3-12b-it", "google/gemma-3-1b-it", -1.0, arg)
