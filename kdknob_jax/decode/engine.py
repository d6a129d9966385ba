"""The batched decoder: one jit-compiled program of prefill plus a `lax.while_loop` of steps.

A `Sampler` holds what is fixed per model and mesh (stop and pad ids, sharding rules, prompt
slots); calling it with params and prompt ids runs that program and returns a `Generation`.

Prompts are right-padded to a bucketed length P; padding gets position -1, which the model
never attends to, so rows of different lengths share one cache without left padding. The
prompt batch is prefilled once, its cache is repeated for the n samples of each prompt, and
one-token steps, carrying a `DecodeState`, run until every row has emitted a stop id or
`max_new_tokens` tokens.

Rows are prompt-major: row r holds sample r % n of prompt r // n. Each row draws from its own
PRNG key, derived from (key, prompt id, sample index, step), so a row's tokens never depend on
its batch mates, on the bucket sizes or on the mesh.

Einsum letters: B prompts, R = B * n rows, P prompt slots, N new tokens, D model width,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.decode.sampling import SamplingConfig, sample
from kdknob_jax.hf.tokenizer import Tokenizer, pad_id_of
from kdknob_jax.models import CACHE_AXES, ModelConfig, forward, init_cache, logits_from_hidden
from kdknob_jax.models.split import constrain_split_cache, split_cache, split_params
from kdknob_jax.models.split import step as split_step

_MIN_PROMPT_BUCKET = 16
LAYOUTS = ("auto", "split", "stacked")


@dataclasses.dataclass
class Generation:
  """Decoded rows as numpy arrays, prompt-major (row r is sample r % n of prompt r // n).

  Attributes:
    tokens: int32 [R, N] new tokens; after a row's end, `pad_id`.
    lengths: int32 [R] number of new tokens of each row (a stop token included).
    mask: bool [R, N] True on each row's new tokens.
    logprobs: float32 [R, N] log-prob of each token under the sampling distribution used
      (temperature, top-k and top-p applied; 0 for greedy); 0 where masked.
    model_logprobs: float32 [R, N] log-prob under the untempered model (T = 1); 0 where masked.
    stopped: bool [R] whether the row ended on a stop id (else it hit max_new_tokens).
    prompt_index: int32 [R] which prompt of the call each row continues.
    n: samples per prompt.
  """
  tokens: np.ndarray
  lengths: np.ndarray
  mask: np.ndarray
  logprobs: np.ndarray
  model_logprobs: np.ndarray
  stopped: np.ndarray
  prompt_index: np.ndarray
  n: int

  def row_tokens(self, r: int) -> list[int]:
    """The new tokens of row r, without padding."""
    return self.tokens[r, :self.lengths[r]].tolist()


def bucket(x: int, minimum: int = 1, multiple: int = 1) -> int:
  """A static size for x: the next power of two up to 64, then the next multiple of 32 up to
  256 (prefill compute grows with padding, so prompt lengths are bucketed finely), then of 256;
  at least `minimum` and a multiple of `multiple`."""
  x = max(x, minimum)
  if x <= 64:
    b = 1 << (x - 1).bit_length()
  elif x <= 256:
    b = -(-x // 32) * 32
  else:
    b = -(-x // 256) * 256
  return -(-b // multiple) * multiple


def batch_divisor(mesh, rules) -> int:
  """How many ways the batch axis is split on `mesh` under `rules` (1 without a mesh)."""
  return _ways(mesh, rules, "batch")


def decode_layout(layout: str, mesh, rules) -> str:
  """The decode loop's layout that `layout` stands for on `mesh` under `rules`.

  "auto" is "split" (`kdknob_jax.models.split`: per-layer weights and caches, a prompt's cache
  shared by its samples) unless the weights are sharded over the model width (FSDP). There
  each layer's weights are gathered inside the loop, and the split layout would gather every
  layer's at once before it: Gemma-3-12B's sampling program held 66 GiB a device on 8
  devices against 24 GiB stacked (`python -m kdknob_jax.plan`).

  Raises:
    ValueError: an unknown layout.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
  if layout != "auto":
    return layout
  return "stacked" if _ways(mesh, rules, "embed") > 1 else "split"


def _ways(mesh, rules, name: str) -> int:
  """How many ways the logical axis `name` is split on `mesh` under `rules` (1 without one)."""
  if mesh is None:
    return 1
  target = dict(rules).get(name)
  axes = (target,) if isinstance(target, str) else tuple(target or ())
  return int(np.prod([mesh.shape[a] for a in axes]))


def _row_keys(key: jax.Array, prompt_ids: jax.Array, n: int) -> jax.Array:
  """[B * n] keys: fold_in(fold_in(key, prompt id), sample index)."""
  per_prompt = jax.vmap(lambda p: jax.random.fold_in(key, p))(prompt_ids)
  return jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(n)))(
      per_prompt).reshape(-1, *per_prompt.shape[1:])


