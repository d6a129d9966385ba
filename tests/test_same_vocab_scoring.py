"""How the target scores rollouts: the sampled ids themselves when it shares the teacher's
vocabulary, the re-encoded text otherwise, and never a bonus for a rollout it cannot score."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from kdknob_jax.calibration.objective import combine_advantages
from kdknob_jax.calibration import rewards
from kdknob_jax.calibration.rewards import ids_logprobs, worst_for_unscored
from kdknob_jax.calibration.rollouts import target_logprobs
from kdknob_jax.hf.tokenizer import Tokenizer, completion_ids, same_vocabulary
from kdknob_jax.models import ModelConfig, init_params
from kdknob_jax.models.scoring import call_rows, prompt_slot_count
from kdknob_jax.train.batch import Rollouts
from conftest import TINY
from tests._tiny_tokenizers import make_tokenizer_dir

MERGES = [("a", "b")]  # "ab" has a canonical token, so [a, b] is a non-canonical spelling


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return Tokenizer(make_tokenizer_dir(tmp_path_factory.mktemp("tok"), "qwen3", merges=MERGES))


@pytest.fixture(scope="module")
def target(tok):
  cfg = ModelConfig.from_hf(dict(TINY["qwen3"], vocab_size=tok.vocab_size + 4))
  return init_params(cfg, jax.random.PRNGKey(1)), cfg


def _rollouts(texts, stopped, prompt_of):
  return Rollouts({}, list(texts), np.asarray(stopped, bool), np.array([len(t) for t in texts]),
                  np.asarray(prompt_of, np.int32))


def test_same_vocabulary_compares_the_token_to_id_maps(tmp_path, tok):
  same = Tokenizer(make_tokenizer_dir(tmp_path / "same", "qwen3", merges=MERGES))
  base = Tokenizer(make_tokenizer_dir(tmp_path / "base", "qwen3_base", merges=MERGES))
  no_merge = Tokenizer(make_tokenizer_dir(tmp_path / "no_merge", "qwen3"))
  other = Tokenizer(make_tokenizer_dir(tmp_path / "other", "gemma3", merges=MERGES))
  assert same_vocabulary(tok, tok) and same_vocabulary(tok, same)
  # Another EOS or chat template does not change what the ids mean.
  assert same_vocabulary(tok, base)
  assert not same_vocabulary(tok, no_merge)  # one token fewer
  assert not same_vocabulary(tok, other)  # other added tokens (and ids)


def test_shared_vocabulary_scores_the_sampled_ids_not_the_reencoded_text(tok, target):
  a, b = tok.encode("a", False)[0], tok.encode("b", False)[0]
  e_first = tok.encode("é", False)[0]  # the first byte of a two-byte character
  im_end = tok._tok.token_to_id("<|im_end|>")  # pylint: disable=protected-access
  sampled = [[a, b, im_end], [a, e_first]]  # non-canonical, stopped; cut inside a character
  texts = [tok.decode(s) for s in sampled]
  ro = _rollouts(texts, [True, False], [0, 1])
  prompts = ["Say ab.", "Say é."]
  # Re-encoding would score other sequences: the merged "ab", three replacement-char bytes.
  assert completion_ids(tok, texts[0], True, chat=True) != sampled[0]
  assert completion_ids(tok, texts[1], False, chat=True) != sampled[1]
  got, scored = target_logprobs(target, tok, prompts, ro, True, 4, sampled=sampled)
  want = ids_logprobs(target, [(tok.encode_prompt(p, chat=True), s)
                               for p, s in zip(prompts, sampled)], rows_per_call=4)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert scored.all()
  text_path, _ = target_logprobs(target, tok, prompts, ro, True, 4)
  assert np.all(np.abs(text_path - want) > 1e-3)


def test_an_id_past_the_targets_vocabulary_falls_back_to_the_text(tok, target):
  ro = _rollouts(["hi"], [False], [0])
  past = [[target[1].vocab_size + 3]]  # a padded row of a larger teacher embedding
  got, scored = target_logprobs(target, tok, ["P"], ro, False, 2, sampled=past)
  want, _ = target_logprobs(target, tok, ["P"], ro, False, 2)
  assert scored.all() and got == pytest.approx(want)


@pytest.mark.parametrize("lam", [1.0, -1.0])
def test_an_unscoreable_completion_is_never_a_bonus(tok, target, lam):
  """Cross-tokenizer: a row with no text and no stop has no log π_target; it gets its group's
  worst scored r_cal under λ, so its calibration advantage is the group's lowest whichever
  way λ points (with log π_target = 0 and λ > 0 it was the highest)."""
  g = 3
  texts = ["Blue.", "", "Red, maybe.", "", "", "Green"]
  stopped = [True, False, False, False, False, True]
  ro = _rollouts(texts, stopped, [0, 0, 0, 1, 1, 1])
  logp, scored = target_logprobs(target, tok, ["Sky?", "Grass?"], ro, True, 4)
  assert scored.tolist() == [True, False, True, False, False, True]
  logp_teacher = np.array([-3.0, -0.1, -9.0, -0.2, -0.3, -4.0])  # cheap to the teacher
  raw = logp - logp_teacher
  r_cal = worst_for_unscored(raw, scored, g, lam)
  np.testing.assert_array_equal(r_cal[scored], raw[scored])

  def lowest(rewards):
    adv = np.asarray(combine_advantages({"cal": rewards}, {"cal": lam}, g))
    return all(adv[r][~scored[r]].max() <= adv[r][scored[r]].min() + 1e-6
               for r in (slice(0, g), slice(g, 2 * g)))
  assert lowest(r_cal)
  if lam > 0:
    assert not lowest(raw)  # the old rule's bonus


def test_a_small_batch_is_not_padded_to_a_full_call(tok, target, monkeypatch):
  """Three completions with rows_per_call=16 run in a call of 4 rows, and score as each alone."""
  seqs = [(tok.encode_prompt(p, chat=False), tok.encode(c, False))
          for p, c in [("One", "ab a"), ("Two two", "b"), ("One", "a b ab")]]
  assert [call_rows(n, 16) for n in (1, 3, 4, 5, 16, 40)] == [1, 4, 4, 8, 16, 16]
  calls, original = [], rewards.call_arrays

  def recorded(call, sequences, rows_per_call, *args):
    members, arrays = original(call, sequences, rows_per_call, *args)
    calls.append(arrays[3].shape[0])  # the call's completion rows
    return members, arrays

  monkeypatch.setattr(rewards, "call_arrays", recorded)
  together = ids_logprobs(target, seqs, rows_per_call=16)
  assert calls == [4]
  monkeypatch.undo()
  alone = [ids_logprobs(target, [s], rows_per_call=1)[0] for s in seqs]
  np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_prompt_slots_pad_a_runs_fixed_length_finely_and_free_lengths_coarsely():
  assert prompt_slot_count(130, 130) == 136  # a run's own longest prompt: one shape anyway
  assert prompt_slot_count(100, 130) == 136
  assert prompt_slot_count(130, 0) == 160  # free lengths: buckets of 32, few compiled shapes
  assert prompt_slot_count(130, 100) == 160  # fixed slots too few for this batch: bucketed
  assert prompt_slot_count(5, 0) == 32


def test_worst_for_unscored_edge_cases():
  r = np.array([1.0, 5.0, -2.0, 7.0, 3.0, 4.0])
  some = np.array([True, True, False, False, False, False])
  # A group with no scored row takes the batch's worst scored reward.
  np.testing.assert_array_equal(worst_for_unscored(r, some, 2, 1.0), [1, 5, 1, 1, 1, 1])
  np.testing.assert_array_equal(worst_for_unscored(r, some, 2, -0.5), [1, 5, 5, 5, 5, 5])
  # Nothing scored: every reward 0, so no row is preferred to another.
  np.testing.assert_array_equal(worst_for_unscored(r, np.zeros(6, bool), 3, 1.0), np.zeros(6))
  np.testing.assert_array_equal(worst_for_unscored(r, np.ones(6, bool), 3, 1.0), r)


def test_a_calibration_step_against_the_teacher_itself_gives_zero_reward(tmp_path, monkeypatch):
  """Teacher = target (one tokenizer, same prompt format): at step 0 the adapters are zero, so
  the target scoring the teacher's own sampled ids gives r_cal = 0 on every rollout, up to
  float32 sums; scoring re-encoded text would not."""
  from kdknob_jax.calibration import trainer  # pylint: disable=g-import-not-at-top
  from tests import _calib  # pylint: disable=g-import-not-at-top
  teacher, _ = _calib.make_pair(tmp_path)
  infos = []
  original = trainer.rollout

  def recording(*args, **kwargs):
    batch, info = original(*args, **kwargs)
    infos.append(info)
    return batch, info
  monkeypatch.setattr(trainer, "rollout", recording)
  config = _calib.tiny_config(teacher, teacher, _calib.write_data(tmp_path / "rows.jsonl"),
                              steps=1, target_chat=True, lam=1.0)
  trainer.run(config, tmp_path / "run", progress=False)
  info = infos[0]
  np.testing.assert_allclose(info["r_cal"], 0.0, atol=1e-4 * np.abs(info["logp_teacher"]).max())
