"""Distillation runs on a tiny pair carrying SmolLM2's real tokenizer: each method resumes to
exactly the uninterrupted run, teacher samples are drawn once, a trained student loads back,
and bad setups fail before anything is written."""

from __future__ import annotations

import pytest

from kdknob_jax.errors import ConfigError
from kdknob_jax.distillation.config import build
from tests._calib import TIMING, make_pair, write_data


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  teacher, target = make_pair(root)
  return teacher, target, write_data(root / "rows.jsonl")


def _config(teacher, student, data, method, **overrides):
  from kdknob_jax.distillation.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.teacher, c.student, c.method = str(teacher), str(student), method
  c.student_keep = "0,2" if student == teacher else ""
  c.chat = True
  c.train.update(task="commonsenseqa", source=str(data))
  c.eval.update(task="commonsenseqa", source=str(data), limit=2, max_new_tokens=3)
  c.prompts_per_step, c.samples_per_prompt, c.max_new_tokens = 2, 2, 5
  c.steps, c.checkpoint_every, c.eval_every = 2, 1, 0
  c.optimizer.update(lr=1e-3, warmup_steps=0)
  for k, v in overrides.items():
    c[k] = v
  return c


def _rows(workdir):
  from kdknob_jax.runs.metrics import read_jsonl  # pylint: disable=g-import-not-at-top
  return [{k: v for k, v in r.items() if not k.startswith(TIMING)}
          for r in read_jsonl(workdir / "metrics.jsonl")]


@pytest.mark.parametrize("method", ["sft", "gkd_fkl", "gkd_rkl"])
def test_one_step_then_resume_equals_the_uninterrupted_run(pair_data, tmp_path, method):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from kdknob_jax.distillation import trainer as distill  # pylint: disable=g-import-not-at-top
  from kdknob_jax.runs.resolve import load_student, load_trained  # pylint: disable=g-import-not-at-top
  teacher, _, data = pair_data
  c = _config(teacher, teacher, data, method)
  ref = distill.run(build(c), tmp_path / "ref", progress=False)
  first = distill.run(build(c), tmp_path / "cut", progress=False, stop_after=1)
  assert first["step"] == 1
  cache = tmp_path / "cut" / "teacher_samples.parquet"
  assert cache.exists() == (method != "gkd_rkl")  # on-policy never reads teacher samples
  stamp = cache.stat().st_mtime_ns if cache.exists() else None
  second = distill.run(build(c), tmp_path / "cut", progress=False)
  assert second["step"] == 2
  assert _rows(tmp_path / "cut") == _rows(tmp_path / "ref")
  assert [r["batch/on_policy"] for r in _rows(tmp_path / "ref")] == (
      [1.0, 1.0] if method == "gkd_rkl" else [0.0, 0.0])
  assert np.isfinite(ref["metrics"]["train/loss"]) and ref["metrics"]["train/loss"] > 0
  if stamp is not None:  # read back, not sampled again
    assert cache.stat().st_mtime_ns == stamp
  # The trained student loads back through the general loader, equal in both runs, and it
  # moved away from its starting weights.
  a, _ = load_trained(tmp_path / "ref")
  b, _ = load_trained(tmp_path / "cut")
  assert a.config.num_layers == 2
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  start = load_student(c.student, c.student_keep, c.dtype)
  assert not np.array_equal(np.asarray(a.params["layers"]["q_proj"]),
                            np.asarray(start.params["layers"]["q_proj"]))


def test_sft_across_tokenizers_and_lora_mixture(pair_data, tmp_path):
  """SFT into a student with another tokenizer (the teacher's text re-encoded), and a LoRA
  student on a GKD mixture with half its steps on-policy."""
  from kdknob_jax.distillation import trainer as distill  # pylint: disable=g-import-not-at-top
  teacher, target, data = pair_data
  c = _config(teacher, target, data, "sft", steps=1)
  c.chat = False  # the Gemma-tokenized student has no chat template
  out = distill.run(build(c), tmp_path / "sft", progress=False)
  assert out["step"] == 1 and out["metrics"]["train/loss"] > 0
  c = _config(teacher, teacher, data, "gkd_fkl", on_policy_share=0.5, jsd_beta=0.5, steps=4,
              checkpoint_every=4)
  c.lora.update(rank=2, alpha=4.0)
  mix = distill.run(build(c), tmp_path / "mix", progress=False)
  flags = [r["batch/on_policy"] for r in _rows(tmp_path / "mix")]
  assert mix["step"] == 4 and 0.0 in flags and 1.0 in flags
  assert flags == [float(distill.on_policy_at(build(c), s)) for s in range(4)]


