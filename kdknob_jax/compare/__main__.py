"""python -m kdknob_jax.compare --model NAME_OR_DIR [--dtype float32|bfloat16] [--prompts FILE]
[--new-tokens N] [--json OUT]

Loads the same weights into HF transformers (PyTorch) and into our port, feeds identical ids,
prints the parity figures, writes them as JSON, and exits 1 when one is out of tolerance.
"""

import argparse
import json
import sys
from pathlib import Path

from kdknob_jax.compare.run import compare, format_report, read_prompts
from kdknob_jax.errors import KdknobError


def main(argv=None) -> int:
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
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"figures written to {args.json}")
  return 0 if result["passed"] else 1


if __name__ == "__main__":
  sys.exit(main())
