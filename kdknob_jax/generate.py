"""Sample from a model on the command line.

  python -m kdknob_jax.generate --model smollm2-135m-instruct --prompt "What is 7 * 6?" \
      --n 4 --temperature 1.0 [--top-k 50] [--top-p 0.9] [--max-new-tokens 128] [--json OUT]

`--temperature 0` is greedy. Prompts go through the chat template when the tokenizer has one
(`--no-chat` for plain text). `--mesh data=2,tensor=4` runs sharded over the local devices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from kdknob_jax import sharding
from kdknob_jax.decode.sampling import SamplingConfig
from kdknob_jax.decode.text import generate_text
from kdknob_jax.errors import KdknobError
from kdknob_jax.hf import load_model, load_tokenizer, resolve


def _args(argv):
  p = argparse.ArgumentParser(prog="python -m kdknob_jax.generate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True, help="embedded name, checkpoint dir, .gguf or hub id")
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  p.add_argument("--prompts-file", help="one prompt per line")
  p.add_argument("--n", type=int, default=1, help="samples per prompt")
  p.add_argument("--max-new-tokens", type=int, default=128)
  p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
  p.add_argument("--top-k", type=int, default=0, help="0 keeps every token")
  p.add_argument("--top-p", type=float, default=1.0, help="1 keeps every token")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--no-chat", action="store_true", help="plain text even with a chat template")
  p.add_argument("--mesh", help="mesh sizes, e.g. data=2,tensor=-1 (default: one device)")
  p.add_argument("--json", help="also write every sample (tokens, log-probs) to this file")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _args(argv)
  prompts = list(args.prompt)
  if args.prompts_file:
    prompts += [x for x in Path(args.prompts_file).read_text().splitlines() if x.strip()]
  try:
    if not prompts:
      raise ValueError("No prompt given: pass --prompt TEXT (repeatable) or --prompts-file.")
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
    mesh_sizes = sharding.parse_mesh(args.mesh)
    mesh = sharding.make_mesh(mesh_sizes) if mesh_sizes else None
    source = resolve(args.model)
    model = load_model(source, dtype=args.dtype, mesh=mesh)
    tok = load_tokenizer(source)
    t0 = time.time()
    results = generate_text(model, tok, prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                            sampling=sampling, key=jax.random.PRNGKey(args.seed),
                            chat=False if args.no_chat else None, mesh=mesh)
    seconds = time.time() - t0
  except (KdknobError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for prompt, samples in zip(prompts, results):
    print(f"=== {prompt}")
    for s in samples:
      end = "" if s.stopped else "  [max tokens]"
      print(f"--- sample {s.sample_index} ({len(s.tokens)} tokens{end})\n{s.text}")
  total = sum(len(s.tokens) for samples in results for s in samples)
  print(f"\n{total} tokens in {seconds:.1f} s (compilation included)", file=sys.stderr)
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(prompt=prompts[s.prompt_index], **vars(s)) for samples in results
            for s in samples]
    Path(args.json).write_text(json.dumps({"model": args.model, "sampling": vars(sampling),
                                           "samples": rows}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
