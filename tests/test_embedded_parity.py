"""The two embedded models with their real (GGUF) weights against HF transformers' GGUF loader.

The torch side reads the GGUF through transformers' own dequantization, rotary un-permutation
and Gemma norm offset, so these tests also check our GGUF conversion. Each family loads its
torch model once (tens of seconds); bfloat16 is a cast of that model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from kdknob_jax.compare.metrics import BF16_MAX_KL, BF16_MEAN_KL, BF16_VS_TORCH
from kdknob_jax.compare.run import DEFAULT_PROMPTS, compare
from kdknob_jax.compare.torch_side import load_torch_model
from kdknob_jax.decode import GREEDY, Sampler
from kdknob_jax.hf import load_model, load_tokenizer, resolve

PROMPTS = DEFAULT_PROMPTS[:3]  # a GSM8K question, an explanation, code


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma3-270m"])
def embedded(request):
  name = request.param
  return name, load_torch_model(resolve(name), "float32")


@pytest.fixture(scope="module")
def ours32(embedded):
  """Our float32 port of the same model, loaded once for both dtypes' comparisons."""
  return load_model(embedded[0], dtype="float32")


@pytest.mark.slow
def test_float32_parity_and_greedy_agreement(embedded, ours32):
  name, ref = embedded
  # 16 greedy tokens: the decoder test below follows HF `generate` for 32 on every prompt
  result = compare(name, "float32", PROMPTS, new_tokens=16, torch_model=ref,
                   float32_model=ours32)
  o = result["overall"]
  assert o["mean_kl"] <= 1e-4, o
  assert o["greedy_agreement"] == 1.0, [p["our_tokens"] for p in result["per_prompt"]]
  assert result["passed"]


@pytest.mark.slow
def test_bfloat16_parity(embedded, ours32):
  name, ref = embedded
  ref16 = copy.deepcopy(ref).to(torch.bfloat16)
  result = compare(name, "bfloat16", PROMPTS[:2], new_tokens=4, torch_model=ref16,
                   float32_model=ours32)
  ours, theirs = result["vs_float32"]["ours_bf16"], result["vs_float32"]["torch_bf16"]
  # Gated on the distance from float32; torch-vs-ours in bf16 depends on torch's CPU kernels.
  assert ours["mean_kl"] <= BF16_VS_TORCH * theirs["mean_kl"], result["vs_float32"]
  assert ours["mean_kl"] <= BF16_MEAN_KL and ours["max_kl"] <= BF16_MAX_KL, result["vs_float32"]
  assert result["passed"], result["failures"]


@pytest.mark.slow
def test_batched_greedy_decoder_equals_hf_generate(embedded, ours32):
  """All default prompts in one padded batch against HF `generate` run one prompt at a time."""
  name, ref = embedded
  tok = load_tokenizer(name)
  m = ours32
  prompts = [tok.encode_prompt(p) for p in DEFAULT_PROMPTS]
  gen = Sampler.for_tokenizer(m.config, tok)(m.params, prompts, max_new_tokens=32,
                                             sampling=GREEDY)
  for i, p in enumerate(prompts):
    with torch.no_grad():
      out = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                         do_sample=False, max_new_tokens=32, eos_token_id=list(tok.eos_ids),
                         pad_token_id=tok.eos_ids[0])
    new = out[0, len(p):].tolist()
    stop = next((j for j, t in enumerate(new) if t in tok.eos_ids), None)
    expect = new if stop is None else new[:stop + 1]
    assert gen.row_tokens(i) == expect, (name, i, tok.decode(gen.row_tokens(i)), tok.decode(expect))


@pytest.mark.slow
def test_text_logprobs_equal_torch_scoring_with_hf_tokenizer(embedded, ours32):
  """The calibration reward's scoring: each model tokenizes the text itself. Our ids equal HF's
  tokenizer (built from the same GGUF) and our summed log-probs equal the torch model's."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  from kdknob_jax.compare.torch_side import logits as torch_logits  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf.tokenizer import completion_ids  # pylint: disable=g-import-not-at-top
  from kdknob_jax.calibration.rewards import text_logprobs  # pylint: disable=g-import-not-at-top
  name, ref = embedded
  source = resolve(name)
  hf_tok = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
  tok, m = load_tokenizer(name), ours32
  prompts = ["What is 12 * 7?", "Name a primary color.", "What is 12 * 7?"]
  completions = [" 12 * 7 = 84.\n#### 84", "Blue, like the sky.", "It is eighty-four"]
  stopped = [True, False, True]
  ours = text_logprobs((m.params, m.config), tok, prompts, completions, stopped)
  for i, (p, c, s) in enumerate(zip(prompts, completions, stopped)):
    if tok.chat_template:
      p_ids = hf_tok.apply_chat_template([{"role": "user", "content": p}],
                                         add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
    else:
      p_ids = hf_tok(p)["input_ids"]
    c_ids = hf_tok(c, add_special_tokens=False)["input_ids"] + ([tok.eos_ids[0]] if s else [])
    assert tok.encode_prompt(p) == p_ids, (name, i)
    assert completion_ids(tok, c, s) == c_ids, (name, i)
    z = torch.log_softmax(torch.tensor(torch_logits(ref, p_ids + c_ids), dtype=torch.float64), -1)
    want = sum(float(z[len(p_ids) - 1 + j, t]) for j, t in enumerate(c_ids))
    assert abs(ours[i] - want) <= 1e-4 * abs(want) + 1e-3, (name, i, ours[i], want)
