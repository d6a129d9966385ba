"""A student distilled on the embedded default: SmolLM2-135M-Instruct teaches a 24-layer student
cut from itself (layers 15–20 dropped, so the two share a tokenizer; see
`kdknob_jax.distillation.config.EMBEDDED_STUDENT_KEEP`), on the built-in capitals task.

  python -m kdknob_jax.distill --config configs/tiny_student.py --workdir runs/student_fkl
  python -m kdknob_jax.distill --config configs/tiny_student.py:laptop,gkd_rkl --workdir runs/rkl
  python -m kdknob_jax.distill --config configs/tiny_student.py --workdir runs/misled \\
      --config.teacher=runs/tiny_undistill_capitals

The argument is "[laptop|smoke][,method]" (method: sft, gkd_fkl, gkd_rkl; default gkd_fkl).
"""

from kdknob_jax.distillation.config import base_config, embedded


def get_config(arg: str | None = None):
  """The config for `arg` (see the module docstring)."""
  size, _, method = (arg or "laptop").partition(",")
  if size in ("sft", "gkd_fkl", "gkd_rkl"):
    size, method = "laptop", size
  c = embedded(base_config(), size or "laptop")
  c.method = method or "gkd_fkl"
  return c
