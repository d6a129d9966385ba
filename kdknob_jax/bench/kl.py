"""Fused chunked divergence against the materialized one: memory, time and agreement.

  python -m kdknob_jax.bench kl [--vocab 151936 262144] [--hidden 1024] [--tokens 2048]
      [--kind fkl] [--dtype float32] [--repeats 3] [--json OUT]

Both sides compute the loss and its gradients with respect to the student's hidden states and
LM head (the teacher is frozen), for a student and a teacher with random heads [D, V]. Memory is
XLA's own buffer assignment for each compiled program (`memory_analysis()`): the working memory
(temporaries) and the total with arguments and outputs, which are the same arrays on both sides.
Time is the median wall time of `--repeats` calls after a compiling call.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.ops.head import auto_chunk
from kdknob_jax.ops.fused_kl import fused_divergence, materialized_divergence

_GIB = 2.0**30


def _inputs(n: int, d: int, v: int, dtype, seed: int = 0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  hs = jax.random.normal(keys[0], (n, d), dtype)
  ht = jax.random.normal(keys[1], (n, d), dtype)
  # Heads scaled like a trained model's: logits of a few units, not hundreds.
  ws = (jax.random.normal(keys[2], (d, v), jnp.float32) * d**-0.5 * 3).astype(dtype)
  wt = (jax.random.normal(keys[3], (d, v), jnp.float32) * d**-0.5 * 3).astype(dtype)
  weights = jnp.full((n,), 1.0 / n, jnp.float32)
  return hs, ws, ht, wt, weights


def _measure(fn, args, repeats: int) -> dict:
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
  mem = compiled.memory_analysis()
  t0 = time.perf_counter()
  value, grads = compiled(*args)
  jax.block_until_ready(grads)
  first = time.perf_counter() - t0
  secs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    secs.append(time.perf_counter() - t0)
  temp = mem.temp_size_in_bytes
  total = temp + mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
  return {"loss": float(value), "grads": grads, "seconds": secs, "first_call_seconds": first,
          "median_seconds": statistics.median(secs), "temp_gib": temp / _GIB,
          "total_gib": total / _GIB}


def bench_one(vocab: int, hidden: int, tokens: int, kind: str, dtype: str, repeats: int,
              chunk: int | None) -> dict:
  """Both sides at one vocabulary size; returns a JSON-ready dict of figures and ratios."""
  args = _inputs(tokens, hidden, vocab, jnp.dtype(dtype))
  kw = dict(kind=kind, coef=0.5 if kind == "jsd" else 0.0)
  chunk = chunk or auto_chunk(tokens, vocab)

  def ours(hs, ws, ht, wt, w):
    return fused_divergence(hs, ws, ht, wt, w, chunk_size=chunk, **kw)

  def plain(hs, ws, ht, wt, w):
    return materialized_divergence(hs, ws, ht, wt, w, **kw)

  a = _measure(ours, args, repeats)
  b = _measure(plain, args, repeats)
  grad_err = []
  for x, y in zip(a["grads"], b["grads"]):
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    grad_err.append(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))))
  for side in (a, b):
    side.pop("grads")
  return {
      "vocab": vocab, "hidden": hidden, "tokens": tokens, "kind": kind, "dtype": dtype,
      "chunk": chunk, "ours": a, "plain": b,
      "temp_memory_ratio": a["temp_gib"] / b["temp_gib"],
      "total_memory_ratio": a["total_gib"] / b["total_gib"],
      "time_ratio": a["median_seconds"] / b["median_seconds"],
      "loss_rel_error": abs(a["loss"] - b["loss"]) / abs(b["loss"]),
      "grad_max_rel_error": max(grad_err),
  }


def main(argv=None) -> int:
  """Runs the benchmark and prints a table (and writes JSON with --json)."""
  ap = argparse.ArgumentParser(prog="python -m kdknob_jax.bench kl", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--vocab", type=int, nargs="+", default=[151_936, 262_144])
  ap.add_argument("--hidden", type=int, default=1024)
  ap.add_argument("--tokens", type=int, default=2048)
  ap.add_argument("--kind", default="fkl")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--chunk", type=int, default=None, help="tokens per chunk (default: auto)")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--json", default=None, help="also write the figures here")
  args = ap.parse_args(argv)
  rows = []
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{platform.machine()}; hidden {args.hidden}, {args.tokens} tokens, {args.kind}, "
        f"{args.dtype}, loss + grads of the student's hidden states and head")
  print("| vocab | chunk | ours s | plain s | time ratio | ours work GiB | plain work GiB | "
        "work ratio | total ratio | loss rel err | grad rel err |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for v in args.vocab:
    r = bench_one(v, args.hidden, args.tokens, args.kind, args.dtype, args.repeats, args.chunk)
    rows.append(r)
    print(f"| {v} | {r['chunk']} | {r['ours']['median_seconds']:.2f} | "
          f"{r['plain']['median_seconds']:.2f} | {r['time_ratio']:.2f} | "
          f"{r['ours']['temp_gib']:.2f} | {r['plain']['temp_gib']:.2f} | "
          f"{r['temp_memory_ratio']:.3f} | {r['total_memory_ratio']:.3f} | "
          f"{r['loss_rel_error']:.1e} | {r['grad_max_rel_error']:.1e} |", flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"device": str(jax.devices()[0]), "rows": rows}, f, indent=2)
  return 0 if all(np.isfinite(r["loss_rel_error"]) for r in rows) else 1


if __name__ == "__main__":
  raise SystemExit(main())
