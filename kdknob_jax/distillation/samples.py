"""Teacher samples for SFT and off-policy GKD: drawn once per run and cached as Parquet.

The cache holds, for every train prompt, G completions of the teacher (tokens, text, whether
they stopped). Its Parquet schema metadata records what produced it (teacher, checkpoint step,
sampling settings, data, seed); a run whose settings differ refuses the file rather than
train on samples of another teacher, and a rerun reads it instead of sampling again. Several
students of one teacher may share a cache (`samples_cache`), as the pipeline's do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from kdknob_jax import settings as settings_lib
from kdknob_jax.decode import Generation, Sampler, SamplingConfig
from kdknob_jax.errors import ConfigError
from kdknob_jax.hf.tokenizer import completion_ids

_META_KEY = b"kdknob_samples"
# The config keys whose values produced the samples (with the teacher's checkpoint step).
_META_KEYS = ("teacher", "temperature", "top_k", "top_p", "samples_per_prompt",
              "max_new_tokens", "chat", "train", "seed")


@dataclasses.dataclass
class TeacherSamples:
  """Completions of every train prompt, prompt-major: row i·G + j is sample j of prompt i.

  Attributes:
    tokens: [R] token-id lists (a final stop id included).
    texts: [R] decoded completions.
    stopped: [R] ended on a stop id.
    per_prompt: G.
  """
  tokens: list[list[int]]
  texts: list[str]
  stopped: np.ndarray
  per_prompt: int

  def generation(self, prompts: Sequence[int], n: int, max_new_tokens: int) -> Generation:
    """The cached samples of `prompts` as a `Generation` (the layout the step reads)."""
    if n > self.per_prompt:
      raise ConfigError(f"{n} samples per prompt asked of a cache holding {self.per_prompt}.")
    rows = [int(p) * self.per_prompt + j for p in prompts for j in range(n)]
    lengths = np.array([min(len(self.tokens[r]), max_new_tokens) for r in rows], np.int32)
    width = max(1, int(lengths.max()))
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
      tokens[i, :lengths[i]] = self.tokens[r][:lengths[i]]
    zeros = np.zeros(tokens.shape, np.float32)
    return Generation(tokens=tokens, lengths=lengths,
                      mask=np.arange(width)[None, :] < lengths[:, None], logprobs=zeros,
                      model_logprobs=zeros, stopped=self.stopped[rows],
                      prompt_index=np.repeat(np.arange(len(prompts), dtype=np.int32), n), n=n)

  def retokenized(self, tokenizer, same_tokenizer: bool, chat: bool | None = None
                  ) -> "TeacherSamples":
    """The samples in the student's tokens: the same ids when the tokenizers agree, else the
    text re-encoded; a stopped sample then ends as the student ends a turn (its chat
    template's end-of-turn token when `chat`, else its EOS: `hf.tokenizer.end_ids`; None: when
    the student has a template, as its `encode_prompt` does)."""
    if same_tokenizer:
      return self
    tokens = [completion_ids(tokenizer, t, bool(s), chat=chat)
              for t, s in zip(self.texts, self.stopped)]
    return dataclasses.replace(self, tokens=tokens)


def correct_indices(texts: Sequence[str], task, records: Sequence[dict]) -> np.ndarray:
  """The rows whose sample text (one per record, in record order) the task's verifier marks
  correct."""
  return np.array([i for i, (t, r) in enumerate(zip(texts, records)) if task.is_correct(t, r)],
                  np.int64)


def cache_meta(config, teacher_step: int | None) -> dict:
  """What identifies a cache: the producing settings and the teacher's checkpoint step."""
  d = settings_lib.as_dict(config)
  return json.loads(json.dumps(dict({k: d[k] for k in _META_KEYS}, teacher_step=teacher_step)))


def read(path: Path, meta: dict) -> TeacherSamples | None:
  """The cache at `path`, or None when there is none.

  Raises:
    ConfigError: the file holds samples made with other settings.
  """
  if not path.is_file():
    return None
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    table = pq.read_table(path)
    saved = json.loads((table.schema.metadata or {}).get(_META_KEY, b"null"))
  except Exception as e:  # pyarrow raises several types for a damaged file
    raise ConfigError(f"The teacher-samples cache {path} cannot be read ({e}). Delete it to "
                      "sample again.") from e
  if saved != meta:
    diff = {k: (saved.get(k) if saved else None, meta[k]) for k in meta
            if not saved or saved.get(k) != meta[k]}
    raise ConfigError(f"The teacher-samples cache {path} was made with other settings "
                      f"(cache vs run: {diff}). Delete it, or set config.samples_cache to another "
                      "path, to sample this run's teacher again.")
  cols = table.to_pydict()
  return TeacherSamples([list(t) for t in cols["tokens"]], list(cols["text"]),
                        np.asarray(cols["stopped"], bool), int(saved["samples_per_prompt"]))


def write(path: Path, samples: TeacherSamples, meta: dict) -> None:
  """Writes the cache atomically (a temporary file renamed), from process 0 only."""
  if jax.process_index() != 0:
    return
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  n = len(samples.tokens)
  table = pa.table({
      "prompt": pa.array(np.arange(n) // samples.per_prompt, pa.int32()),
      "sample": pa.array(np.arange(n) % samples.per_prompt, pa.int32()),
      "tokens": pa.array(samples.tokens, pa.list_(pa.int32())),
      "text": pa.array(samples.texts, pa.string()),
      "stopped": pa.array(samples.stopped.tolist(), pa.bool_()),
  }).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  pq.write_table(table, tmp)
  os.replace(tmp, path)


def sample(params: dict, cfg, tokenizer, prompts: Sequence[Sequence[int]], config, mesh=None,
           rules=(), progress: bool = True) -> TeacherSamples:
  """G = `config.samples_per_prompt` samples of every prompt, `config.sample_batch` prompts
  per decoder call. Keys derive from each prompt's index, so the split does not matter."""
  c = config
  key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 2)
  sampler = Sampler.for_tokenizer(cfg, tokenizer, mesh=mesh, rules=rules)
  sampling = SamplingConfig(c.temperature, c.top_k, c.top_p)
  tokens, texts, stopped = [], [], []
  bar = tqdm(total=len(prompts), desc="teacher samples", unit="prompt",
             disable=not progress or jax.process_index() != 0)
  for lo in range(0, len(prompts), c.sample_batch):
    chunk = list(prompts[lo:lo + c.sample_batch])
    gen = sampler(params, chunk, n=c.samples_per_prompt, max_new_tokens=c.max_new_tokens,
                  sampling=sampling, key=key, prompt_ids=np.arange(lo, lo + len(chunk)))
    for r in range(gen.tokens.shape[0]):
      tokens.append(gen.row_tokens(r))
      texts.append(tokenizer.decode(gen.row_tokens(r)))
      stopped.append(bool(gen.stopped[r]))
    bar.update(len(chunk))
  bar.close()
  return TeacherSamples(tokens, texts, np.asarray(stopped, bool), int(c.samples_per_prompt))
