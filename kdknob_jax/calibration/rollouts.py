"""One step's rollouts, on the host side of the calibration step: sample G completions per
prompt from the adapted teacher, grade them, score them under the teacher (jitted, on the mesh)
and their text under the target (its own tokenizer), and combine the group-normalized rewards
into advantages.

Rows are prompt-major (row r is sample r % G of prompt r // G); N = P·G real rows come first,
padding rows after them (see `kdknob_jax.train.batch.layout`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from kdknob_jax.calibration import step as step_lib
from kdknob_jax.calibration.objective import advantage_sensitivity, combine_advantages
from kdknob_jax.calibration.rewards import text_logprobs
from kdknob_jax.hf.tokenizer import Tokenizer, completion_ids
from kdknob_jax.models.lora import adapted
from kdknob_jax.train import batch as batch_lib
from kdknob_jax.train.state import settle, to_host


def target_logprobs(target, tokenizer: Tokenizer, prompts: Sequence[str],
                    rollouts: batch_lib.Rollouts, chat: bool | None, rows_per_call: int,
                    prompt_slots: int = 0, completion_slots: int = 0) -> np.ndarray:
  """log π_target(y|x) [N] of each completion's text, scored with the target's own tokenizer
  and prompt format. A completion with no text under that tokenizer (e.g. only special tokens,
  no stop) scores 0."""
  n = len(rollouts.texts)
  keep = [i for i in range(n)
          if completion_ids(tokenizer, rollouts.texts[i], bool(rollouts.stopped[i]))]
  out = np.zeros(n)
  if keep:
    out[keep] = text_logprobs(
        target, tokenizer, [prompts[int(rollouts.prompt_of[i])] for i in keep],
        [rollouts.texts[i] for i in keep], [bool(rollouts.stopped[i]) for i in keep],
        chat=chat, rows_per_call=rows_per_call, prompt_slots=prompt_slots,
        completion_slots=completion_slots)
  return out


def rollout(t, state: step_lib.CalibState, step: int, key: jax.Array):
  """Samples, grades and scores one step's rollouts.

  Args:
    t: the run's `kdknob_jax.calibration.trainer.Calibration` (models, data, programs).
    state: the current state (its adapters sample).
    step: the step (picks the train rows).
    key: the sampling key.

  Returns:
    (device batch for the train step, host info dict with rewards and texts).
  """
  c = t.config
  task, records = t.train
  idx = batch_lib.data_indices(step, c.prompts_per_step, len(records), c.seed)
  recs = [records[int(i)] for i in idx]
  prompts = [task.prompt(r) for r in recs]
  ids = [t.teacher_tok.encode_prompt(p, chat=c.chat) for p in prompts]
  params = adapted(state.base, state.lora, t.lcfg)
  gen = t.rollout_sampler(params, ids, n=c.group_size, max_new_tokens=c.max_new_tokens,
                          sampling=t.sampling, key=key, prompt_ids=idx)
  del params
  ro = batch_lib.layout(ids, gen, t.teacher_tok, t.row_multiple, t.prompt_slots,
                        c.max_new_tokens)
  n = len(ro.texts)
  correct = np.array([task.is_correct(ro.texts[r], recs[int(ro.prompt_of[r])])
                      for r in range(n)], bool)
  host = dict(ro.arrays)
  zeros = np.zeros(host["mask"].shape, np.float32)
  host.update(advantages=np.zeros(host["mask"].shape[0], np.float32), old_logp=zeros,
              ref_logp=zeros)
  batch = batch_lib.to_device(host, t.mesh, t.rules)
  old, ref = settle(step_lib.score_rollouts(state, batch, cfg=t.teacher.config, lcfg=t.lcfg,
                                            scfg=t.scfg, mesh=t.mesh, rules=t.rules))
  if c.on_policy:  # the decoder's untempered log-probs of the tokens it sampled
    logp_teacher = np.array([gen.model_logprobs[r, :int(gen.lengths[r])].astype(np.float64).sum()
                             for r in range(n)])
  else:
    logp_teacher = (to_host(old).astype(np.float64) * host["mask"]).sum(axis=1)[:n]
  if c.lam:
    logp_target = target_logprobs(
        (t.target.params, t.target.config), t.target_tok, prompts, ro, c.target_chat,
        c.rows_per_call, t.target_prompt_slots, c.max_new_tokens)
  else:  # λ = 0: plain task RL, the target is only scored at evaluations
    logp_target = logp_teacher.copy()
  r_task = correct.astype(np.float64)
  r_cal = logp_target - logp_teacher
  rewards, weights = {"task": r_task, "cal": r_cal}, {"task": c.task_weight, "cal": c.lam}
  adv = np.asarray(combine_advantages(rewards, weights, c.group_size, c.renormalize))
  sensitivity = advantage_sensitivity(rewards, weights, c.group_size)
  full_adv = np.zeros(host["mask"].shape[0], np.float32)
  full_adv[:n] = adv
  batch.update(batch_lib.to_device({"advantages": full_adv}, t.mesh, t.rules))
  batch.update(old_logp=old, ref_logp=ref)
  info = dict(correct=correct, r_task=r_task, r_cal=r_cal, adv=adv, sensitivity=sensitivity,
              logp_teacher=logp_teacher,
              logp_target=logp_target, lengths=ro.lengths, stopped=ro.stopped,
              prompt_of=ro.prompt_of, texts=ro.texts, prompts=prompts, ids=ids, gen=gen)
  return batch, info
