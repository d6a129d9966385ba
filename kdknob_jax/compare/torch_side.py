"""The PyTorch reference: HF transformers models on the same weights. Only this module (and
tests) import torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdknob_jax.hf.registry import ModelSource


def load_torch_model(source: ModelSource, dtype: str):
  """An HF `AutoModelForCausalLM` in eval mode, from a checkpoint directory or GGUF file.

  GGUF files go through transformers' own GGUF loader (its own dequantization, rotary
  un-permutation and Gemma norm offset), so the comparison checks ours independently.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoModelForCausalLM  # pylint: disable=g-import-not-at-top

  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  kw = {"dtype": torch.float32, "attn_implementation": "eager"}
  if source.kind == "gguf":
    model = AutoModelForCausalLM.from_pretrained(str(source.path.parent),
                                                 gguf_file=source.path.name, **kw)
  else:
    model = AutoModelForCausalLM.from_pretrained(str(source.path), **kw)
  return model.to(torch_dtype).eval()


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
