"""Tiny tokenizer directories for tests: a byte-level vocabulary (every text encodes, one token
per byte unless a merge joins two) plus a model family's special tokens as added tokens, and
that family's real chat template from tests/data/chat_templates. Built with the `tokenizers`
library in a temp dir; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"

# Special tokens as each family's tokenizer_config.json declares them. The EOS of the Gemma-3 and
# Llama-3 entries is not the token that closes an assistant turn (Gemma-3-it's config says
# <eos>; Llama-3-Instruct's first release said <|end_of_text|>), which is what makes reading the
# turn's end from the template necessary.
FAMILIES = {
    "gemma3": dict(template="gemma-3-it.jinja", bos="<bos>", eos="<eos>", pad="<pad>",
                   add_bos=True, special=["<pad>", "<eos>", "<bos>", "<start_of_turn>",
                                          "<end_of_turn>", "<start_of_image>"]),
    "qwen3": dict(template="qwen3.jinja", eos="<|im_end|>", pad="<|endoftext|>",
                  special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  plain=["<think>", "</think>"]),
    "qwen3_base": dict(template="qwen3.jinja", eos="<|endoftext|>", pad="<|endoftext|>",
                       special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                       plain=["<think>", "</think>"]),
    "llama3": dict(template="llama-3.2-instruct.jinja", bos="<|begin_of_text|>",
                   eos="<|end_of_text|>", add_bos=True,
                   special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                            "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]),
    "plain": dict(template=None, bos="<s>", eos="</s>", add_bos=True, special=["<s>", "</s>"]),
}


def make_tokenizer_dir(directory: Path, family: str, merges: Sequence[tuple[str, str]] = (),
                       template: str | None = "") -> Path:
  """Writes tokenizer.json and tokenizer_config.json of `family` into `directory`.

  Args:
    directory: created if missing.
    family: a FAMILIES key.
    merges: BPE merges of byte symbols ("a", "b"), each adding the joined token to the vocab.
    template: the chat template text; "" reads the family's file, None writes none.

  Returns:
    directory.
  """
  # pylint: disable=g-import-not-at-top
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  # pylint: enable=g-import-not-at-top
  spec = FAMILIES[family]
  vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
  for a, b in merges:
    vocab[a + b] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in spec["special"]])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.get("plain", [])])
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  if template == "":
    template = (TEMPLATES / spec["template"]).read_text() if spec["template"] else None
  cfg = {k: spec[k] for k in ("bos", "eos", "pad") if k in spec}
  cfg = {f"{k}_token": v for k, v in cfg.items()}
  cfg["add_bos_token"] = spec.get("add_bos", False)
  if template is not None:
    cfg["chat_template"] = template
  (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
  return directory
