"""The knob study on this machine's scale (issue 16; README, "The knob, shown").

Testbed: SmolLM2-135M-Instruct fine-tuned on the built-in three-step arithmetic word problems
with small numbers (`builtin:arith_small`, GSM8K's format and grader) is the original
teacher. The evaluated student is SmolLM2-135M-Instruct itself, as it was before that tuning
(it shares the teacher's tokenizer, so GKD and the token-level traps apply); the calibration
target is a proxy of it, not the student: the same model cut to 24 of its 30 layers (15–20
dropped). One extra calibration targets Gemma-3-270M, whose tokenizer differs.
λ ∈ {−1, 0, +1} × seeds {0, 1}; λ = 0 is the control (the same RL with the calibration reward
off).

  python -m kdknob_jax.knob --config configs/knob_arith.py --workdir out/knob

Arguments: ":smoke" shrinks every stage to a step or two (the test suite runs it); ":demo" is
the short calibration `make demo` runs (one λ, one seed, no students).
"""

from kdknob_jax.experiments.knob_config import base_config

_TRAIN = dict(task="gsm8k", source="builtin:arith_small/train.jsonl", split="", offset=0, limit=0)
# A development slice of the test split (questions 400–431) for the runs' own progress
# evaluations; Table 2 is measured on questions 0–63, which no run decision looked at.
_DEV = dict(task="gsm8k", source="builtin:arith_small/test.jsonl", split="", offset=400, limit=32,
            max_new_tokens=0)


def get_config(arg: str | None = None):
  """The study's config; `arg` "smoke" or "demo" (see the module docstring)."""
  if arg not in (None, "", "smoke", "demo"):
    raise ValueError(f"Unknown argument {arg!r}; use ':smoke', ':demo' or none.")
  smoke = arg == "smoke"
  c = base_config()
  c.student, c.student_keep = "base", ""
  c.target, c.target_keep = "base", "0-14,21-29"
  c.cross_target, c.cross_lam = "gemma3-270m", -1.0
  c.lams, c.seeds, c.gkd_seeds = "-1,0,1", "0,1", "0"
  # GKD students (the costliest) for the original teacher, the baselines, and the
  # distillable one, which claim (c) compares with them.
  c.gkd_lams = "1"
  mesh = dict(data=1, fsdp=-1, tensor=1)

  t = c.teacher_sft
  t.train.update(_TRAIN)
  t.eval.update(_DEV)
  t.update(dtype="float32", max_new_tokens=80, prompts_per_step=8, steps=120, eval_every=40,
           checkpoint_every=20, chat=True, mesh=mesh)
  t.optimizer.update(lr=1e-4, warmup_steps=10, schedule="cosine")

  k = c.calibrate
  k.train.update(_TRAIN)
  k.eval.update(_DEV)
  k.update(dtype="float32", group_size=4, prompts_per_step=2, max_new_tokens=80, steps=20,
           eval_every=10, checkpoint_every=5, chat=True, target_chat=True, rows_per_call=16,
           mesh=mesh)
  k.lora.update(rank=16, alpha=32.0)
  k.optimizer.update(lr=2e-4, warmup_steps=2)

  d = c.distill
  d.train.update(_TRAIN, limit=192)  # the prompts of 24 steps × 8: one sample each, cached
  d.eval.update(_DEV)
  d.update(dtype="float32", samples_per_prompt=1, prompts_per_step=8, max_new_tokens=80,
           steps=24, eval_every=0, checkpoint_every=8, chat=True, temperature=1.0,
           mesh=mesh)
  d.optimizer.update(lr=1e-4, warmup_steps=2)

  c.evaluation.update(name="arith", task="gsm8k", source="builtin:arith_small/test.jsonl", offset=0,
                      limit=64, n=8, ks="1,8", max_new_tokens=80, temperature=0.7, greedy=False,
                      chat=True, seed=0, prompts_per_call=32)
  c.trap_questions, c.trap_rollouts = 32, 8

  if arg == "demo":  # minutes: a shorter teacher stage, one calibration, a smaller evaluation
    c.demo = True
    c.lams, c.seeds, c.gkd_seeds, c.cross_target = "-1", "0", "", ""
    t.update(steps=30, eval_every=0)
    k.update(steps=10, eval_every=0)
    c.evaluation.update(limit=32, n=4, ks="1,4")
  if smoke:
    t.update(steps=2, eval_every=0, checkpoint_every=1, max_new_tokens=8)
    t.optimizer.update(lr=1e-3, warmup_steps=0)
    t.train.limit = 8
    k.update(steps=1, prompts_per_step=1, group_size=2, max_new_tokens=8, eval_every=0,
             checkpoint_every=1)
    k.lora.update(rank=4, alpha=8.0)
    d.train.limit = 4
    d.update(steps=1, prompts_per_step=2, max_new_tokens=8, checkpoint_every=1)
    c.evaluation.update(limit=2, n=2, ks="1,2", max_new_tokens=8)
    c.lams, c.seeds, c.gkd_seeds, c.cross_target = "-1,0", "0", "", ""
    c.student_methods = "sft"
    c.trap_questions, c.trap_rollouts, c.bootstrap = 2, 2, 200
  return c
