"""Tokenizers through the Rust `tokenizers` library, with chat templates rendered by jinja2.

Loads `tokenizer.json` (+ `tokenizer_config.json`) from an HF checkpoint directory, or converts
a GGUF file's vocabulary once (in a child process, see `gguf_tokenizer`) into a cached
directory. No transformers import, hence no torch, in the calling process.

How a stopped completion ends when a model scores it (`completion_ids`): under the chat format,
with the tokens the model's own template closes an assistant turn with, up to and including the
first special token (`Tokenizer.turn_end_ids`: Gemma-3 `<end_of_turn>`, Qwen3 `<|im_end|>`,
Llama-3 `<|eot_id|>`); under plain text, with its first EOS id.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from kdknob_jax.errors import TokenizerNotFoundError
from kdknob_jax.hf.registry import ModelSource, cache_dir

log = logging.getLogger(__name__)

# Stands in for an assistant reply when rendering a turn to find what the template puts after
# it: plain ASCII that no template rewrites (no surrounding whitespace to trim, no tags).
_REPLY_MARK = "KdknobReplyMark7"


def _token_text(value: Any) -> str | None:
  if isinstance(value, dict):  # AddedToken serialized as a dict
    return value.get("content")
  return value


class Tokenizer:
  """Text <-> token ids for one model.

  Attributes:
    bos_id, eos_id, pad_id: special ids (None when the tokenizer has none).
    add_bos: whether `encode` prepends BOS to plain text.
    chat_template: the jinja template, or None for base models.
  """

  def __init__(self, directory: str | Path, extra_eos_ids: Sequence[int] = ()):
    import tokenizers  # pylint: disable=g-import-not-at-top
    directory = Path(directory)
    self.directory = directory
    self._tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    self.config = cfg
    template = cfg.get("chat_template")
    jinja_file = directory / "chat_template.jinja"
    if template is None and jinja_file.exists():
      template = jinja_file.read_text()
    if isinstance(template, list):  # named templates: take the default one
      template = next((t["template"] for t in template if t.get("name") == "default"), None)
    self.chat_template: str | None = template
    self.bos_token = _token_text(cfg.get("bos_token"))
    self.eos_token = _token_text(cfg.get("eos_token"))
    self.bos_id = self._id(self.bos_token)
    self.eos_id = self._id(self.eos_token)
    self.pad_id = self._id(_token_text(cfg.get("pad_token")))
    self.add_bos = bool(cfg.get("add_bos_token", False))
    self.eos_ids = tuple(dict.fromkeys(
        [i for i in (self.eos_id, *extra_eos_ids) if i is not None]))

  def _id(self, token: str | None) -> int | None:
    return None if token is None else self._tok.token_to_id(token)

  @functools.cached_property
  def special_ids(self) -> frozenset[int]:
    """Ids of the added tokens flagged special (turn markers, EOS, BOS, pad...)."""
    return frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

  @functools.cached_property
  def vocab_digest(self) -> str:
    """A hash of the full token -> id map, added tokens included: two tokenizers with equal
    digests give every id the same string (see `same_vocabulary`)."""
    items = sorted(self._tok.get_vocab(with_added_tokens=True).items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()

  @functools.cached_property
  def turn_end_ids(self) -> tuple[int, ...]:
    """The ids this model produces to close an assistant turn in its chat format.

    Renders [user, assistant] with the template, takes what follows the assistant's content and
    keeps it up to and including its first special (or EOS) token: "<end_of_turn>\\n" gives
    (<end_of_turn>,). The model stops generating at that token, so what the template writes
    after it (a newline, before the next turn) is never the model's to produce and is not
    scored. Falls back to the first EOS id, with a warning, when there is no template, the
    template hides the content, or nothing special follows it. Computed once per tokenizer.

    Raises:
      ValueError: the fallback is needed and the tokenizer has no EOS id.
    """
    found = _turn_end_or_problem(self)
    if isinstance(found, tuple):
      return found
    if self.chat_template:
      log.warning("%s: %s; a stopped completion under the chat format is scored with EOS "
                  "instead.", self.directory, found)
    return _first_eos(self)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of text; with add_special_tokens, BOS as the tokenizer's config asks."""
    ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
    if (add_special_tokens and self.add_bos and self.bos_id is not None
        and (not ids or ids[0] != self.bos_id)):
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
                  **kwargs) -> str:
    """The chat template applied to messages, as text (its special tokens spelled out).

    Raises:
      ValueError: the tokenizer has no chat template (a base model): use plain prompts.
    """
    if not self.chat_template:
      raise ValueError(f"The tokenizer in {self.directory} has no chat template (a base model?); "
                       "pass plain text prompts instead of chat messages.")
    return _compiled_template(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)

  def encode_prompt(self, prompt: str | Sequence[dict[str, str]], chat: bool | None = None
                    ) -> list[int]:
    """Ids of a prompt: chat messages (or a string wrapped as one user turn when `chat` and a
    template exist) rendered by the template, else plain text with BOS per the config."""
    if isinstance(prompt, str):
      if not uses_chat(self, prompt, chat):
        return self.encode(prompt)
      prompt = [{"role": "user", "content": prompt}]
    # The rendered text already holds BOS where the template wants it.
    return self.encode(self.render_chat(prompt), add_special_tokens=False)


