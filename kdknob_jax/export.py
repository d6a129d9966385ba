"""Export a run's model as a Hugging Face checkpoint (config.json, safetensors, tokenizer) that
transformers and our loader both load: a calibrated teacher (the base weights with the run's
LoRA merged in) or a distilled student.

  python -m kdknob_jax.export --workdir runs/tiny_undistill --out runs/tiny_undistill/export
      [--step N] [--dtype float32|bfloat16]

The run's settings come from the workdir's `run.json`; the base model is reloaded from its
source, since checkpoints hold only what trained (adapters or the student) and optimizer state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdknob_jax.runs.checkpoints import read_identity
from kdknob_jax.errors import KdknobError
from kdknob_jax.hf.save import save_pretrained
from kdknob_jax.runs.resolve import load_trained


def export(workdir: str | Path, out: str | Path, step: int | None = None,
           dtype: str | None = None) -> Path:
  """Writes a run's model: a calibration's merged teacher, or a distillation's student.

  Args:
    workdir: the run's directory.
    out: a new or empty directory (or a previous export's).
    step: the checkpoint to export (default: the latest).
    dtype: of the saved weights (default: the run's dtype).

  Returns:
    The output directory.

  Raises:
    RunStateError: no run or no checkpoint in the workdir.
  """
  identity = read_identity(workdir)
  model, _ = load_trained(workdir, identity["dtype"], step=step, merge=True)
  return save_pretrained(model.params, model.config, model.hf_config, model.source, out,
                         dtype=dtype or identity["dtype"])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m kdknob_jax.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a calibration run's --workdir")
  p.add_argument("--out", required=True, help="output directory (new, empty, or an export)")
  p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: the run's")
  args = p.parse_args(argv)
  try:
    out = export(args.workdir, args.out, args.step, args.dtype)
  except KdknobError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out} (load with transformers' AutoModelForCausalLM.from_pretrained, or "
        f"kdknob_jax.hf.load_model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
