"""A stopped completion ends as the model's own chat template closes an assistant turn: the
real Gemma-3-it, Qwen3 and Llama-3.2-Instruct templates (tests/data/chat_templates) on tiny
tokenizers that carry those families' special tokens, and EOS for plain-text prompts."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from kdknob_jax.calibration.rewards import ids_logprobs, text_logprobs
from kdknob_jax.hf.tokenizer import Tokenizer, completion_ids, end_ids
from kdknob_jax.models import ModelConfig, init_params
from conftest import TINY
from tests._tiny_tokenizers import make_tokenizer_dir

END_OF_TURN = {"gemma3": "<end_of_turn>", "qwen3": "<|im_end|>", "qwen3_base": "<|im_end|>",
               "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
  root = tmp_path_factory.mktemp("toks")
  return {f: Tokenizer(make_tokenizer_dir(root / f, f)) for f in [*END_OF_TURN, "plain"]}


def _id(tok: Tokenizer, token: str) -> int:
  return tok._tok.token_to_id(token)  # pylint: disable=protected-access


@pytest.mark.parametrize("family", list(END_OF_TURN))
def test_the_turn_ends_on_the_templates_end_token_not_the_trailing_newline(toks, family):
  tok = toks[family]
  assert tok.turn_end_ids == (_id(tok, END_OF_TURN[family]),)
  assert end_ids(tok, chat=True) == tok.turn_end_ids
  assert end_ids(tok, chat=False) == (tok.eos_ids[0],)


def test_gemma3_and_llama3_end_a_turn_on_another_token_than_their_eos(toks):
  for family in ("gemma3", "llama3", "qwen3_base"):
    assert toks[family].turn_end_ids != (toks[family].eos_ids[0],), family


def test_qwen3s_inserted_thinking_block_precedes_the_content(toks):
  """The template writes "<think>\\n\\n</think>\\n\\n" before the last assistant turn's content;
  the end is still read from after the content."""
  tok = toks["qwen3"]
  text = tok.render_chat([{"role": "user", "content": "U"},
                          {"role": "assistant", "content": "reply"}], add_generation_prompt=False)
  assert "<think>\n\n</think>\n\nreply<|im_end|>\n" in text
  assert tok.turn_end_ids == (_id(tok, "<|im_end|>"),)


def test_plain_text_ends_on_eos(toks):
  tok = toks["plain"]
  assert tok.chat_template is None
  assert end_ids(tok, chat=True) == end_ids(tok, chat=False) == (_id(tok, "</s>"),)
  assert completion_ids(tok, "hi", True) == tok.encode("hi", add_special_tokens=False) + [
      _id(tok, "</s>")]


@pytest.mark.parametrize("family", ["gemma3", "qwen3", "llama3"])
def test_prompt_plus_completion_is_the_templates_own_rendering_of_the_turn(toks, family):
  """encode_prompt(U) + completion_ids(reply, stopped) is a prefix of the template's rendering of
  [U, reply]: the scored sequence is what the model would see in a real conversation, and it
  stops right after the end token (the template's trailing newline is left out)."""
  tok = toks[family]
  # Qwen3 writes the thinking block it expects the model to generate: a reply holds one.
  reply = "<think>\nhm\n</think>\n\nSure." if family.startswith("qwen3") else "Sure."
  full = tok.encode(tok.render_chat([{"role": "user", "content": "U"},
                                     {"role": "assistant", "content": reply}],
                                    add_generation_prompt=False), add_special_tokens=False)
  scored = tok.encode_prompt("U", chat=True) + completion_ids(tok, reply, True, chat=True)
  assert full[:len(scored)] == scored
  assert scored[-1] == _id(tok, END_OF_TURN[family])
  assert tok.decode(full[len(scored):], skip_special_tokens=False) in ("", "\n")


def test_completion_ids_follow_the_prompt_format(toks):
  tok = toks["gemma3"]
  body = tok.encode("Blue.", add_special_tokens=False)
  assert completion_ids(tok, "Blue.", True, chat=True) == body + [_id(tok, "<end_of_turn>")]
  assert completion_ids(tok, "Blue.", True, chat=False) == body + [_id(tok, "<eos>")]
  assert completion_ids(tok, "Blue.", True) == body + [_id(tok, "<end_of_turn>")]  # has template
  assert completion_ids(tok, "Blue.", False, chat=True) == body


def test_turn_end_is_computed_once_per_tokenizer(tmp_path, monkeypatch):
  tok = Tokenizer(make_tokenizer_dir(tmp_path, "gemma3"))
  calls = []
  render = tok.render_chat
  monkeypatch.setattr(tok, "render_chat", lambda *a, **k: calls.append(1) or render(*a, **k))
  first = tok.turn_end_ids
  for _ in range(3):
    completion_ids(tok, "x", True, chat=True)
  assert tok.turn_end_ids == first and len(calls) == 1


@pytest.mark.parametrize("template, why", [
    ("{% for m in messages %}{{ m['content'] | upper }}<end_of_turn>{% endfor %}", "verbatim"),
    ("{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}", "no special token"),
    ("{{ raise_exception('no assistant turns') }}", "cannot render"),
])
def test_a_template_that_gives_no_end_falls_back_to_eos_with_a_warning(tmp_path, caplog,
                                                                       template, why):
  tok = Tokenizer(make_tokenizer_dir(tmp_path, "gemma3", template=template))
  with caplog.at_level(logging.WARNING, logger="kdknob_jax.hf.tokenizer"):
    assert tok.turn_end_ids == (_id(tok, "<eos>"),)
  assert why in caplog.text


def test_text_logprobs_scores_the_end_of_turn_token_under_the_chat_format(toks):
  """The reward's scorer appends <end_of_turn> (not <eos>) to a stopped completion of a chat
  prompt, and <eos> to one of a plain prompt."""
  tok = toks["gemma3"]
  cfg = ModelConfig.from_hf(dict(TINY["gemma3"], vocab_size=tok.vocab_size))
  model = (init_params(cfg, jax.random.PRNGKey(0)), cfg)
  body = tok.encode("Blue.", add_special_tokens=False)
  for chat, end in ((True, "<end_of_turn>"), (False, "<eos>")):
    got = text_logprobs(model, tok, ["Sky?"], ["Blue."], [True], chat=chat, rows_per_call=2)
    want = ids_logprobs(model, [(tok.encode_prompt("Sky?", chat=chat), body + [_id(tok, end)])],
                        rows_per_call=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
