"""The distillation losses against plain references on tiny models: every row run as one full
forward over prompt + completion, logits taken at the positions that predict the completion
(the first one is the prompt's last position), all [T, V] logits held at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdknob_jax.hf import load_model
from kdknob_jax.models import forward
from kdknob_jax.ops.kl import divergence_from_logp, log_probs
from kdknob_jax.models.lora import LoraConfig, init_lora, merge
from kdknob_jax.distillation.step import DistillState, LossConfig, distill_loss, make_train_step
from conftest import normal

PROMPTS = [[5, 9, 17, 3, 60], [7, 2, 11]]
# (prompt index, completion): one row of a single token, whose only prediction comes from the
# prompt's last position.
ROWS = [(0, [4, 8, 15]), (0, [16]), (1, [42, 1, 7, 9]), (1, [3, 250])]
S, T = 8, 6


def _batch(pad_token: int = 0) -> dict:
  prompts = np.full((2, S), pad_token, np.int32)
  prompt_pos = np.full((2, S), -1, np.int32)
  for i, p in enumerate(PROMPTS):
    prompts[i, :len(p)], prompt_pos[i, :len(p)] = p, np.arange(len(p))
  comps = np.full((len(ROWS), T), pad_token, np.int32)
  comp_pos = np.full((len(ROWS), T), -1, np.int32)
  owner = np.array([p for p, _ in ROWS], np.int32)
  for r, (p, c) in enumerate(ROWS):
    comps[r, :len(c)] = c
    comp_pos[r, :len(c)] = len(PROMPTS[p]) + np.arange(len(c))
  return {k: jnp.asarray(v) for k, v in dict(
      prompts=prompts, prompt_pos=prompt_pos, owner=owner, completions=comps,
      completion_pos=comp_pos, mask=(comp_pos >= 0).astype(np.float32)).items()}


def _all_logits(params, cfg):
  """[R, L, V]: every row as prompt + completion, right-padded (causal, so padding after a
  row's end cannot change its logits), one forward for all rows."""
  seqs = [PROMPTS[p] + c for p, c in ROWS]
  width = max(len(x) for x in seqs)
  tokens = np.array([x + [0] * (width - len(x)) for x in seqs], np.int32)
  logits, _ = forward(params, cfg, jnp.asarray(tokens))
  return logits.astype(jnp.float32)


def _row_logits(params, cfg, p, c, logits=None):
  """[len(c), V]: the logits that predict completion c of prompt p."""
  if logits is None:
    logits, _ = forward(params, cfg, jnp.asarray(PROMPTS[p] + c)[None])
    logits = logits.astype(jnp.float32)
    row = 0
  else:
    row = ROWS.index((p, c))
  return logits[row, len(PROMPTS[p]) - 1:len(PROMPTS[p]) + len(c) - 1]


def _reference(student, s_cfg, teacher, t_cfg, lossc: LossConfig):
  total, tokens = 0.0, sum(len(c) for _, c in ROWS)
  all_s = _all_logits(student, s_cfg)
  all_t = None if lossc.loss == "ce" else jax.lax.stop_gradient(_all_logits(teacher, t_cfg))
  for p, c in ROWS:
    zs = _row_logits(student, s_cfg, p, c, all_s)
    if lossc.loss == "ce":
      lp = jax.nn.log_softmax(zs, axis=-1)
      total = total - jnp.sum(jnp.take_along_axis(lp, jnp.asarray(c)[:, None], axis=1))
    else:
      zt = _row_logits(teacher, t_cfg, p, c, all_t)
      d = divergence_from_logp(log_probs(zs, lossc.temperature), log_probs(zt, lossc.temperature),
                               "jsd", lossc.beta)
      total = total + jnp.sum(d)
  return total / tokens


@pytest.fixture(scope="module")
def pair(tiny_dir):
  """(student, teacher): an untied Llama and a tied, soft-capped Gemma-3, one vocabulary."""
  return load_model(tiny_dir("llama_untied")), load_model(tiny_dir("gemma3"))


LOSSES = [LossConfig("ce"), LossConfig("jsd", 0.0), LossConfig("jsd", 1.0, temperature=2.0)]


@pytest.mark.parametrize("lossc", LOSSES, ids=["ce", "fkl", "rkl_T2"])
def test_loss_and_gradient_match_a_plain_full_sequence_reference(pair, lossc):
  student, teacher = pair
  s, t, sc, tc = student.params, teacher.params, student.config, teacher.config
  batch = _batch()
  fn = jax.jit(lambda sp: distill_loss(sp, t, batch, s_cfg=sc, t_cfg=tc, lossc=lossc))
  ref = jax.jit(lambda sp: _reference(sp, sc, t, tc, lossc))
  got_v, got_g = jax.value_and_grad(fn)(s)
  want_v, want_g = jax.value_and_grad(ref)(s)
  assert float(want_v) > 1e-3  # not 0 = 0
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-5)
  for g, w in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(want_g)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=2e-7)


