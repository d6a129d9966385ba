"""Export a calibrated teacher: the base weights with the run's LoRA merged in, as a Hugging Face
checkpoint (config.json, safetensors, tokenizer) that transformers and our loader both load.

  python -m kdknob_jax.export --workdir runs/tiny_undistill --out runs/tiny_undistill/export
      [--step N] [--dtype float32|bfloat16]

The run's settings come from the workdir's `run.json`; the base model is reloaded from its
source, since checkpoints hold only the adapters and optimizer state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

from kdknob_jax.checkpoint import RunCheckpoints, read_identity
from kdknob_jax.errors import KdknobError, RunStateError
from kdknob_jax.hf import load_model
from kdknob_jax.hf.save import save_pretrained
from kdknob_jax.rl.lora import LoraConfig, init_lora, merge, targets_from_names


def _abstract_saved(base: dict, lcfg: LoraConfig, identity: dict) -> dict:
  """The shapes of a calibration checkpoint, on one device (see `trainers.calibration`)."""
  from kdknob_jax.trainers.step import make_optimizer  # pylint: disable=g-import-not-at-top
  o = identity["optimizer"]
  opt = make_optimizer(o["lr"], o["warmup_steps"], o["clip"], o["weight_decay"], o["b1"],
                       o["b2"])
  shapes = jax.eval_shape(lambda: base)
  lora = jax.eval_shape(lambda: init_lora(shapes, lcfg, jax.random.PRNGKey(0)))
  tree = {"step": jax.ShapeDtypeStruct((), np.int32), "lora": lora,
          "opt_state": jax.eval_shape(opt.init, lora),
          "rng": jax.eval_shape(lambda: jax.random.PRNGKey(0))}
  one = SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                                tree)


def export(workdir: str | Path, out: str | Path, step: int | None = None,
           dtype: str | None = None) -> Path:
  """Writes the merged teacher of a calibration run.

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
  lcfg = LoraConfig(int(identity["lora"]["rank"]), float(identity["lora"]["alpha"]),
                    targets_from_names(identity["lora"]["targets"]))
  teacher = load_model(identity["teacher"], dtype=identity["dtype"])
  ckpt = RunCheckpoints(workdir, identity)
  if ckpt.latest_step() is None:
    raise RunStateError(f"{workdir} has no checkpoint yet; let the run reach its first "
                        "checkpoint_every step.")
  saved, _ = ckpt.restore(_abstract_saved(teacher.params, lcfg, identity), step)
  ckpt.close()
  merged = jax.jit(lambda b, l: merge(b, l, lcfg))(teacher.params, saved["lora"])
  return save_pretrained(merged, teacher.config, teacher.hf_config, teacher.source, out,
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
