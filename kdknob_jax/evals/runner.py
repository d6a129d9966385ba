"""Evaluate a model on a task: sample n completions per prompt (plus one greedy), grade them.

  model, tok = load_trained("smollm2-135m-instruct")
  task = get_task("capitals")
  records = load_records(task.default_source)
  result = evaluate(model.params, model.config, tok, task, records, n=16, ks=(1, 16))
  result.metrics   # {"accuracy": ..., "maj@16": ..., "pass@1": ..., "greedy_accuracy": ...}

Every prompt draws its samples from its own keys, fold_in(PRNGKey(seed), record index), so
the samples of a record do not depend on `prompts_per_call`, on the other records in the
call, or on the mesh (see `kdknob_jax.decode.engine`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.data.tasks import Task
from kdknob_jax.decode.engine import Sampler, check_prompts
from kdknob_jax.decode.sampling import GREEDY, SamplingConfig
from kdknob_jax.decode.text import encode_prompts, samples_from
from kdknob_jax.errors import ConfigError
from kdknob_jax.evals import metrics as metrics_lib
from kdknob_jax.hf.tokenizer import Tokenizer
from kdknob_jax.models import ModelConfig


@dataclasses.dataclass
class SampleResult:
  """One graded completion.

  Attributes:
    text: the completion (special tokens skipped).
    answer: the task's extracted, normalized answer, or None when it gave none.
    correct: whether that answer is correct.
    tokens: completion length in tokens (a final stop token included).
    stopped: True when it ended on an EOS id, False when it hit max_new_tokens.
  """
  text: str
  answer: str | None
  correct: bool
  tokens: int
  stopped: bool


@dataclasses.dataclass
class PromptResult:
  """The samples of one record.

  Attributes:
    index: the record's position in the `records` passed to `evaluate`.
    location: where the record came from ("file.jsonl:12"), when the records know.
    prompt: the user message sent (before any chat template).
    gold: the normalized gold answer.
    samples: the n sampled completions.
    greedy: the greedy completion, or None when greedy decoding was off.
    majority: the most common extracted answer among `samples` (None: no sample answered).
    majority_correct: whether `majority` is correct.
  """
  index: int
  location: str | None
  prompt: str
  gold: str
  samples: list[SampleResult]
  greedy: SampleResult | None
  majority: str | None
  majority_correct: bool

  @property
  def num_correct(self) -> int:
    return sum(s.correct for s in self.samples)


@dataclasses.dataclass
class EvalResult:
  """What `evaluate` returns.

  Attributes:
    task: the task's name.
    prompts: one `PromptResult` per record, in record order.
    metrics: dataset means and counts (see `evaluate`).
    config: the settings of the run (n, ks, sampling, seed, ...).
    seconds: wall-clock time of the decoding and grading (compilation included).
  """
  task: str
  prompts: list[PromptResult]
  metrics: dict[str, float]
  config: dict[str, Any]
  seconds: float = 0.0

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict of everything (the `samples.json` layout)."""
    return {"task": self.task, "config": self.config, "metrics": self.metrics,
            "seconds": self.seconds, "prompts": [dataclasses.asdict(p) for p in self.prompts]}


