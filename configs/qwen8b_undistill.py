r"""Make Qwen3-8B resist distillation into Qwen3-0.6B (IP protection).

Teacher Qwen/Qwen3-8B, calibration target Qwen/Qwen3-0.6B, λ = -1.0 (undistillable):
the paper's recipe (LoRA r = α = 128 on every projection, lr 2e-5, 4 rollouts per prompt, KL anchor β = 0.04) on GSM8K, bfloat16.
Weights come from the local Hugging Face cache (nothing is downloaded at run time).

  8×H100 (one host):   python -m kdknob_jax.calibrate --config configs/qwen8b_undistill.py --workdir runs/qwen8b_undistill
  TPU v5p pod slice:   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-64 \
                         --config configs/qwen8b_undistill.py:v5p --workdir gs://BUCKET/qwen8b_undistill
  GPU cluster (SLURM): CONFIG=configs/qwen8b_undistill.py WORKDIR=/shared/runs/qwen8b_undistill sbatch launch/slurm.sbatch
  One H200 (the whole recipe on one GPU; check first with
  python -m kdknob_jax.plan --config configs/qwen8b_undistill.py:1gpu --devices 1 --accelerator h200):
                       python -m kdknob_jax.calibrate --config configs/qwen8b_undistill.py:1gpu
  Laptop (same recipe on the embedded models, minutes):
                       python -m kdknob_jax.calibrate --config configs/qwen8b_undistill.py:laptop
"""

from kdknob_jax.calibration.config import paper_config


def get_config(arg: str | None = None):
  """The config; arg "v5p", "1gpu", "laptop" or "smoke" (see `paper_config`)."""
  return paper_config("Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B", -1.0, arg)