def _constrain_cache(cache: dict) -> dict:
  return {k: nn.with_logical_constraint(v, CACHE_AXES[k]) for k, v in cache.items()}


@flax.struct.dataclass
class DecodeState:
  """What the decode loop carries from step to step.

  Attributes:
    tokens: int32 [R, N] tokens so far; `pad_id` after a row's end and in later columns.
    logprobs: float32 [R, N] log-probs under the sampling distribution; 0 where not written.
    model_logprobs: float32 [R, N] log-probs under the untempered model; 0 where not written.
    new_lengths: int32 [R] tokens emitted by each row.
    done: bool [R] rows that emitted a stop id, and padding rows from the start.
    last: int32 [R] each row's latest token, the next step's input.
    cache: the KV cache of `init_cache`, R rows wide.
    step: int32 [] the column the next step writes.
  """
  tokens: jax.Array
  logprobs: jax.Array
  model_logprobs: jax.Array
  new_lengths: jax.Array
  done: jax.Array
  last: jax.Array
  cache: dict
  step: jax.Array


@functools.partial(jax.jit, static_argnames=(
    "cfg", "n", "max_new", "sampling", "stop_ids", "pad_id", "mesh", "rules", "layout"))
def _decode(params, prompt_bp, lengths_b, live_b, prompt_ids_b, key, *, cfg: ModelConfig, n: int,
            max_new: int, sampling: SamplingConfig, stop_ids: tuple[int, ...], pad_id: int,
            mesh, rules, layout: str):
  with sharding_lib.mesh_context(mesh, rules):
    out = _decode_body(params, prompt_bp, lengths_b, live_b, prompt_ids_b, key, cfg, n, max_new,
                       sampling, stop_ids, pad_id, layout)
  if mesh is not None:
    # The host reads every row (on every process), and the outputs are small: replicate them.
    out = jax.lax.with_sharding_constraint(
        out, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return out


def _decode_body(params, prompt_bp, lengths_b, live_b, prompt_ids_b, key, cfg, n, max_new,
                 sampling, stop_ids, pad_id, layout):
  b, p = prompt_bp.shape
  r = b * n
  prompt_bp = nn.with_logical_constraint(prompt_bp, ("batch", "length"))
  slots = jnp.arange(p, dtype=jnp.int32)
  positions_bp = jnp.where(slots[None, :] < lengths_b[:, None], slots[None, :], -1)
  # The last step's token is never fed back, so P + N - 1 slots hold everything attended to.
  # The split layout keeps the new tokens' slots apart, one set per row.
  cache = _constrain_cache(init_cache(cfg, b, p + max_new - 1 if layout == "stacked" else p))
  _, cache, hidden_bpd = forward(params, cfg, prompt_bp, positions_bp, cache,
                                 compute_logits=False)
  last_bd = jnp.take_along_axis(hidden_bpd, (lengths_b - 1)[:, None, None], axis=1)
  logits_bv = logits_from_hidden(params, cfg, last_bd)[:, 0]

  # n samples per prompt share one prefill: its cache is kept once per prompt (split) or
  # repeated for the samples (stacked), never recomputed.
  if layout == "split":
    per_layer = split_params(params, cfg)
    cache = split_cache(cache, n, max(max_new - 1, 1))
    step_forward = lambda tok, pos, c: split_step(per_layer, cfg, tok, pos, c)
    constrain = constrain_split_cache
  else:
    cache = _constrain_cache({
        "k": jnp.repeat(cache["k"], n, axis=1), "v": jnp.repeat(cache["v"], n, axis=1),
        "pos": jnp.repeat(cache["pos"], n, axis=0), "index": cache["index"]})
    step_forward = lambda tok, pos, c: forward(params, cfg, tok, pos, c)
    constrain = _constrain_cache
  logits_rv = jnp.repeat(logits_bv, n, axis=0)
  lengths_r = jnp.repeat(lengths_b, n)
  live_r = jnp.repeat(live_b, n)
  keys_r = _row_keys(key, prompt_ids_b, n)
  stops = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

  def choose(logits, step):
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_r)
    return sample(logits, step_keys, sampling)

  def record(state: DecodeState, step, tok, lp, mlp) -> DecodeState:
    active = ~state.done
    col = lambda buf, val, fill: jax.lax.dynamic_update_slice(  # pylint: disable=g-long-lambda
        buf, jnp.where(active, val, fill).astype(buf.dtype)[:, None], (0, step))
    return state.replace(
        tokens=col(state.tokens, tok, pad_id),
        logprobs=col(state.logprobs, lp, 0.0),
        model_logprobs=col(state.model_logprobs, mlp, 0.0),
        new_lengths=state.new_lengths + active.astype(jnp.int32),
        done=state.done | (active & jnp.isin(tok, stops)),
        last=tok)

  state = DecodeState(
      tokens=jnp.full((r, max_new), pad_id, jnp.int32),
      logprobs=jnp.zeros((r, max_new), jnp.float32),
      model_logprobs=jnp.zeros((r, max_new), jnp.float32),
      new_lengths=jnp.zeros((r,), jnp.int32),
      done=~live_r,
      last=jnp.zeros((r,), jnp.int32),
      cache=cache,
      step=jnp.ones((), jnp.int32))
  state = record(state, 0, *choose(logits_rv, 0))

  def cond(state: DecodeState):
    return (state.step < max_new) & ~jnp.all(state.done)

  def body(state: DecodeState) -> DecodeState:
    step = state.step
    # Finished rows feed position -1: their slot is written but never attended to.
    pos_r = jnp.where(state.done, -1, lengths_r + step - 1)
    logits, cache = step_forward(state.last[:, None], pos_r[:, None], state.cache)
    state = record(state.replace(cache=constrain(cache)), step,
                   *choose(logits[:, 0], step))
    return state.replace(step=step + 1)

  state = jax.lax.while_loop(cond, body, state)
  # A live row is done only by emitting a stop id; rows that hit max_new_tokens are not done.
  return {"tokens": state.tokens, "logprobs": state.logprobs,
          "model_logprobs": state.model_logprobs, "new_lengths": state.new_lengths,
          "stopped": state.done & live_r}


