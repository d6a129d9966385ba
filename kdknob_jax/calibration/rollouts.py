"""One step's rollouts, on the host side of the calibration step: sample G completions per
prompt from the adapted teacher, grade them, score them under the teacher (jitted, on the mesh)
and their text under the target (its own tokenizer; the sampled ids themselves when the two
share a vocabulary), and combine the group-normalized rewards into advantages (the scoring
rules are in `kdknob_jax.calibration.rewards`).

Rows are prompt-major (row r is sample r % G of prompt r // G); N = P·G real rows come first,
padding rows after them (see `kdknob_jax.train.batch.layout`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from kdknob_jax.calibration import step as step_lib
from kdknob_jax.calibration.objective import advantage_sensitivity, combine_advantages
from kdknob_jax.calibration.rewards import ids_logprobs, worst_for_unscored
from kdknob_jax.hf.tokenizer import Tokenizer, completion_ids, uses_chat
from kdknob_jax.models.lora import adapted
from kdknob_jax.train import batch as batch_lib
from kdknob_jax.train.state import settle, to_host


def target_logprobs(target, tokenizer: Tokenizer, prompts: Sequence[str],
                    rollouts: batch_lib.Rollouts, chat: bool | None, rows_per_call: int,
                    prompt_slots: int = 0, completion_slots: int = 0,
                    sampled: Sequence[Sequence[int]] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """log π_target(y|x) of each rollout, in the target's own prompt format.

  Args:
    target: (params, config) of the target.
    tokenizer: the target's tokenizer.
    prompts: the step's prompts (`rollouts.prompt_of` indexes them).
    rollouts: the step's rollouts.
    chat: the target's prompts through its chat template.
    rows_per_call, prompt_slots, completion_slots: as in `rewards.text_logprobs`.
    sampled: [N] the teacher's sampled ids (stop id included) when the target shares its
      vocabulary: they are scored as they are. None: each completion's text is re-encoded.

  Returns:
    (float64 [N] log-probs, bool [N] scored): a row with no ids to score (no text under the
    target's tokenizer and no stop) has log-prob 0 and scored False;
    `rewards.worst_for_unscored` then keeps its reward from being a bonus.
  """
  n = len(rollouts.texts)
  vocab = target[1].vocab_size
  prompt_ids = {int(j): tokenizer.encode_prompt(prompts[int(j)], chat=chat)
                for j in np.unique(rollouts.prompt_of)}
  chat_of = {j: uses_chat(tokenizer, prompts[j], chat) for j in prompt_ids}
  seqs, keep = [], []
  for i in range(n):
    # An id past the target's embedding (a teacher's padded vocabulary rows) falls back to text.
    if sampled is not None and sampled[i] and max(sampled[i]) < vocab:
      ids = list(sampled[i])
    else:
      ids = completion_ids(tokenizer, rollouts.texts[i], bool(rollouts.stopped[i]),
                           chat=chat_of[int(rollouts.prompt_of[i])])
    if ids:
      keep.append(i)
      seqs.append((prompt_ids[int(rollouts.prompt_of[i])], ids))
  out, scored = np.zeros(n), np.zeros(n, bool)
  if keep:
    out[keep] = ids_logprobs(target, seqs, rows_per_call=rows_per_call,
                             prompt_slots=prompt_slots, completion_slots=completion_slots)
    scored[keep] = True
  return out, scored


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
    sampled = [gen.row_tokens(r) for r in range(n)] if t.same_ids else None
    logp_target, scored = target_logprobs(
        (t.target.params, t.target.config), t.target_tok, prompts, ro, c.target_chat,
        c.rows_per_call, t.target_prompt_slots, c.max_new_tokens, sampled=sampled)
    r_cal = worst_for_unscored(logp_target - logp_teacher, scored, c.group_size, c.lam)
    logp_target = np.where(scored, logp_target, logp_teacher + r_cal)  # implied, for the logs
  else:  # λ = 0: plain task RL, the target is only scored at evaluations
    logp_target = logp_teacher.copy()
    r_cal = np.zeros(n)
  r_task = correct.astype(np.float64)
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
