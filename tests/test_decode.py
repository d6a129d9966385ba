"""The batched decoder on tiny random checkpoints: HF generate parity, log-probs, stops, padding."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import TINY, random_ids
from kdknob_jax.decode import GREEDY, Sampler, SamplingConfig, filtered_logits
from kdknob_jax.hf import load_model
from kdknob_jax.models import forward

PROMPT_LENGTHS = (5, 11, 18)  # different lengths in one batch; 18 + 32 spans many Gemma windows


def _prompts(vocab: int, seed: int = 0) -> list[list[int]]:
  return [random_ids(vocab, (n,), seed + i).tolist() for i, n in enumerate(PROMPT_LENGTHS)]


def _hf_greedy(path, prompt: list[int], new_tokens: int) -> tuple[list[int], int | list | None]:
  """HF generate, one prompt at a time (no padding at all), greedy; returns new tokens."""
  model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                               attn_implementation="eager").eval()
  eos = model.generation_config.eos_token_id
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                            dtype=torch.long),
                         do_sample=False, max_new_tokens=new_tokens, pad_token_id=0)
  new = out[0, len(prompt):].tolist()
  stops = [eos] if isinstance(eos, int) else list(eos or [])
  for i, t in enumerate(new):  # HF pads after the first stop id
    if t in stops:
      return new[:i + 1], stops
  return new, stops


@pytest.mark.parametrize("name", sorted(TINY))
def test_greedy_equals_hf_generate(tiny_dir, name):
  path = tiny_dir(name)
  m = load_model(path)
  prompts = _prompts(TINY[name]["vocab_size"])
  refs = [_hf_greedy(path, p, 32) for p in prompts]
  stops = refs[0][1]
  gen = Sampler(m.config, stop_ids=stops)(m.params, prompts, max_new_tokens=32,
                                          sampling=GREEDY)
  for i, (ref, _) in enumerate(refs):
    assert gen.row_tokens(i) == ref, (i, gen.row_tokens(i), ref)


def _teacher_forced_logits(m, prompt, new):
  ids = jnp.asarray([list(prompt) + list(new)])
  logits = forward(m.params, m.config, ids)[0][0]
  return logits[len(prompt) - 1:len(prompt) - 1 + len(new)]  # the logits that chose `new`


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_logprobs_equal_teacher_forced(tiny_dir, name):
  m = load_model(tiny_dir(name))
  prompts = _prompts(256, seed=5)
  cfg = SamplingConfig(temperature=0.7, top_k=50, top_p=0.9)
  gen = Sampler(m.config)(m.params, prompts, n=2, max_new_tokens=20, sampling=cfg,
                          key=jax.random.PRNGKey(3))
  for r in range(gen.tokens.shape[0]):
    new = gen.row_tokens(r)
    logits = _teacher_forced_logits(m, prompts[gen.prompt_index[r]], new)
    model_lp = jax.nn.log_softmax(logits, -1)[jnp.arange(len(new)), jnp.asarray(new)]
    samp_lp = jax.nn.log_softmax(filtered_logits(logits, cfg), -1)[
        jnp.arange(len(new)), jnp.asarray(new)]
    np.testing.assert_allclose(gen.model_logprobs[r, :len(new)], model_lp, atol=1e-5, rtol=0)
    np.testing.assert_allclose(gen.logprobs[r, :len(new)], samp_lp, atol=1e-5, rtol=0)
    assert np.all(np.isfinite(samp_lp))  # every sampled token survived the filters
  assert np.all(gen.logprobs[~gen.mask] == 0) and np.all(gen.model_logprobs[~gen.mask] == 0)


def test_stop_ids_end_rows_and_pad_after(tiny_dir):
  m = load_model(tiny_dir("qwen3"))
  prompts = _prompts(256, seed=9)
  free = Sampler(m.config)(m.params, prompts, max_new_tokens=12, sampling=GREEDY)
  assert free.mask.all() and not free.stopped.any()
  stop = free.row_tokens(0)[3]
  gen = Sampler(m.config, stop_ids=(stop, 255), pad_id=7)(m.params, prompts, max_new_tokens=12,
                                                          sampling=GREEDY)
  for r in range(len(prompts)):
    full = free.row_tokens(r)
    first = next((i for i, t in enumerate(full) if t in (stop, 255)), None)
    expect = full if first is None else full[:first + 1]
    assert gen.row_tokens(r) == expect
    assert gen.stopped[r] == (first is not None)
    assert gen.mask[r].sum() == len(expect)
    assert np.all(gen.tokens[r, len(expect):] == 7)
  assert gen.lengths[0] == 4


def test_all_rows_stopping_ends_the_loop_early(tiny_dir):
  m = load_model(tiny_dir("llama"))
  prompt = _prompts(256)[0]
  first = Sampler(m.config)(m.params, [prompt], max_new_tokens=1, sampling=GREEDY)
  sampler = Sampler(m.config, stop_ids=(int(first.tokens[0, 0]),))
  gen = sampler(m.params, [prompt, prompt], max_new_tokens=50, sampling=GREEDY)
  assert gen.tokens.shape[1] == 1 and gen.stopped.all()


@pytest.mark.parametrize("sampling", [GREEDY, SamplingConfig(1.0, top_k=40)])
def test_output_does_not_depend_on_batch_mates(tiny_dir, sampling):
  m = load_model(tiny_dir("gemma3"))
  prompts = _prompts(256, seed=2)
  key = jax.random.PRNGKey(11)
  sampler = Sampler(m.config)
  together = sampler(m.params, prompts, n=2, max_new_tokens=16, sampling=sampling, key=key)
  alone = sampler(m.params, [prompts[0]], n=2, max_new_tokens=16, sampling=sampling, key=key,
                  prompt_ids=[0])
  for j in range(2):
    assert alone.row_tokens(j) == together.row_tokens(j)
    np.testing.assert_allclose(alone.model_logprobs[j, :alone.lengths[j]],
                               together.model_logprobs[j, :together.lengths[j]], atol=1e-5)


def test_same_key_same_samples_other_key_other_samples(tiny_dir):
  m = load_model(tiny_dir("llama"))
  prompts = _prompts(256)
  run = lambda k: Sampler(m.config)(m.params, prompts, n=3, max_new_tokens=8,  # pylint: disable=g-long-lambda
                                    sampling=SamplingConfig(1.0), key=jax.random.PRNGKey(k)).tokens
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  assert len({tuple(row) for row in a[:3]}) > 1  # the n samples of a prompt differ


def test_bad_input_is_rejected_with_a_fix(tiny_dir):
  m = load_model(tiny_dir("llama"))
  ok = [[1, 2, 3]]
  sampler = Sampler(m.config)
  with pytest.raises(ValueError, match="no prompts"):
    sampler(m.params, [], max_new_tokens=4)
  with pytest.raises(ValueError, match="n \\(samples per prompt\\) must be >= 1"):
    sampler(m.params, ok, n=0, max_new_tokens=4)
  with pytest.raises(ValueError, match="prompt_ids has 2 entries for 1 prompts"):
    sampler(m.params, ok, max_new_tokens=4, prompt_ids=[0, 1])
  for bad_p in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="top_p must lie in \\(0, 1\\]"):
      SamplingConfig(1.0, top_p=bad_p)
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(-1.0)
  with pytest.raises(ValueError, match="Prompt 1 has 300 tokens, more than the maximum of 248"):
    sampler(m.params, [[1], [1] * 300], max_new_tokens=8)
  with pytest.raises(ValueError, match="more than the maximum of 10"):
    Sampler(m.config, max_prompt_tokens=10)(m.params, [[1] * 11], max_new_tokens=8)
  with pytest.raises(ValueError, match="Prompt 0 has no tokens"):
    sampler(m.params, [[]], max_new_tokens=8)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    sampler(m.params, [[1, 256]], max_new_tokens=8)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    sampler(m.params, ok, max_new_tokens=0)


def test_sampler_for_tokenizer_takes_stop_and_pad_ids(tiny_dir):
  cfg = load_model(tiny_dir("llama")).config
  tok = types.SimpleNamespace(eos_ids=(2, 5), pad_id=None)
  s = Sampler.for_tokenizer(cfg, tok, prompt_slots=32)
  assert (s.stop_ids, s.pad_id, s.prompt_slots, s.mesh) == ((2, 5), 2, 32, None)
  assert Sampler.for_tokenizer(cfg, tok, stop=False).stop_ids == ()
  assert Sampler.for_tokenizer(cfg, types.SimpleNamespace(eos_ids=(2,), pad_id=9)).pad_id == 9
  # Ids given as numpy become a tuple of ints: the compiled program takes them as static.
  from_numpy = Sampler(cfg, stop_ids=np.asarray([2, 5]), pad_id=np.int64(2))
  assert from_numpy == Sampler(cfg, stop_ids=(2, 5), pad_id=2)
  assert type(from_numpy.stop_ids) is tuple and type(from_numpy.pad_id) is int
