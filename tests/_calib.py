"""A calibration pair small enough for tests: tiny random models that carry the embedded models'
real tokenizers (a SmolLM2-tokenized Llama teacher, a Gemma-3-tokenized Gemma target), so the
cross-tokenizer path runs in seconds; and a few CommonsenseQA-style rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import TINY, make_tiny_checkpoint

ROWS = [
    ("Where would you put a plate after washing it?", ["cupboard", "oven", "garden", "car"], "A"),
    ("What do you use to cut paper?", ["spoon", "scissors", "pillow", "cup"], "B"),
    ("Where does a fish live?", ["tree", "desert", "water", "attic"], "C"),
    ("What do people wear on their feet?", ["hat", "gloves", "scarf", "shoes"], "D"),
    ("What is used to write on a blackboard?", ["chalk", "soap", "rice", "sand"], "A"),
    ("Where do you buy groceries?", ["library", "supermarket", "pool", "bank"], "B"),
]


def write_data(path: Path) -> Path:
  """Six CommonsenseQA-format rows as JSONL."""
  with path.open("w") as f:
    for stem, texts, key in ROWS:
      choices = [{"label": "ABCD"[i], "text": t} for i, t in enumerate(texts)]
      f.write(json.dumps({"answerKey": key, "question": {"stem": stem, "choices": choices}})
              + "\n")
  return path


def _with_tokenizer(directory: Path, hf_config: dict, embedded: str) -> Path:
  from kdknob_jax.hf import load_tokenizer, resolve  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf.tokenizer import gguf_tokenizer_dir  # pylint: disable=g-import-not-at-top
  tok = load_tokenizer(embedded)
  cfg = dict(hf_config, vocab_size=tok.vocab_size, eos_token_id=list(tok.eos_ids),
             bos_token_id=tok.bos_id, pad_token_id=tok.pad_id)
  make_tiny_checkpoint(directory, cfg)
  for f in gguf_tokenizer_dir(resolve(embedded).path).iterdir():
    shutil.copy(f, directory / f.name)
  return directory


def make_pair(root: Path) -> tuple[Path, Path]:
  """(teacher dir, target dir) under root."""
  teacher = _with_tokenizer(root / "teacher", dict(TINY["llama"], max_position_embeddings=512),
                            "smollm2-135m-instruct")
  target = _with_tokenizer(root / "target", dict(TINY["gemma3"], hidden_size=16,
                                                  num_attention_heads=2, num_key_value_heads=1,
                                                  num_hidden_layers=2, intermediate_size=32,
                                                  max_position_embeddings=512),
                           "gemma3-270m")
  return teacher, target


def tiny_config(teacher: Path, target: Path, data: Path, **overrides):
  """A 3-step calibration of the tiny pair on the rows of `data`, built and checked (so a bad
  override raises ConfigError here)."""
  from kdknob_jax.calibration.config import base_config, build  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.teacher, c.target = str(teacher), str(target)
  c.dtype = "float32"
  c.lam = -1.0
  c.target_chat = False
  c.train.update(task="commonsenseqa", source=str(data), offset=0, limit=0)
  c.eval.update(task="commonsenseqa", source=str(data), offset=0, limit=2, max_new_tokens=4)
  c.lora.update(rank=4, alpha=8.0)
  c.optimizer.update(lr=1e-2, warmup_steps=1)
  c.group_size, c.prompts_per_step, c.max_new_tokens = 2, 2, 8
  c.steps, c.eval_every, c.checkpoint_every = 3, 2, 1
  c.inner_updates = 2
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  for k, v in overrides.items():
    c[k] = v
  return build(c)


# Metrics that measure the machine, not the run.
TIMING = ("time/", "throughput/")


def comparable(rows: list[dict]) -> list[dict]:
  """metrics.jsonl rows without the timing entries."""
  return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]
