"""Text in, text out: prompts are encoded per the tokenizer (chat template or plain text),
decoded in chunks by one `Sampler`, and returned with their tokens and log-probs."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.decode.engine import Generation, Sampler, check_prompts
from kdknob_jax.decode.sampling import SamplingConfig
from kdknob_jax.hf.load import LoadedModel
from kdknob_jax.hf.tokenizer import Tokenizer

Prompt = str | Sequence[dict[str, str]]


@dataclasses.dataclass
class Sample:
  """One sampled continuation of one prompt.

  Attributes:
    prompt_index: the prompt's position in the call.
    sample_index: 0..n-1.
    text: the decoded continuation (special tokens skipped).
    tokens: its token ids, a final stop id included.
    logprobs: per-token log-probs under the sampling distribution used.
    model_logprobs: per-token log-probs under the untempered model.
    stopped: True when it ended on a stop id, False when it hit max_new_tokens.
  """
  prompt_index: int
  sample_index: int
  text: str
  tokens: list[int]
  logprobs: list[float]
  model_logprobs: list[float]
  stopped: bool


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[Prompt],
                   chat: bool | None = None) -> list[list[int]]:
  """Token ids of each prompt: chat messages or strings, per `Tokenizer.encode_prompt`."""
  return [tokenizer.encode_prompt(p, chat=chat) for p in prompts]


def samples_from(gen: Generation, tokenizer: Tokenizer, offset: int = 0) -> list[Sample]:
  """Turns a `Generation` into `Sample`s (prompt indices shifted by `offset`)."""
  out = []
  for r in range(gen.tokens.shape[0]):
    ln = int(gen.lengths[r])
    toks = gen.tokens[r, :ln].tolist()
    out.append(Sample(
        prompt_index=offset + int(gen.prompt_index[r]), sample_index=r % gen.n,
        text=tokenizer.decode(toks), tokens=toks, logprobs=gen.logprobs[r, :ln].tolist(),
        model_logprobs=gen.model_logprobs[r, :ln].tolist(), stopped=bool(gen.stopped[r])))
  return out


def generate_text(model: LoadedModel, tokenizer: Tokenizer, prompts: Sequence[Prompt], *,
                  n: int = 1, max_new_tokens: int = 256,
                  sampling: SamplingConfig = SamplingConfig(), key: jax.Array | None = None,
                  chat: bool | None = None, stop_ids: Sequence[int] | None = None,
                  prompts_per_call: int = 64, max_prompt_tokens: int | None = None, mesh=None,
                  rules: Sequence[tuple[str, object]] = sharding_lib.DEFAULT_RULES,
                  progress: bool = True) -> list[list[Sample]]:
  """Samples n continuations of each text prompt.

  Prompts are decoded `prompts_per_call` at a time; each prompt's keys come from its index in
  `prompts`, so results do not depend on how the list is split into calls.

  Args:
    model: from `kdknob_jax.hf.load_model` (sharded on `mesh` when one is given).
    tokenizer: from `kdknob_jax.hf.load_tokenizer`.
    prompts: strings, or chat message lists ([{"role": ..., "content": ...}]).
    n: samples per prompt.
    max_new_tokens: the most new tokens per sample.
    sampling: greedy / temperature / top-k / top-p.
    key: PRNG key (default PRNGKey(0)).
    chat: wrap string prompts in the chat template (default: when the tokenizer has one).
    stop_ids: end a sample on these ids (default: the tokenizer's EOS ids).
    prompts_per_call: prompts per compiled call.
    max_prompt_tokens: longest allowed prompt.
    mesh, rules: run sharded on this mesh.
    progress: show a progress bar when there is more than one call.

  Returns:
    For each prompt, its n samples.
  """
  if prompts_per_call < 1:
    raise ValueError(f"prompts_per_call must be >= 1, got {prompts_per_call}.")
  ids = encode_prompts(tokenizer, prompts, chat)
  # Every chunk is checked before the first one runs, so bad input costs no decoding.
  check_prompts(ids, model.config, max_new_tokens, max_prompt_tokens)
  sampler = dataclasses.replace(
      Sampler.for_tokenizer(model.config, tokenizer, mesh=mesh, rules=rules),
      max_prompt_tokens=max_prompt_tokens)
  if stop_ids is not None:
    sampler = dataclasses.replace(sampler, stop_ids=tuple(stop_ids))
  key = jax.random.PRNGKey(0) if key is None else key
  starts = range(0, len(ids), prompts_per_call)
  out: list[list[Sample]] = [[] for _ in ids]
  for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
    chunk = ids[start:start + prompts_per_call]
    gen = sampler(model.params, chunk, n=n, max_new_tokens=max_new_tokens, sampling=sampling,
                  key=key, prompt_ids=np.arange(start, start + len(chunk)))
    for s in samples_from(gen, tokenizer, offset=start):
      out[s.prompt_index].append(s)
  return out
