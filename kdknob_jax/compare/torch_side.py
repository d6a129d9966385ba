"""The PyTorch reference: HF transformers models on the same weights. Only this module (and
tests) import torch."""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from kdknob_jax.hf.registry import ModelSource

_KEEP_BYTES = 1 << 30  # the embedded models' files are 0.1-0.3 GB


def load_torch_model(source: ModelSource, dtype: str):
  """An HF `AutoModelForCausalLM` in eval mode, from a checkpoint directory or GGUF file.

  GGUF files go through transformers' own GGUF loader (its own dequantization, rotary
  un-permutation and Gemma norm offset), so the comparison checks ours independently. That
  loader parses the file's metadata twice per load (`_one_parse` makes that once), and the
  result of a file under `_KEEP_BYTES` is kept for the process and each later call builds a
  fresh model from it (a larger one is read each time: keeping it would hold its float32
  weights twice).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top

  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  kw = {"dtype": torch.float32, "attn_implementation": "eager"}
  st = source.path.stat() if source.kind == "gguf" else None
  if st is not None and st.st_size <= _KEEP_BYTES:
    config, state, generation = _gguf_load(str(source.path), st.st_size, st.st_mtime_ns)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), **kw)
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(generation)
  elif st is not None:
    model = AutoModelForCausalLM.from_pretrained(str(source.path.parent),
                                                 gguf_file=source.path.name, **kw)
  else:
    model = AutoModelForCausalLM.from_pretrained(str(source.path), **kw)
  return model.to(torch_dtype).eval()


@functools.lru_cache(maxsize=2)
def _gguf_load(path: str, size: int, mtime_ns: int):
  """(config, float32 state dict, generation config) of transformers' GGUF load; the size and
  mtime key the cache, so a rewritten file is read again."""
  del size, mtime_ns
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top
  p = Path(path)
  with _one_parse():
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                                 dtype=torch.float32, attn_implementation="eager")
  config = copy.deepcopy(model.config)
  if hasattr(config, "quantization_config"):
    # The weights are dequantized at load; the quantizer would only mark a rebuilt model as
    # quantized (which `Trainer` refuses to train).
    del config.quantization_config
  return config, {k: v.detach().clone() for k, v in model.state_dict().items()}, \
      model.generation_config


@contextlib.contextmanager
def _one_parse():
  """Within it, `gguf.GGUFReader` parses each file once.

  transformers builds a reader for the config and another for the weights; parsing the
  metadata of Gemma-3's 262,144-token vocabulary takes about 18 s each on a 2-core CPU. A reader
  only maps the file read-only, so the second use can share the first's.
  """
  import gguf  # pylint: disable=g-import-not-at-top
  real, readers = gguf.GGUFReader, {}

  def reader(path, *args, **kwargs):
    key = (str(path), args, tuple(sorted(kwargs.items())))
    if key not in readers:
      readers[key] = real(path, *args, **kwargs)
    return readers[key]

  gguf.GGUFReader = reader
  try:
    yield
  finally:
    gguf.GGUFReader = real


def logits(model, ids: Sequence[int]) -> np.ndarray:
  """Float32 logits [T, V] of one sequence."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = model(torch.tensor([list(ids)]), use_cache=False).logits[0]
  return out.float().numpy()


def greedy(model, ids: Sequence[int], new_tokens: int) -> list[int]:
  """Greedy continuation of exactly `new_tokens` tokens (no EOS stop), via the KV cache."""
  import torch  # pylint: disable=g-import-not-at-top
  out: list[int] = []
  with torch.no_grad():
    res = model(torch.tensor([list(ids)]), use_cache=True)
    for _ in range(new_tokens):
      nxt = int(res.logits[0, -1].float().argmax())
      out.append(nxt)
      res = model(torch.tensor([[nxt]]), past_key_values=res.past_key_values, use_cache=True)
  return out
