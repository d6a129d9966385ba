"""The paper-scale pipeline settings (Table 2 on GSM8K): the calibration recipe of
`trainers.config.paper_config`, full fine-tuning of the students as in the paper's GKD setup,
16 samples per test question. Used by `configs/pipeline_{qwen3,gemma3}.py`."""

from __future__ import annotations

from kdknob_jax.trainers import config as calib_config
from kdknob_jax.trainers.pipeline import base_config


def paper_pipeline(teacher: str, student: str, arg: str | None = None):
  """A pipeline of `teacher` → `student` on GSM8K, bf16, for one 8×H100 host (FSDP 8) or, with
  arg "v5p", a TPU v5p slice (FSDP over 8 chips, data parallel across the rest)."""
  if arg not in (None, "v5p"):
    raise ValueError(f"Unknown argument {arg!r}; use ':v5p' or none.")
  c = base_config()
  c.teacher, c.student, c.dtype, c.lam = teacher, student, "bfloat16", 1.0
  c.calibrate = calib_config.paper_config(teacher, student, 1.0, arg)
  c.calibrate.target_chat = True
  mesh = dict(data=-1, fsdp=8, tensor=1) if arg == "v5p" else dict(data=1, fsdp=8, tensor=1)
  d = c.distill
  d.update(prompts_per_step=32, samples_per_prompt=1, max_new_tokens=512, steps=500,
           eval_every=100, checkpoint_every=50, temperature=1.0)
  d.optimizer.update(lr=1e-5, warmup_steps=20)
  d.mesh = mesh
  c.evaluation.update(task="gsm8k", source="gsm8k/test.jsonl", limit=0, n=16, ks="1,16",
                      max_new_tokens=512, temperature=0.7)
  return c