def _first_eos(tok: Tokenizer) -> tuple[int]:
  if not tok.eos_ids:
    raise ValueError(f"The tokenizer in {tok.directory} has no EOS id, so a stopped completion "
                     "cannot be scored; set eos_token in its tokenizer_config.json.")
  return (tok.eos_ids[0],)


def _turn_end_or_problem(tok: Tokenizer) -> tuple[int, ...] | str:
  """The turn's end ids, or why the template does not give them."""
  if not tok.chat_template:
    return "no chat template"
  messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": _REPLY_MARK}]
  try:
    text = tok.render_chat(messages, add_generation_prompt=False)
  except Exception as e:  # pylint: disable=broad-except  # jinja raises many types
    return f"the chat template cannot render a user and an assistant turn ({e})"
  at = text.rfind(_REPLY_MARK)
  if at < 0:
    return "the chat template does not write the assistant's content verbatim"
  # Reasoning blocks a template inserts (Qwen3's "<think>\n\n</think>\n\n") come before
  # the content, so the suffix after it holds only the turn's closing.
  suffix = tok.encode(text[at + len(_REPLY_MARK):], add_special_tokens=False)
  ends = tok.special_ids | set(tok.eos_ids)
  cut = next((k for k, i in enumerate(suffix) if i in ends), None)
  if cut is None:
    return f"no special token closes the assistant turn (it ends with {suffix})"
  return tuple(suffix[:cut + 1])


def uses_chat(tokenizer: Tokenizer, prompt: str | Sequence[dict[str, str]],
              chat: bool | None) -> bool:
  """Whether `encode_prompt(prompt, chat)` renders the chat format: always for messages; for a
  string, when `chat` says so (default: when the tokenizer has a template)."""
  if not isinstance(prompt, str):
    return True
  return bool(tokenizer.chat_template) if chat is None else bool(chat)


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
  """Whether every token id names the same string under both tokenizers (identical token -> id
  maps, added tokens included), so one model's sampled ids can be scored by the other as is.

  Merges and normalizers are not compared: they decide how text is split, not what an id
  means, and scoring the sampled ids is exactly what bypasses re-splitting text.
  """
  return a is b or a.vocab_digest == b.vocab_digest


def pad_id_of(tokenizer: Tokenizer) -> int:
  """The id written after a row's end: the pad id, else the first EOS id."""
  return tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_ids[0]


def end_ids(tokenizer: Tokenizer, chat: bool) -> tuple[int, ...]:
  """What a stopped completion ends with under this tokenizer: the template's end of an
  assistant turn under the chat format (`Tokenizer.turn_end_ids`), else the first EOS id.

  Raises:
    ValueError: the tokenizer has no EOS id to end plain text with.
  """
  return tokenizer.turn_end_ids if chat and tokenizer.chat_template else _first_eos(tokenizer)


def completion_ids(tokenizer: Tokenizer, text: str, stopped: bool, *,
                   chat: bool | None = None) -> list[int]:
  """A completion's ids under a tokenizer: the text with no special tokens, then, if it ended
  on a stop token, `end_ids` (chat: the prompt was rendered by the chat template; None: as
  `encode_prompt` decides for a string prompt)."""
  ids = tokenizer.encode(text, add_special_tokens=False)
  if stopped:
    ids.extend(end_ids(tokenizer, bool(tokenizer.chat_template) if chat is None else chat))
  return ids


def gguf_tokenizer_dir(gguf: Path) -> Path:
  """A tokenizer.json directory built once from a GGUF file's metadata (cached by size and
  mtime), in a child process so this one never imports transformers."""
  st = gguf.stat()
  out = cache_dir() / "tokenizers" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"
  if not (out / "tokenizer.json").exists():
    proc = subprocess.run([sys.executable, "-m", "kdknob_jax.hf.gguf_tokenizer", str(gguf),
                           str(out)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (out / "tokenizer.json").exists():
      raise TokenizerNotFoundError(f"Could not build a tokenizer from {gguf}:\n"
                                   f"{proc.stderr[-2000:]}")
  return out


@functools.lru_cache(maxsize=16)
def _compiled_template(template: str):
  """A chat template compiled once: compiling is ~1000x the cost of rendering, and a run
  renders every training prompt (two tokenizers' worth for calibration) before its first step."""
  from jinja2 import ext  # pylint: disable=g-import-not-at-top
  from jinja2.exceptions import TemplateError  # pylint: disable=g-import-not-at-top
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top

  def raise_exception(message):
    raise TemplateError(message)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[ext.loopcontrols])
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent,
                                                                ensure_ascii=False)
  return env.from_string(template)


def load_tokenizer(source: ModelSource, extra_eos_ids: Sequence[int] = ()) -> Tokenizer:
  """The tokenizer of a resolved model.

  Raises:
    TokenizerNotFoundError: the checkpoint has no tokenizer.json.
  """
  if source.kind == "gguf":
    return Tokenizer(gguf_tokenizer_dir(source.path), extra_eos_ids)
  if not (source.path / "tokenizer.json").exists():
    hint = (" It has a sentencepiece tokenizer.model only: convert it once with transformers "
            "(AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) to write tokenizer.json."
            if (source.path / "tokenizer.model").exists() else "")
    raise TokenizerNotFoundError(
        f"{source.path} has no tokenizer.json, so text cannot be tokenized.{hint} Pass token "
        f"ids directly, or copy the tokenizer files of the same model into that directory.")
  return Tokenizer(source.path, extra_eos_ids)
