"""The end-to-end table on the embedded default, sized for a laptop CPU (README, "Students and
the end-to-end table", has the measured time and table).

Teacher: SmolLM2-135M-Instruct. Student: SmolLM2-135M-Instruct without its layers 15–20 (24 of
30 kept; see `distill_config.EMBEDDED_STUDENT_KEEP`), derived so that it shares the teacher's
tokenizer, since the other embedded model (Gemma-3-270M) does not. Task: the built-in capitals
questions (109 train, 32 of the 50 test questions evaluated, 16 samples each).

  python -m kdknob_jax.pipeline --config configs/tiny_pipeline.py --workdir runs/tiny_pipeline

`:smoke` shrinks every stage to a step or two (for tests).
"""

from kdknob_jax.distillation import config as distill_config
from kdknob_jax.experiments.pipeline_config import base_config


def get_config(arg: str | None = None):
  """The config; `arg="smoke"` is the test-sized version."""
  smoke = arg == "smoke"
  if arg not in (None, "smoke"):
    raise ValueError(f"Unknown argument {arg!r}; use ':smoke' or none.")
  c = base_config()
  c.teacher = distill_config.EMBEDDED_TEACHER
  c.student = distill_config.EMBEDDED_TEACHER
  c.student_keep = distill_config.EMBEDDED_STUDENT_KEEP
  c.dtype = "float32"
  c.lam = 1.0
  train = dict(task="capitals", source="builtin:capitals/train.jsonl", split="", offset=0,
               limit=0)
  held_out = dict(task="capitals", source="builtin:capitals/test.jsonl", split="", offset=0,
                  limit=2 if smoke else 16, max_new_tokens=0)
  k = c.calibrate
  k.train.update(train)
  k.eval.update(held_out)
  k.update(group_size=4, prompts_per_step=2 if smoke else 4, max_new_tokens=16,
           steps=1 if smoke else 8, eval_every=0, checkpoint_every=4, chat=True,
           target_chat=True, rows_per_call=16)
  k.lora.update(rank=4 if smoke else 16, alpha=4.0 if smoke else 16.0)
  k.optimizer.update(lr=2e-4, warmup_steps=0)
  k.mesh = dict(data=1, fsdp=-1, tensor=1)
  d = c.distill
  d.train.update(train)
  d.eval.update(held_out)
  d.update(prompts_per_step=2 if smoke else 8, samples_per_prompt=2, max_new_tokens=16,
           steps=1 if smoke else 10, eval_every=0, checkpoint_every=5, chat=True)
  d.optimizer.update(lr=5e-5, warmup_steps=0)
  d.mesh = dict(data=1, fsdp=-1, tensor=1)
  if smoke:
    d.train.limit = 4
    k.train.limit = 4
  c.baselines = "sft,gkd_fkl,gkd_rkl"
  c.calibrated_methods = "gkd_fkl" if smoke else "sft,gkd_fkl"
  c.evaluation.update(task="capitals", source="builtin:capitals/test.jsonl", limit=2 if smoke
                      else 32, n=2 if smoke else 16, ks="1,2" if smoke else "1,16",
                      max_new_tokens=16, temperature=0.7, greedy=True, chat=True, seed=0)
  return c