def decode_program():
  """The jitted prefill-and-decode program `Sampler` runs, for ahead-of-time lowering
  (`kdknob_jax.planning`): `(params, prompts [B, P], lengths [B], live [B], prompt ids [B],
  key, *, cfg, n, max_new, sampling, stop_ids, pad_id, mesh, rules, layout)`, the layout
  resolved by `decode_layout`."""
  return _decode


def check_prompts(prompts: Sequence[Sequence[int]], cfg: ModelConfig, max_new_tokens: int,
                  max_prompt_tokens: int | None) -> None:
  """Validates a batch of prompt ids against the model and the length limit.

  Raises:
    ValueError: naming the problem and the fix.
  """
  if len(prompts) == 0:
    raise ValueError("The batch holds no prompts: pass at least one prompt.")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  limit = max_prompt_tokens
  if limit is None:
    limit = cfg.max_position_embeddings - max_new_tokens
  for i, ids in enumerate(prompts):
    if len(ids) == 0:
      raise ValueError(f"Prompt {i} has no tokens; every prompt needs at least one (e.g. BOS).")
    if len(ids) > limit:
      raise ValueError(
          f"Prompt {i} has {len(ids)} tokens, more than the maximum of {limit} (the model's "
          f"{cfg.max_position_embeddings} positions minus {max_new_tokens} new tokens, or the "
          "configured max_prompt_tokens). Shorten or truncate the prompt, or raise the limit.")
    bad = [t for t in ids if not 0 <= int(t) < cfg.vocab_size]
    if bad:
      raise ValueError(f"Prompt {i} holds token id {bad[0]} outside the vocabulary "
                       f"[0, {cfg.vocab_size}); was it encoded with another model's tokenizer?")


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Samples continuations of token-id prompts; built once per model and mesh.

  Attributes:
    config: the model's config.
    stop_ids: a row ends after emitting any of these (it is kept in the output).
    pad_id: written after each row's end and into prompt padding.
    mesh: a `jax.sharding.Mesh`; prompts are sharded over the batch axes, heads over tensor.
    rules: logical-axis rules for the mesh.
    prompt_slots: pad prompts to at least this many slots, so that calls with prompts of
      different lengths share one compiled program (a training loop's choice).
    max_prompt_tokens: longest allowed prompt (default: the model's positions minus N).
    layout: "split" runs the decode loop over per-layer weights and caches
      (`kdknob_jax.models.split`: faster steps, a second copy of the weights during the call,
      compile time growing with depth); "stacked" over the scanned decoder's stacked arrays;
      "auto" (`decode_layout`) picks split unless the weights are FSDP-sharded.
  """
  config: ModelConfig
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  mesh: jax.sharding.Mesh | None = None
  rules: tuple = sharding_lib.DEFAULT_RULES
  prompt_slots: int = 0
  max_prompt_tokens: int | None = None
  layout: str = "auto"

  def __post_init__(self):
    decode_layout(self.layout, self.mesh, self.rules)  # fails early on an unknown layout
    # Plain ints and tuples: they are static arguments of the compiled program, so they must
    # hash (a list or numpy array of stop ids would not).
    object.__setattr__(self, "stop_ids", tuple(int(s) for s in self.stop_ids))
    object.__setattr__(self, "pad_id", int(self.pad_id))
    object.__setattr__(self, "rules", tuple(self.rules))

  @classmethod
  def for_tokenizer(cls, config: ModelConfig, tokenizer: Tokenizer, *, mesh=None,
                    rules: Sequence[tuple[str, object]] = sharding_lib.DEFAULT_RULES,
                    prompt_slots: int = 0, stop: bool = True) -> Sampler:
    """A sampler that stops at the tokenizer's EOS ids (none when `stop` is False) and pads
    with `pad_id_of(tokenizer)`, or 0 for a tokenizer with neither a pad nor an EOS id."""
    # A pad is never attended to and only fills rows past their end, so 0 serves for none.
    pad = pad_id_of(tokenizer) if tokenizer.pad_id is not None or tokenizer.eos_ids else 0
    return cls(config, stop_ids=tokenizer.eos_ids if stop else (), pad_id=pad, mesh=mesh,
               rules=rules, prompt_slots=prompt_slots)

  def __call__(self, params: dict, prompts: Sequence[Sequence[int]], *, n: int = 1,
               max_new_tokens: int = 64, sampling: SamplingConfig = SamplingConfig(),
               key: jax.Array | None = None,
               prompt_ids: Sequence[int] | None = None) -> Generation:
    """Samples n continuations of each prompt in one compiled program.

    Args:
      params: the model's params (sharded on `mesh` when the sampler has one).
      prompts: token ids of each prompt (B >= 1 prompts of >= 1 token each).
      n: samples per prompt; the prompt is prefilled once for all n.
      max_new_tokens: N, the most new tokens of a row.
      sampling: greedy / temperature / top-k / top-p settings.
      key: PRNG key; same key, same output. Defaults to PRNGKey(0).
      prompt_ids: an id per prompt for its keys (default 0..B-1); pass global ids to make
        outputs independent of how a dataset is split into calls.

    Returns:
      A `Generation` whose N axis is trimmed to the longest row.

    Raises:
      ValueError: empty batch, empty or too long prompt, ids outside the vocabulary, n < 1.
    """
    if n < 1:
      raise ValueError(f"n (samples per prompt) must be >= 1, got {n}.")
    check_prompts(prompts, self.config, max_new_tokens, self.max_prompt_tokens)
    b = len(prompts)
    if prompt_ids is not None and len(prompt_ids) != b:
      raise ValueError(f"prompt_ids has {len(prompt_ids)} entries for {b} prompts.")
    longest = max(len(x) for x in prompts)
    bb = bucket(b, multiple=batch_divisor(self.mesh, self.rules))
    pp = bucket(max(longest, self.prompt_slots), _MIN_PROMPT_BUCKET)
    tokens = np.full((bb, pp), self.pad_id, np.int32)
    lengths = np.ones((bb,), np.int32)  # padding rows: one token, never live
    live = np.zeros((bb,), bool)
    ids = np.zeros((bb,), np.int32)
    ids[:b] = np.arange(b) if prompt_ids is None else np.asarray(prompt_ids)
    for i, row in enumerate(prompts):
      tokens[i, :len(row)] = row
      lengths[i] = len(row)
      live[i] = True
    key = jax.random.PRNGKey(0) if key is None else key
    out = _decode(params, tokens, lengths, live, ids, key, cfg=self.config, n=n,
                  max_new=max_new_tokens, sampling=sampling, stop_ids=self.stop_ids,
                  pad_id=self.pad_id, mesh=self.mesh, rules=self.rules,
                  layout=decode_layout(self.layout, self.mesh, self.rules))
    out = jax.device_get(out)
    rows = b * n
    new_lengths = out["new_lengths"][:rows]
    width = max(1, int(new_lengths.max()))
    return Generation(
        tokens=out["tokens"][:rows, :width], lengths=new_lengths,
        mask=np.arange(width)[None, :] < new_lengths[:, None],
        logprobs=out["logprobs"][:rows, :width],
        model_logprobs=out["model_logprobs"][:rows, :width], stopped=out["stopped"][:rows],
        prompt_index=np.repeat(np.arange(b, dtype=np.int32), n), n=n)