def test_prompt_and_padding_tokens_never_count(pair):
  student, teacher = pair
  lossc = LossConfig("jsd", 0.0)
  base = distill_loss(student.params, teacher.params, _batch(), s_cfg=student.config,
                      t_cfg=teacher.config, lossc=lossc)
  # Other padding ids change nothing.
  other = distill_loss(student.params, teacher.params, _batch(pad_token=77),
                       s_cfg=student.config, t_cfg=teacher.config, lossc=lossc)
  np.testing.assert_allclose(float(other), float(base), rtol=1e-6)
  # The single-token row's loss is its first (and only) completion position, predicted by the
  # prompt's last token: dropping that row changes the loss by exactly its share.
  batch = _batch()
  one = dict(batch, mask=batch["mask"].at[1, 0].set(0.0))
  without = distill_loss(student.params, teacher.params, one, s_cfg=student.config,
                         t_cfg=teacher.config, lossc=lossc)
  zs = _row_logits(student.params, student.config, 0, [16])
  zt = _row_logits(teacher.params, teacher.config, 0, [16])
  first = float(divergence_from_logp(log_probs(zs), log_probs(zt), "jsd", 0.0)[0])
  n = sum(len(c) for _, c in ROWS)
  np.testing.assert_allclose(float(base) * n, float(without) * (n - 1) + first, rtol=1e-5)


def test_train_step_is_one_sgd_step_on_the_loss(pair):
  """With LoRA (full fine-tuning is the same step without the merge; the runs test it)."""
  use_lora = True
  student, teacher = pair
  s, sc = student.params, student.config
  lossc = LossConfig("jsd", 0.5)
  lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj")) if use_lora else None
  if use_lora:
    lora = init_lora(s, lcfg, jax.random.PRNGKey(0))
    trainable = jax.tree_util.tree_map_with_path(  # non-zero B, so that A gets a gradient too
        lambda path, x: (normal(len(str(path)), x.shape, 0.1)
                         if path[-1].key == "b" else x), lora)
  else:
    trainable = jax.tree_util.tree_map(jnp.copy, s)
  opt = optax.sgd(1.0)
  before = jax.tree_util.tree_map(np.asarray, trainable)

  def objective(tr):
    sp = tr if lcfg is None else merge(s, tr, lcfg)
    return _reference(sp, sc, teacher.params, teacher.config, lossc)

  want = jax.jit(jax.grad(objective))(trainable)
  copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # the step donates its state
  state = DistillState(step=jnp.zeros((), jnp.int32), params=trainable,
                       opt_state=opt.init(trainable), base=copy(s) if use_lora else {},
                       teacher=copy(teacher.params))
  new, metrics = make_train_step(sc, teacher.config, lcfg, lossc, opt)(state, _batch())
  got = jax.tree_util.tree_map(lambda a, b: a - np.asarray(b), before, new.params)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, np.asarray(w), rtol=2e-4, atol=2e-7)
  assert int(new.step) == 1 and float(metrics["tokens"]) == sum(len(c) for _, c in ROWS)
