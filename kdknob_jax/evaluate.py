"""Evaluate a model on a task: n samples per prompt plus one greedy, graded; pass@k, maj@n.

  python -m kdknob_jax.evaluate --model smollm2-135m-instruct --task capitals --out out/eval
      [--data SOURCE] [--split S] [--offset 0] [--limit N] [--n 16] [--k 1,16]
      [--max-new-tokens 256] [--temperature 1.0] [--top-k 0] [--top-p 1.0] [--no-greedy]
      [--chat | --no-chat] [--dtype float32|bfloat16] [--mesh data=1,fsdp=-1,tensor=1]
      [--seed 0] [--prompts-per-call 32] [--label NAME]

--model takes a model name, an HF checkpoint directory, a .gguf file, or the workdir of a
calibration or distillation run (its trained weights). Default data: gsm8k "gsm8k/test.jsonl",
commonsenseqa "commonsenseqa/sample200.jsonl", capitals the built-in test split; bigmath,
mmlu_pro and supergpqa need --data. Writes samples.json, metrics.json and summary.md to --out
and prints the metrics table.
"""

from __future__ import annotations

import argparse
import sys

from kdknob_jax import sharding
from kdknob_jax.data import get_task, load_records
from kdknob_jax.errors import ConfigError, KdknobError
from kdknob_jax.evals.report import metrics_table, write_report
from kdknob_jax.evals.runner import check_settings, evaluate
from kdknob_jax.sharding import parse_mesh


def parse_ks(spec: str | None, n: int) -> tuple[int, ...]:
  """'1,16' -> (1, 16); None -> (1, n)."""
  if not spec:
    return (1, n)
  try:
    return tuple(int(x) for x in spec.split(",") if x.strip())
  except ValueError as e:
    raise ConfigError(f"--k {spec!r}: expected comma-separated integers such as 1,4,16.") from e


def _args(argv):
  p = argparse.ArgumentParser(prog="python -m kdknob_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True,
                 help="model name, checkpoint dir, .gguf, or a calibration/distillation workdir")
  p.add_argument("--task", required=True, help="gsm8k, bigmath, capitals, commonsenseqa, "
                 "mmlu_pro, supergpqa or multiple_choice")
  p.add_argument("--data", help="a .jsonl/.json/.parquet file, dataset dir, builtin:<file> or "
                 "cached HF dataset (default: the task's own, where it has one)")
  p.add_argument("--split", help="HF split, or file stem inside a dataset dir (default: test)")
  p.add_argument("--offset", type=int, default=0, help="skip this many rows first")
  p.add_argument("--limit", type=int, help="evaluate at most this many rows")
  p.add_argument("--n", type=int, default=16, help="sampled completions per prompt")
  p.add_argument("--k", help="pass@k values, e.g. 1,4,16 (default: 1,n)")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top-k", type=int, default=0, help="0 keeps every token")
  p.add_argument("--top-p", type=float, default=1.0, help="1 keeps every token")
  p.add_argument("--no-greedy", action="store_true", help="skip the greedy completion")
  p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                 help="use the chat template (default: when the tokenizer has one)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--mesh", help="mesh sizes, e.g. data=1,fsdp=-1,tensor=1 (default: one device)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--prompts-per-call", type=int, default=32,
                 help="prompts per compiled decoding call (rows = this x n)")
  p.add_argument("--label", help="the model's name in the table (default: --model)")
  p.add_argument("--out", required=True, help="output directory")
  return p.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[dict, str]:
  """Checks everything cheap, loads the model, evaluates and writes the report.

  Returns:
    (paths written, the metrics table as markdown).
  """
  task = get_task(args.task)
  source = args.data or task.default_source
  if not source:
    raise ConfigError(f"Task {task.name!r} has no default data set; pass --data with a "
                      f".jsonl/.json/.parquet file or a cached Hugging Face dataset whose rows "
                      f"have the fields {list(task.fields)}.")
  records = load_records(source, args.split, args.limit, args.offset)
  task.check_records(records, args.offset)
  ks = parse_ks(args.k, args.n)
  check_settings(args.n, ks, args.temperature, args.top_k, args.top_p)
  try:
    sizes = parse_mesh(args.mesh)
    mesh = sharding.make_mesh(sizes) if sizes else None
  except ValueError as e:
    raise ConfigError(f"--mesh {args.mesh!r}: {e}") from e
  # Imported here: loading a finished run pulls in the run machinery, which only this step
  # needs.
  from kdknob_jax.runs.resolve import load_trained  # pylint: disable=g-import-not-at-top
  model, tokenizer = load_trained(args.model, dtype=args.dtype, mesh=mesh)
  result = evaluate(model.params, model.config, tokenizer, task, records, n=args.n, ks=ks,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, greedy=not args.no_greedy,
                    chat=args.chat, seed=args.seed, prompts_per_call=args.prompts_per_call,
                    mesh=mesh)
  label = args.label or args.model
  extra = {"model": args.model, "data": source, "split": args.split, "offset": args.offset,
           "limit": args.limit, "dtype": args.dtype, "mesh": sizes}
  paths = write_report(result, args.out, label=label, extra=extra)
  return paths, metrics_table({label: result.metrics})


def main(argv=None) -> int:
  args = _args(argv)
  try:
    paths, table = run(args)
  except KdknobError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table)
  print("wrote " + ", ".join(str(p) for p in paths.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
