"""One-time conversion of a GGUF file's tokenizer metadata into `tokenizer.json`.

Run as a child process (`python -m kdknob_jax.hf.gguf_tokenizer SRC.gguf OUT_DIR`) by
`kdknob_jax.hf.tokenizer`: it uses transformers' GGUF tokenizer builders, and transformers
imports torch whenever torch is installed. The child hides torch from transformers (it only
needs its tokenizer code) and the parent process, our core, never imports transformers at all.
The result is cached, so this runs once per GGUF file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

_METADATA_KEYS = {  # GGUF key -> transformers' tokenizer_dict key
    "tokenizer.ggml.model": "tokenizer_type",
    "tokenizer.ggml.pre": "pre_tokenizer_type",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}


def convert(src: str, out_dir: str) -> None:
  """Writes tokenizer.json and tokenizer_config.json for a GGUF file into out_dir (atomically)."""
  sys.modules["torch"] = None  # transformers then takes its torch-free code paths
  from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer  # pylint: disable=g-import-not-at-top

  from kdknob_jax.hf.gguf_file import GGUFFile  # pylint: disable=g-import-not-at-top

  g = GGUFFile(src)
  m = g.metadata
  tok = {}
  for key, name in _METADATA_KEYS.items():
    if key in m:
      value = m[key]
      tok[name] = value.tolist() if hasattr(value, "tolist") else value
  if "tokens" not in tok:
    raise SystemExit(f"{src} has no tokenizer metadata (tokenizer.ggml.tokens).")
  backend, _ = convert_gguf_tokenizer(g.architecture, tok)
  backend.post_processor = None  # BOS is added from tokenizer_config's add_bos_token instead

  def token(key):
    idx = m.get(f"tokenizer.ggml.{key}")
    return None if idx is None else tok["tokens"][int(idx)]

  add_bos = m.get("tokenizer.ggml.add_bos_token")
  if add_bos is None:  # llama.cpp adds BOS to sentencepiece vocabularies that do not say
    add_bos = tok.get("tokenizer_type") == "llama"
  config = {
      "bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
      "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id"),
      "add_bos_token": bool(add_bos), "add_eos_token": bool(m.get("tokenizer.ggml.add_eos_token")),
      "chat_template": m.get("tokenizer.chat_template"),
      "source": os.path.basename(src),
  }
  out = Path(out_dir)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
  backend.save(str(tmp / "tokenizer.json"))
  (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
  try:
    os.replace(tmp, out)
  except OSError:  # another process finished first; its result is equivalent
    for f in tmp.iterdir():
      f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
  if len(sys.argv) != 3:
    raise SystemExit("usage: python -m kdknob_jax.hf.gguf_tokenizer SRC.gguf OUT_DIR")
  convert(sys.argv[1], sys.argv[2])
