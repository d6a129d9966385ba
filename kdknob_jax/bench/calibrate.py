"""One calibration step: ours against TRL's `GRPOTrainer` (PyTorch, CPU, no vLLM), same run.

  python -m kdknob_jax.bench calibrate [--prompts 2] [--group 4] [--new-tokens 32] [--rank 16]
      [--beta 0.04] [--steps 3] [--no-target] [--skip-trl] [--json OUT]

Both sides: the embedded SmolLM2-135M-Instruct teacher in float32, LoRA of the given rank on
every projection, `--group` rollouts of each CommonsenseQA prompt (the shared sample when it is
there, else built-in questions) of exactly `--new-tokens` tokens (EOS masked), a k3 KL anchor
to the adapter-free model, one optimizer step over all rollouts, and (unless --no-target) every
completion scored by the Gemma-3-270M target. A step is everything from sampling to the
optimizer update; the first step of each side (compilation, warm-up) is not counted and the
median of the rest is reported. The goal is ours ≤ 0.5× TRL's step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax

from kdknob_jax.data import data_root, get_task

_CSQA = data_root() / "commonsenseqa" / "sample200.jsonl"
_FALLBACK = [
    ("Where would you put a plate after washing it?", ["cupboard", "oven", "garden", "car"],
     "A"),
    ("What do you use to cut paper?", ["spoon", "scissors", "pillow", "cup"], "B"),
    ("Where does a fish live?", ["tree", "desert", "water", "attic"], "C"),
    ("What do people wear on their feet?", ["hat", "gloves", "scarf", "shoes"], "D"),
]


def bench_records(count: int, directory: Path) -> tuple[Path, str]:
  """A JSONL of `count` CommonsenseQA rows (the shared sample's first, else built-in ones)."""
  if _CSQA.exists():
    rows = [json.loads(x) for x in _CSQA.read_text().splitlines()[:count]]
    where = f"{_CSQA.relative_to(data_root())} in the data folder (kdknob_jax.data.data_root)"
  else:
    rows = [{"answerKey": k, "question": {"stem": q, "choices": [
        {"label": "ABCD"[i], "text": t} for i, t in enumerate(texts)]}}
            for q, texts, k in (_FALLBACK * count)[:count]]
    where = "built-in questions"
  path = directory / "bench_rows.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path, where


def run_ours(data: Path, args) -> dict:
  """Step seconds of our calibration step (sampling, scoring, target, update) after warm-up."""
  from kdknob_jax.calibration import trainer as calibration  # pylint: disable=g-import-not-at-top
  from kdknob_jax.calibration.config import base_config, build, shrink  # pylint: disable=g-import-not-at-top
  from kdknob_jax.calibration.rollouts import rollout  # pylint: disable=g-import-not-at-top
  c = shrink(base_config(), "laptop")
  c.train.update(source=str(data), offset=0, limit=0)
  c.eval.update(source=str(data), offset=0, limit=1)
  c.prompts_per_step, c.group_size, c.max_new_tokens = args.prompts, args.group, args.new_tokens
  c.lora.update(rank=args.rank, alpha=float(args.rank))
  c.beta, c.lam, c.stop_at_eos = args.beta, (0.0 if args.no_target else -1.0), False
  c.optimizer.update(lr=2e-5, warmup_steps=0)
  t0 = time.perf_counter()
  s = calibration.Calibration(build(c))
  state = s.initial_state()
  load_s = time.perf_counter() - t0
  root = jax.random.PRNGKey(0)
  seconds, tokens = [], []
  for step in range(args.steps):
    t0 = time.perf_counter()
    batch, info = rollout(s, state, step, jax.random.fold_in(root, step))
    state, m = s.train_step(state, batch, root)
    jax.block_until_ready(m)
    seconds.append(time.perf_counter() - t0)
    tokens.append(float(info["lengths"].mean()))
  if min(tokens) != args.new_tokens:
    raise RuntimeError(f"our rollouts were {tokens} tokens long, not {args.new_tokens}.")
  return {"step_s": statistics.median(seconds[1:]), "all_s": seconds, "load_s": load_s,
          "completion_tokens": statistics.mean(tokens)}


def _args(argv):
  p = argparse.ArgumentParser(prog="python -m kdknob_jax.bench calibrate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--prompts", type=int, default=2)
  p.add_argument("--group", type=int, default=4, help="rollouts per prompt")
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
  p.add_argument("--beta", type=float, default=0.04)
  p.add_argument("--steps", type=int, default=3, help="per side; the first is not counted")
  p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
  p.add_argument("--no-target", action="store_true", help="no target-model scoring")
  p.add_argument("--skip-trl", action="store_true", help="time ours only")
  p.add_argument("--json", help="write every figure here")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _args(argv)
  if args.steps < 2:
    raise SystemExit("--steps must be >= 2: the first step of each side is a warm-up.")
  with tempfile.TemporaryDirectory() as tmp:
    data, where = bench_records(args.prompts, Path(tmp))
    task = get_task("commonsenseqa")
    prompts = [task.prompt(json.loads(x)) for x in data.read_text().splitlines()]
    result = {"benchmark": "calibrate", "prompts": args.prompts, "group": args.group,
              "new_tokens": args.new_tokens, "rank": args.rank, "beta": args.beta,
              "target": not args.no_target, "prompt_source": where,
              "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
              "platform": platform.platform(), "jax": jax.__version__}
    print(f"calibrate benchmark: SmolLM2-135M teacher, {args.prompts} prompts x {args.group} "
          f"rollouts x {args.new_tokens} tokens, LoRA r={args.rank}, beta={args.beta}, target "
          f"{'Gemma-3-270M' if not args.no_target else 'off'}, on {result['device']} "
          f"({os.cpu_count()} CPUs)")
    ours = run_ours(data, args)
    result["ours"] = ours
    print(f"  ours: {ours['step_s']:7.2f} s/step  (steps "
          f"{', '.join(f'{x:.1f}' for x in ours['all_s'])} s, first compiles; load "
          f"{ours['load_s']:.1f} s)")
    if not args.skip_trl:
      from kdknob_jax.bench.calibrate_trl import trl_step_seconds  # pylint: disable=g-import-not-at-top
      trl = trl_step_seconds(prompts, rank=args.rank, alpha=float(args.rank),
                             group_size=args.group, max_completion_length=args.new_tokens,
                             beta=args.beta, steps=args.steps,
                             target_scorer=not args.no_target, threads=args.threads)
      result["trl"] = trl
      result["ours_over_trl"] = ours["step_s"] / trl["step_s"]
      print(f"  TRL:  {trl['step_s']:7.2f} s/step  (steps "
            f"{', '.join(f'{x:.1f}' for x in trl['all_s'])} s; torch threads "
            f"{trl['torch_threads']}, TRL {trl['trl']}, peft {trl['peft']})")
      print(f"  ours / TRL step time: {result['ours_over_trl']:.3f}  (goal <= 0.5)")
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
  return 0