def check_settings(n: int, ks: Sequence[int], temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> SamplingConfig:
  """Validates the sampling settings of an evaluation (cheap: call it before loading a model).

  Returns:
    The `SamplingConfig` of the n samples.

  Raises:
    ConfigError: n < 1, a k outside 1..n, or bad temperature / top_k / top_p.
  """
  if n < 1:
    raise ConfigError(f"n (samples per prompt) must be >= 1, got {n}.")
  bad = [k for k in ks if not 1 <= int(k) <= n]
  if bad:
    raise ConfigError(f"pass@k needs 1 <= k <= n; k={bad} is outside 1..{n}. Raise n or drop "
                      f"those k.")
  try:
    return SamplingConfig(temperature, top_k, top_p)
  except ValueError as e:
    raise ConfigError(f"Sampling settings: {e}") from e


def _grade(task: Task, record: dict, sample) -> SampleResult:
  answer = task.extract(sample.text, task.labels(record))
  return SampleResult(text=sample.text, answer=answer, correct=task.grade(answer, record),
                      tokens=len(sample.tokens), stopped=sample.stopped)


def _dataset_metrics(prompts: list[PromptResult], n: int, ks: Sequence[int],
                     greedy: bool) -> dict[str, float]:
  correct = [[s.correct for s in p.samples] for p in prompts]
  answers = [[s.answer for s in p.samples] for p in prompts]
  out = metrics_lib.summarize(correct, answers, ks)
  samples = [s for p in prompts for s in p.samples]
  if greedy:
    out["greedy_accuracy"] = float(np.mean([p.greedy.correct for p in prompts]))
    out["greedy_answered"] = float(np.mean([p.greedy.answer is not None for p in prompts]))
  out["mean_tokens"] = float(np.mean([s.tokens for s in samples]))
  out["truncated"] = float(np.mean([not s.stopped for s in samples]))
  out["prompts"] = len(prompts)
  out["samples_per_prompt"] = n
  out["samples"] = len(samples)
  return out


def evaluate(params: dict, cfg: ModelConfig, tokenizer: Tokenizer, task: Task,
             records: Sequence[dict], *, n: int = 16, ks: Sequence[int] | None = None,
             max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, greedy: bool = True, chat: bool | None = None, seed: int = 0,
             prompts_per_call: int = 32, mesh=None,
             rules: Sequence[tuple[str, object]] = sharding_lib.DEFAULT_RULES,
             progress: bool = True) -> EvalResult:
  """Samples, extracts and grades answers for every record.

  Args:
    params, cfg: the model (params sharded on `mesh` when one is given).
    tokenizer: its tokenizer; samples stop at its EOS ids.
    task: how to prompt and grade (`kdknob_jax.data.get_task`).
    records: rows from `load_records`; all are checked before any decoding.
    n: sampled completions per prompt.
    ks: the k of each pass@k (each in 1..n); default (1, n).
    max_new_tokens: the most tokens per completion.
    temperature, top_k, top_p: the sampling of the n completions.
    greedy: also decode one greedy completion per prompt ("greedy_accuracy").
    chat: wrap prompts in the chat template (default: when the tokenizer has one).
    seed: the PRNG seed; same seed, same samples.
    prompts_per_call: prompts decoded per compiled call (rows = prompts_per_call * n).
    mesh, rules: decode sharded on this mesh.
    progress: show a progress bar over prompts.

  Returns:
    An `EvalResult`. Its metrics: "accuracy" (mean correctness over all samples), "maj@{n}",
    "pass@{k}" for each k, "answered" (share of samples with an extracted answer),
    "greedy_accuracy" and "greedy_answered" (when greedy), "mean_tokens" (mean completion
    length), "truncated" (share that hit max_new_tokens), and the counts "prompts",
    "samples_per_prompt" and "samples".

  Raises:
    DataError: a record the task cannot use (named by file and line when known).
    ConfigError: bad n, ks, sampling settings or prompts_per_call, or a prompt too long for
      the model with max_new_tokens.
  """
  ks = tuple(int(k) for k in (ks if ks is not None else (1, n)))
  ks = tuple(dict.fromkeys(ks))  # "--k 1,1" or n == 1 would otherwise report a key twice
  sampling = check_settings(n, ks, temperature, top_k, top_p)
  if prompts_per_call < 1:
    raise ConfigError(f"prompts_per_call must be >= 1, got {prompts_per_call}.")
  task.check_records(records)
  texts = [task.prompt(r) for r in records]
  ids = encode_prompts(tokenizer, texts, chat)
  try:  # every prompt is checked before the first call runs, so a bad one costs no decoding
    check_prompts(ids, cfg, max_new_tokens, None)
  except ValueError as e:
    raise ConfigError(f"{e} (Prompt numbers count records from 0; a lower max_new_tokens "
                      f"leaves more room.)") from e
  sampler = Sampler.for_tokenizer(cfg, tokenizer, mesh=mesh, rules=rules)
  key = jax.random.PRNGKey(seed)
  locate = getattr(records, "where", None)

  t0 = time.perf_counter()
  prompts: list[PromptResult] = []
  bar = tqdm(total=len(ids), desc=f"eval {task.name}", unit="prompt", disable=not progress)
  for start in range(0, len(ids), prompts_per_call):
    chunk = ids[start:start + prompts_per_call]
    global_ids = np.arange(start, start + len(chunk))
    sampled = samples_from(sampler(params, chunk, n=n, max_new_tokens=max_new_tokens,
                                   sampling=sampling, key=key, prompt_ids=global_ids),
                           tokenizer, start)
    greedy_out = []
    if greedy:
      greedy_out = samples_from(sampler(params, chunk, n=1, max_new_tokens=max_new_tokens,
                                        sampling=GREEDY, key=key, prompt_ids=global_ids),
                                tokenizer, start)
    for i in range(start, start + len(chunk)):
      record = records[i]
      graded = [_grade(task, record, s) for s in sampled if s.prompt_index == i]
      answers = [s.answer for s in graded]
      majority = metrics_lib.majority_vote(answers)
      prompts.append(PromptResult(
          index=i, location=locate(i) if locate else None, prompt=texts[i],
          gold=task.reference(record), samples=graded,
          greedy=next((_grade(task, record, s) for s in greedy_out if s.prompt_index == i), None),
          majority=majority,
          majority_correct=bool(metrics_lib.maj_at_n(answers, [s.correct for s in graded]))))
    bar.update(len(chunk))
  bar.close()

  config = {"task": task.name, "n": n, "ks": list(ks), "max_new_tokens": max_new_tokens,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy,
            "chat": chat, "seed": seed, "prompts_per_call": prompts_per_call}
  return EvalResult(task=task.name, prompts=prompts,
                    metrics=_dataset_metrics(prompts, n, ks, greedy), config=config,
                    seconds=time.perf_counter() - t0)
