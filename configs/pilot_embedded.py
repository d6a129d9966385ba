"""Pilot study on the embedded default: SmolLM2-135M-Instruct as the teacher, and as the student
a model derived from it (its embeddings, first 18 of 30 layers, final norm and head), since the
two embedded models do not share a tokenizer. Real data from ../shared/data (GSM8K test,
CommonsenseQA sample). Measured on this 2-core CPU: see README "Pilot study".

  python -m kdknob_jax.pilot --config configs/pilot_embedded.py --workdir runs/pilot_embedded

`--config configs/pilot_embedded.py:smoke` shrinks it to 2 prompts x 2 rollouts x 8 tokens.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config; `arg="smoke"` gives a seconds-long run for tests and first tries."""
  c = ml_collections.ConfigDict()
  c.teacher = "smollm2-135m-instruct"
  c.student = "smollm2-135m-instruct"
  c.student_layers = 18  # 0 keeps every layer; >0 derives the student from the first layers
  c.dtype = "float32"
  c.datasets = [
      dict(name="commonsenseqa", task="commonsenseqa", source="commonsenseqa/sample200.jsonl",
           offset=0, limit=8, max_new_tokens=48),
      dict(name="gsm8k", task="gsm8k", source="gsm8k/test.jsonl", offset=0, limit=4,
           max_new_tokens=96),
  ]
  c.rollouts = 16
  c.temperature = 1.0
  c.top_k = 0  # 0: off, as in the paper's pilot
  c.top_p = 1.0
  c.max_new_tokens = 128  # for datasets that do not set their own
  c.top_ks = (1, 10, 100, 1000)  # the full vocabulary is always added
  c.seed = 0
  c.chat = True
  c.prompts_per_call = 4
  c.score_rows = 32
  c.mesh = {}  # e.g. {"data": -1} or {"data": 2, "tensor": 4}
  if arg == "smoke":
    for d in c.datasets:
      d.update(limit=2, max_new_tokens=8)
    c.rollouts = 2
  elif arg:
    raise ValueError(f"Unknown config argument {arg!r}; the only one is 'smoke'.")
  return c
