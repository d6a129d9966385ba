"""Pilot study on the embedded default: SmolLM2-135M-Instruct as the teacher, and as the student
a model derived from it (its embeddings, first 18 of 30 layers, final norm and head), since the
two embedded models do not share a tokenizer. Real data from ../shared/data (GSM8K test,
CommonsenseQA sample). Wall time on this 2-core CPU: README, "Pilot study".

  python -m kdknob_jax.pilot --config configs/pilot_embedded.py --workdir runs/pilot_embedded

`--config configs/pilot_embedded.py:smoke` shrinks it to 2 prompts x 2 rollouts x 8 tokens.
"""

from kdknob_jax.experiments.pilot_config import apply_arg, base_config


def get_config(arg: str | None = None):
  """The config; `arg="smoke"` gives a short run for tests and first tries."""
  c = base_config()
  c.teacher = "smollm2-135m-instruct"
  c.student = "smollm2-135m-instruct"
  c.student_layers = 18
  c.datasets = [
      dict(name="commonsenseqa", task="commonsenseqa", source="commonsenseqa/sample200.jsonl",
           offset=0, limit=6, max_new_tokens=48),
      dict(name="gsm8k", task="gsm8k", source="gsm8k/test.jsonl", offset=0, limit=3,
           max_new_tokens=96),
  ]
  return apply_arg(c, arg, smoke_tokens=8)
