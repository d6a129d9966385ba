"""Decoding throughput: our decoder against HF transformers `generate`, same weights, same batch.

  python -m kdknob_jax.bench decode [--model smollm2-135m-instruct] [--prompts 16] [--samples 4]
      [--new-tokens 64] [--temperature 1.0] [--dtype float32] [--repeats 3]
      [--layout split|stacked] [--skip-hf] [--json OUT]

Both sides sample exactly `--new-tokens` tokens per row at the given temperature with no top-k
or top-p (HF's default top_k=50 is switched off). Neither stops at EOS: ours runs without stop
ids, HF gets min_new_tokens, which masks EOS. Each side is warmed up (our compile, torch's
first call), then timed `--repeats` times; tokens/s is rows x new tokens / wall seconds of a
whole call (prefill included), and the reported figure is the median.

In the same run it measures our decode step against its floor on this machine: a prefill-only
call (one new token) is timed too, so one step is (call − prefill) / (new tokens − 1); the
floor is a jitted program of that step's matmuls alone (every layer's projections on the
rows, the attention products in the layout our loop uses at the mean context, the LM head),
with the weights as separate per-layer arrays, timed the same way. `--layout` picks our
loop's layout (`Sampler.layout`): "split" (per-layer arrays, the prompt's cache shared by its
samples; what "auto" runs without FSDP) or "stacked" (the scanned decoder's arrays).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.compare.run import DEFAULT_PROMPTS
from kdknob_jax.data import data_root
from kdknob_jax.decode import Sampler, SamplingConfig
from kdknob_jax.hf import load_model, load_tokenizer, resolve

_GSM8K = data_root() / "gsm8k" / "test.jsonl"


def bench_prompts(count: int) -> tuple[list[str], str]:
  """The first `count` GSM8K test questions when the shared data is there, else our defaults."""
  if _GSM8K.exists():
    rows = [json.loads(x) for x in _GSM8K.read_text().splitlines()[:count]]
    if len(rows) == count:
      return [r["question"] for r in rows], str(_GSM8K)
  return [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(count)], "default prompts"


def _time(fn, repeats: int) -> list[float]:
  out = []
  for i in range(repeats):
    t0 = time.perf_counter()
    fn(i)
    out.append(time.perf_counter() - t0)
  return out


def run_ours(name, dtype, ids, samples, new_tokens, temperature, repeats,
             layout: str) -> dict:
  m = load_model(name, dtype=dtype)
  sampling = SamplingConfig(temperature)
  sampler = Sampler(m.config, layout=layout)  # no stop ids: every row runs the full new_tokens

  def call(seed, tokens=new_tokens):
    gen = sampler(m.params, ids, n=samples, max_new_tokens=tokens, sampling=sampling,
                  key=jax.random.PRNGKey(seed))
    assert int(gen.lengths.min()) == tokens  # no stop ids: every row is full length

  t0 = time.perf_counter()
  call(1000)
  warm = time.perf_counter() - t0
  call(1000, 1)  # the prefill-only program's compile
  # The mean context of a step: the mean prompt, and half the new tokens.
  floor = step_floor(m.params, m.config, len(ids), samples, int(np.mean([len(x) for x in ids])),
                     new_tokens // 2, layout)
  floor()
  # Interleaved, so that a slow spell of the machine touches all three alike.
  secs, pres, floors = [], [], []
  for i in range(repeats):
    secs += _time(lambda _, i=i: call(i), 1)
    pres += _time(lambda _, i=i: call(i, 1), 1)
    floors += _time(lambda _: floor(), 2)
  pre = statistics.median(pres)
  step = (statistics.median(secs) - pre) / max(new_tokens - 1, 1)
  floor_s = statistics.median(floors)
  return {"layout": layout, "seconds": secs, "warmup_seconds": warm, "prefill_seconds": pre,
          "step_seconds": step, "floor_step_seconds": floor_s, "floor_seconds": floors,
          "step_over_floor": step / floor_s}


def step_floor(params: dict, cfg, prompts: int, samples: int, prompt_len: int, new_len: int,
               layout: str = "split"):
  """A function that runs one decode step's matmuls alone (compiled at its first call).

  For each layer: the seven projections of the prompts x samples rows and the attention
  products, then the LM head; the weights are separate per-layer arrays (no slicing of the
  stacked weights). The attention is our step's in its layout: "split", the samples' queries
  of each prompt against its `prompt_len` keys at once, then each row against its own
  `new_len` keys, keys stored [.., K, H, S]; "stacked", each row against `prompt_len +
  new_len` keys stored [.., K, S, H]."""
  from kdknob_jax.models import head_of  # pylint: disable=g-import-not-at-top
  names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
  layers = [{k: jnp.array(params["layers"][k][i]) for k in names} for i in range(cfg.num_layers)]
  head, spec = head_of(params, cfg)
  dt = jnp.dtype(cfg.dtype)
  kv, g, h = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
  rows = prompts * samples
  split = layout == "split"
  # (batch, query rows per kv head, keys) of each attention block
  shapes = ([(prompts, samples * g, prompt_len), (rows, g, new_len)] if split
            else [(rows, g, prompt_len + new_len)])
  score_eq = "bkmh,bkhs->bkms" if split else "bkmh,bksh->bkms"
  caches = [(jnp.ones((bt, kv, h, s) if split else (bt, kv, s, h), dt),
             jnp.ones((bt, kv, s, h), dt)) for bt, _, s in shapes]

  @jax.jit
  def one_step(x, layers, head, caches):
    f32 = jnp.float32
    for w in layers:
      q = jnp.einsum("rd,dnh->rnh", x, w["q_proj"], preferred_element_type=f32).astype(dt)
      k = jnp.einsum("rd,dkh->rkh", x, w["k_proj"], preferred_element_type=f32).astype(dt)
      v = jnp.einsum("rd,dkh->rkh", x, w["v_proj"], preferred_element_type=f32).astype(dt)
      # The products read the caches as they are: an elementwise pass over them (adding the
      # new keys, say) is not a matmul and would raise the floor with the context length.
      # The new keys and values, and every block after the first, enter through a scalar:
      # their products are kept, and no data movement is added.
      o = (jnp.sum(k) + jnp.sum(v)).astype(dt) * 1e-30
      for i, ((bt, m, _), (keys, values)) in enumerate(zip(shapes, caches)):
        s = jnp.einsum(score_eq, q.reshape(bt, kv, m, h), keys,
                       preferred_element_type=f32).astype(dt)
        o_b = jnp.einsum("bkms,bksh->bkmh", s, values, preferred_element_type=f32).astype(dt)
        o = o + (o_b.reshape(rows, kv * g, h) if i == 0 else jnp.sum(o_b) * 1e-30)
      x = x + jnp.einsum("rnh,nhd->rd", o, w["o_proj"], preferred_element_type=f32).astype(dt)
      a = jnp.einsum("rd,df->rf", x, w["gate_proj"], preferred_element_type=f32).astype(dt)
      b = jnp.einsum("rd,df->rf", x, w["up_proj"], preferred_element_type=f32).astype(dt)
      x = x + jnp.einsum("rf,fd->rd", a * b, w["down_proj"],
                         preferred_element_type=f32).astype(dt)
    eq = "rd,vd->rv" if spec.tied else "rd,dv->rv"
    return jnp.einsum(eq, x, head, preferred_element_type=f32)

  x = jnp.ones((rows, cfg.hidden_size), dt) * 0.01
  return lambda: jax.block_until_ready(one_step(x, layers, head, caches))


def run_hf(source, dtype, ids, samples, new_tokens, temperature, repeats, pad_id) -> dict:
  """HF generate on the same GGUF weights (transformers' own loader, its default attention)."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = AutoModelForCausalLM.from_pretrained(str(source.path.parent), gguf_file=source.path.name,
                                               dtype=torch.float32).to(torch_dtype).eval()
  width = max(len(x) for x in ids)
  input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
  mask = torch.zeros((len(ids), width), dtype=torch.long)
  for i, x in enumerate(ids):  # HF batches decoder-only prompts with left padding
    input_ids[i, width - len(x):] = torch.tensor(x)
    mask[i, width - len(x):] = 1

  def call(seed, tokens=new_tokens):
    torch.manual_seed(seed)
    with torch.no_grad():
      out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                           temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=tokens,
                           min_new_tokens=tokens, num_return_sequences=samples,
                           pad_token_id=pad_id)
    assert out.shape == (len(ids) * samples, width + tokens), out.shape

  t0 = time.perf_counter()
  call(1000, tokens=4)
  warm = time.perf_counter() - t0
  return {"seconds": _time(call, repeats), "warmup_seconds": warm,
          "attention": model.config._attn_implementation}  # pylint: disable=protected-access