def test_bad_setups_fail_before_anything_is_written(pair_data, tmp_path):
  from kdknob_jax.distillation import trainer as distill  # pylint: disable=g-import-not-at-top
  teacher, target, data = pair_data
  with pytest.raises(ConfigError, match="different tokenizers.*sft"):
    distill.run(build(_config(teacher, target, data, "gkd_fkl")), tmp_path / "a",
                progress=False)
  assert not (tmp_path / "a").exists()
  with pytest.raises(ConfigError, match="student_keep"):
    distill.run(build(_config(teacher, teacher, data, "sft", student_keep="0-7")),
                tmp_path / "b", progress=False)
  with pytest.raises(ConfigError, match="on_policy_share"):
    distill.run(build(_config(teacher, teacher, data, "sft", on_policy_share=0.5)),
                tmp_path / "c", progress=False)
  assert not (tmp_path / "c").exists()


def test_a_samples_cache_of_other_settings_is_refused(pair_data, tmp_path):
  from kdknob_jax.distillation import trainer as distill  # pylint: disable=g-import-not-at-top
  teacher, _, data = pair_data
  cache = tmp_path / "shared.parquet"
  c = _config(teacher, teacher, data, "sft", steps=1, samples_cache=str(cache))
  distill.run(build(c), tmp_path / "one", progress=False)
  before = cache.read_bytes()
  hotter = _config(teacher, teacher, data, "sft", steps=1, samples_cache=str(cache),
                   temperature=2.0)
  with pytest.raises(ConfigError, match="other settings.*temperature"):
    distill.run(build(hotter), tmp_path / "two", progress=False)
  assert cache.read_bytes() == before


def test_sft_on_the_datas_reference_solutions(pair_data, tmp_path):
  """teacher = "reference": the student learns each train row's worked solution (GSM8K's
  `answer` field), which the batch holds token for token, ended as the student ends a turn;
  a task without worked solutions, or a GKD method, is refused before anything is written."""
  import json  # pylint: disable=g-import-not-at-top
  from kdknob_jax.distillation import trainer as distill  # pylint: disable=g-import-not-at-top
  from kdknob_jax.distillation.reference import reference_samples  # pylint: disable=g-import-not-at-top
  from kdknob_jax.hf import load_tokenizer  # pylint: disable=g-import-not-at-top
  teacher, _, data = pair_data
  rows = [{"question": f"Tom has {a} apples and buys {b}. How many?",
           "answer": f"He has {a} + {b} = {a + b}.\n#### {a + b}"} for a, b in ((2, 3), (4, 5))]
  arith = tmp_path / "arith.jsonl"
  arith.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = _config("reference", teacher, arith, "sft", samples_per_prompt=1, steps=1)
  c.student_keep = "0,2"
  c.train.task = c.eval.task = "gsm8k"
  c.max_new_tokens = 32
  out = distill.run(build(c), tmp_path / "ref", progress=False)
  assert out["step"] == 1 and out["metrics"]["train/loss"] > 0
  assert out["metrics"]["train/tokens"] > 2 * 10  # both solutions, not empty rows
  tok = load_tokenizer(teacher)
  got = reference_samples(tok, "gsm8k", rows, chat=True)
  body = tok.encode(rows[0]["answer"], add_special_tokens=False)
  assert got.tokens[0][:len(body)] == body and len(got.tokens[0]) > len(body)
  assert got.texts == [r["answer"] for r in rows] and got.stopped.all()
  with pytest.raises(ConfigError, match="worked solutions"):
    distill.run(build(_config("reference", teacher, data, "sft", samples_per_prompt=1)),
                tmp_path / "csqa", progress=False)
  assert not (tmp_path / "csqa").exists()
  with pytest.raises(ConfigError, match="'reference'.*sft"):
    build(_config("reference", teacher, arith, "gkd_fkl"))
