"""python -m kdknob_jax.compare --model NAME_OR_DIR [--dtype float32|bfloat16] [--prompts FILE]
[--new-tokens N] [--json OUT]
python -m kdknob_jax.compare steps [--model NAME] [--student NAME] [--student-keep LAYERS]
[--json OUT] ...

The first form loads the same weights into HF transformers (PyTorch) and into our port, feeds
identical ids, prints the parity figures, writes them as JSON, and exits 1 when one is out of
tolerance. `steps` takes one calibration update (TRL's GRPOTrainer with a PEFT LoRA) and one
GKD forward-KL and reverse-KL student update (TRL's GKDTrainer loss) from the same rollouts,
rewards and initial weights on both sides, and compares losses, advantages, gradients and the
updated weights (`python -m kdknob_jax.compare steps --help`). Exit status: 0 all within
tolerance, 1 a figure outside it, 2 bad input.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from kdknob_jax.compare import steps_report
from kdknob_jax.compare.run import compare, format_report, read_prompts
from kdknob_jax.compare.steps import StepsSettings, compare_steps
from kdknob_jax.errors import KdknobError


def _write(result: dict, path: str | None) -> None:
  if path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))
    print(f"figures written to {path}")


def _logits(argv) -> int:
  ap = argparse.ArgumentParser(prog="python -m kdknob_jax.compare", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", required=True, help="embedded name, checkpoint dir, .gguf, hub id")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--prompts", help="text file (one prompt a line) or JSONL with 'prompt'")
  ap.add_argument("--new-tokens", type=int, default=32)
  ap.add_argument("--json", help="write every figure here")
  args = ap.parse_args(argv)
  if args.new_tokens < 0:
    ap.error("--new-tokens must be >= 0")
  try:
    result = compare(args.model, args.dtype, read_prompts(args.prompts), args.new_tokens)
  except (KdknobError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(result))
  _write(result, args.json)
  return 0 if result["passed"] else 1


def _steps(argv) -> int:
  d = StepsSettings()
  ap = argparse.ArgumentParser(
      prog="python -m kdknob_jax.compare steps",
      description="One calibration, GKD-FKL and GKD-RKL update: ours (float32) against "
      "TRL's (float32, and float64 as the reference the gradients are gated on).")
  ap.add_argument("--model", default=d.model, help="the teacher (default: %(default)s)")
  ap.add_argument("--student", default=d.student, help="the GKD student's weights (default: "
                  "the teacher's)")
  ap.add_argument("--student-keep", default=d.student_keep, help="the student's layers, e.g. "
                  "0-14,21-29 (default: the embedded student's cut for the embedded teacher, "
                  "else every layer but the middle one)")
  ap.add_argument("--prompts", type=int, default=d.prompts, help="prompts (default: %(default)s)")
  ap.add_argument("--group-size", type=int, default=d.group_size,
                  help="rollouts per prompt (default: %(default)s)")
  ap.add_argument("--tokens", type=int, default=d.tokens,
                  help="completion tokens, the longest row (default: %(default)s)")
  ap.add_argument("--rank", type=int, default=d.rank)
  ap.add_argument("--alpha", type=float, default=d.alpha)
  ap.add_argument("--b-scale", type=float, default=d.b_scale,
                  help="std of the adapters' initial B (default: %(default)s)")
  ap.add_argument("--lam", type=float, default=d.lam, help="λ (default: %(default)s)")
  ap.add_argument("--beta", type=float, default=d.beta, help="KL anchor (default: %(default)s)")
  ap.add_argument("--lr", type=float, default=d.optimizer.lr)
  ap.add_argument("--weight-decay", type=float, default=d.optimizer.weight_decay,
                  help="calibration's AdamW decay (the students use 0)")
  ap.add_argument("--clip", type=float, default=d.optimizer.clip)
  ap.add_argument("--seed", type=int, default=d.seed)
  ap.add_argument("--updates", default=",".join(d.updates),
                  help="which updates to compare, comma-separated (default: %(default)s)")
  ap.add_argument("--json", help="write every figure here")
  args = ap.parse_args(argv)
  settings = StepsSettings(
      model=args.model, student=args.student, student_keep=args.student_keep,
      prompts=args.prompts, group_size=args.group_size, tokens=args.tokens, rank=args.rank,
      alpha=args.alpha, b_scale=args.b_scale, lam=args.lam, beta=args.beta, seed=args.seed,
      updates=tuple(u.strip() for u in args.updates.split(",") if u.strip()),
      optimizer=dataclasses.replace(d.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                    clip=args.clip))
  try:
    result = compare_steps(settings)
  except (KdknobError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(steps_report.format_report(result))
  _write(result, args.json)
  return 0 if result["passed"] else 1


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["steps"]:
    return _steps(argv[1:])
  return _logits(argv)


if __name__ == "__main__":
  sys.exit(main())