def _args(argv):
  p = argparse.ArgumentParser(prog="python -m kdknob_jax.bench decode", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="smollm2-135m-instruct")
  p.add_argument("--prompts", type=int, default=16)
  p.add_argument("--samples", type=int, default=4, help="samples per prompt")
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--skip-hf", action="store_true", help="time ours only")
  p.add_argument("--layout", default="split", choices=["split", "stacked"],
                 help="our decode loop's layout (`Sampler.layout`)")
  p.add_argument("--json", help="write every figure here")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = _args(argv)
  source = resolve(args.model)
  if source.kind != "gguf" and not args.skip_hf:
    raise SystemExit("The HF side loads GGUF files; pass an embedded model or --skip-hf.")
  tok = load_tokenizer(source)
  texts, prompt_source = bench_prompts(args.prompts)
  ids = [tok.encode_prompt(t) for t in texts]
  rows = args.prompts * args.samples
  tokens = rows * args.new_tokens
  result = {
      "benchmark": "decode", "model": args.model, "dtype": args.dtype,
      "prompts": args.prompts, "samples_per_prompt": args.samples, "rows": rows,
      "new_tokens": args.new_tokens, "temperature": args.temperature,
      "prompt_tokens": [len(x) for x in ids], "prompt_source": prompt_source,
      "repeats": args.repeats, "device": str(jax.devices()[0].device_kind),
      "cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
  }
  print(f"decode benchmark: {args.model} {args.dtype}, {args.prompts} prompts x {args.samples} "
        f"samples, {args.new_tokens} new tokens, T={args.temperature}, on "
        f"{result['device']} ({os.cpu_count()} CPUs)")
  ours = run_ours(source, args.dtype, ids, args.samples, args.new_tokens, args.temperature,
                  args.repeats, args.layout)
  result["ours"] = ours | {"tokens_per_s": tokens / statistics.median(ours["seconds"])}
  print(f"  ours: {result['ours']['tokens_per_s']:8.1f} tokens/s  (runs "
        f"{', '.join(f'{s:.1f}' for s in ours['seconds'])} s; compile {ours['warmup_seconds']:.1f} s)")
  print(f"  ours per decode step: {ours['step_seconds']:.3f} s (prefill "
        f"{ours['prefill_seconds']:.2f} s); the step's matmuls alone: "
        f"{ours['floor_step_seconds']:.3f} s; step / floor: {ours['step_over_floor']:.2f}x")
  if not args.skip_hf:
    import transformers  # pylint: disable=g-import-not-at-top
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_ids[0]
    hf = run_hf(source, args.dtype, ids, args.samples, args.new_tokens, args.temperature,
                args.repeats, pad)
    result["hf"] = hf | {"tokens_per_s": tokens / statistics.median(hf["seconds"]),
                         "transformers": transformers.__version__}
    result["ratio"] = result["ours"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
    print(f"  HF generate ({hf['attention']}): {result['hf']['tokens_per_s']:8.1f} tokens/s  (runs "
          f"{', '.join(f'{s:.1f}' for s in hf['seconds'])} s)")
    print(f"  ratio ours / HF: {result['ratio']:.2f}x")
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
  return 0


