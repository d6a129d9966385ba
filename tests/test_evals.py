"""kdknob_jax.evals: pass@k and maj@n against hand and brute-force counts, the report files, and
the runner and CLI end to end on a tiny random model that carries SmolLM2's real tokenizer."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from kdknob_jax.data import get_task, load_records
from kdknob_jax.errors import ConfigError, DataError
from kdknob_jax.evals import (EvalResult, evaluate, format_value, maj_at_n, majority_vote,
                              mean_pass_at_k, metrics_table, pass_at_k, read_metrics, summarize,
                              write_report)
from tests import _calib

# --- pass@k --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4),
    (4, 1, 2, 0.5),
    (16, 0, 1, 0.0),
    (16, 0, 16, 0.0),
    (16, 16, 1, 1.0),
    (3, 3, 3, 1.0),
    (10, 1, 10, 1.0),
    (4, 2, 2, 5 / 6),     # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (6, 1, 3, 0.5),       # 1 - C(5,3)/C(6,3) = 1 - 10/20
])
def test_pass_at_k_hand_computed(n, c, k, expected):
  assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_brute_force_over_subsets():
  for n in range(1, 8):
    for c in range(n + 1):
      outcomes = [True] * c + [False] * (n - c)
      for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
  # math.comb is exact; the product form must agree where the binomials are astronomically large
  n, c, k = 2000, 7, 600
  exact = 1 - math.comb(n - c, k) / math.comb(n, k)
  assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
  assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)


@pytest.mark.parametrize("n,c,k,message", [
    (4, 1, 5, r"1 <= k <= n"), (4, 1, 0, r"1 <= k <= n"), (4, 5, 1, r"c=5 must lie in 0..n=4"),
    (4, -1, 1, r"c=-1"), (0, 0, 1, r"at least one sample"),
])
def test_pass_at_k_errors(n, c, k, message):
  with pytest.raises(ConfigError, match=message):
    pass_at_k(n, c, k)


# --- majority ------------------------------------------------------------------------------------

def test_majority_vote_and_ties():
  assert majority_vote(["12", None, "7", "12"]) == "12"
  assert majority_vote([None, None]) is None and majority_vote([]) is None
  # tie at two each: "b" reached two at sample 2, "a" only at sample 3
  assert majority_vote(["a", "b", "b", "a"]) == "b"
  assert majority_vote(["a", "b", "a", "b"]) == "a"
  assert majority_vote(["x", "y", "z"]) == "x"  # all once: the first sample's answer
  assert majority_vote([None, "y", None, "z", "z"]) == "z"


def test_maj_at_n_and_summary():
  assert maj_at_n(["3", "4", "3"], [True, False, True]) == 1.0
  assert maj_at_n(["3", "4", "4"], [True, False, False]) == 0.0
  assert maj_at_n([None, None], [False, False]) == 0.0
  with pytest.raises(ConfigError, match="same samples"):
    maj_at_n(["3"], [True, False])
  correct = [[True, False, False, False], [True, True, False, True], [False] * 4]
  answers = [["1", "2", "2", None], ["5", "5", "6", "5"], [None] * 4]
  out = summarize(correct, answers, ks=(1, 2, 4))
  assert out["accuracy"] == pytest.approx(4 / 12)
  assert out["maj@4"] == pytest.approx(1 / 3)  # only the second prompt's majority is right
  assert out["pass@1"] == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)
  assert out["pass@2"] == pytest.approx((0.5 + 1.0 + 0) / 3)
  assert out["pass@4"] == pytest.approx(2 / 3)
  assert out["answered"] == pytest.approx(7 / 12)
  assert mean_pass_at_k(correct, 1) == out["pass@1"]
  with pytest.raises(ConfigError, match="same number of samples"):
    summarize([[True], [True, False]], [["1"], ["1", "2"]], ks=(1,))
  with pytest.raises(ConfigError, match="No prompts"):
    summarize([], [], ks=(1,))


# --- report --------------------------------------------------------------------------------------

def test_metrics_table_and_formatting():
  table = metrics_table({
      "teacher": {"pass@16": 0.75, "accuracy": 0.5, "maj@16": 0.625, "pass@1": 0.5,
                  "mean_tokens": 87.25, "prompts": 8},
      "calibrated | λ=-1": {"accuracy": 0.25, "greedy_accuracy": 0.125}})
  lines = table.strip().splitlines()
  assert lines[0] == ("| model | accuracy | maj@16 | pass@1 | pass@16 | greedy_accuracy | "
                      "mean_tokens | prompts |")
  assert lines[2] == "| teacher | 50.0% | 62.5% | 50.0% | 75.0% | - | 87.2 | 8 |"
  assert lines[3].startswith("| calibrated \\| λ=-1 | 25.0% | - |")
  assert format_value("pass@4", 1.0) == "100.0%" and format_value("samples", 64) == "64"
  with pytest.raises(ConfigError):
    metrics_table({})


# --- the runner and CLI on a tiny model ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(checkpoint dir, LoadedModel, Tokenizer) of a tiny random Llama with SmolLM2's tokenizer."""
  from kdknob_jax.hf import load_model, load_tokenizer  # pylint: disable=g-import-not-at-top
  teacher, _ = _calib.make_pair(tmp_path_factory.mktemp("evals"))
  return teacher, load_model(str(teacher)), load_tokenizer(str(teacher))


def _length_task():
  """Capitals prompts graded by the completion's length mod 3: a random model then gets a mix
  of right, wrong and unanswered samples, so every metric is exercised."""
  def parse(text, allowed=None):
    del allowed
    return str(len(text.strip()) % 3) if text.strip() else None
  return dataclasses.replace(get_task("capitals"), name="length_mod3", parse=parse,
                             gold=lambda record: "0", match=None)


SETTINGS = dict(n=4, max_new_tokens=6, temperature=1.0, seed=3, progress=False)


@pytest.fixture(scope="module")
def result(tiny):
  _, model, tok = tiny
  records = load_records("builtin:capitals/test.jsonl", limit=4)
  return evaluate(model.params, model.config, tok, _length_task(), records, ks=(1, 2, 4),
                  prompts_per_call=2, **SETTINGS)


def _texts(res: EvalResult) -> list[list[str]]:
  return [[s.text for s in p.samples] for p in res.prompts]


def test_metrics_agree_with_the_per_sample_records(result):
  task = _length_task()
  m, prompts = result.metrics, result.prompts
  assert [p.index for p in prompts] == [0, 1, 2, 3] and m["prompts"] == 4 and m["samples"] == 16
  samples = [s for p in prompts for s in p.samples]
  assert all(len(p.samples) == 4 for p in prompts)
  for s in samples:
    assert s.answer == task.extract(s.text) and s.correct == (s.answer == "0")
    assert 1 <= s.tokens <= 6
  assert m["accuracy"] == pytest.approx(np.mean([s.correct for s in samples]))
  assert m["pass@1"] == pytest.approx(np.mean([p.num_correct / 4 for p in prompts]))
  assert m["pass@4"] == pytest.approx(np.mean([p.num_correct > 0 for p in prompts]))
  assert m["answered"] == pytest.approx(np.mean([s.answer is not None for s in samples]))
  assert m["mean_tokens"] == pytest.approx(np.mean([s.tokens for s in samples]))
  assert m["truncated"] == pytest.approx(np.mean([not s.stopped for s in samples]))
  majority = []
  for p in prompts:
    answers = [s.answer for s in p.samples]
    counts = {a: answers.count(a) for a in answers if a is not None}
    top = [a for a in counts if counts[a] == max(counts.values())] if counts else []
    assert (p.majority in top) if top else p.majority is None
    majority.append(p.majority == "0")
  assert m["maj@4"] == pytest.approx(np.mean(majority))
  assert m["greedy_accuracy"] == pytest.approx(np.mean([p.greedy.correct for p in prompts]))
  assert all(p.gold == "0" and "capital" in p.prompt for p in prompts)
  assert prompts[2].location.endswith("capitals/test.jsonl:3")
  assert 0 < m["accuracy"] < 1, "the length task should mix right and wrong samples"


def test_same_seed_same_samples_and_call_size_does_not_matter(tiny, result):
  _, model, tok = tiny
  records = load_records("builtin:capitals/test.jsonl", limit=4)
  again = evaluate(model.params, model.config, tok, _length_task(), records, ks=(1, 2, 4),
                   prompts_per_call=2, **SETTINGS)
  assert _texts(again) == _texts(result) and again.metrics == result.metrics
  one_call = evaluate(model.params, model.config, tok, _length_task(), records, ks=(1, 4),
                      prompts_per_call=4, greedy=False, **SETTINGS)
  assert _texts(one_call) == _texts(result)
  assert all(p.greedy is None for p in one_call.prompts)
  assert "greedy_accuracy" not in one_call.metrics
  reseeded = evaluate(model.params, model.config, tok, _length_task(), records, ks=(1,),
                      prompts_per_call=2, greedy=False, **dict(SETTINGS, seed=4))
  assert _texts(reseeded) != _texts(result)


def test_runner_rejects_bad_settings_before_decoding(tiny):
  _, model, tok = tiny
  records = load_records("builtin:capitals/test.jsonl", limit=2)
  with pytest.raises(ConfigError, match=r"k=\[8\] is outside 1..4"):
    evaluate(model.params, model.config, tok, get_task("capitals"), records, n=4, ks=(1, 8))
  with pytest.raises(ConfigError, match="top_p"):
    evaluate(model.params, model.config, tok, get_task("capitals"), records, n=2, top_p=0.0)
  with pytest.raises(DataError, match=r"'capitals': row 1 has no field 'answer'"):
    evaluate(model.params, model.config, tok, get_task("capitals"),
             [{"question": "q", "answer": "Oslo"}, {"question": "q"}], n=2)


def test_write_report_files(result, tmp_path):
  paths = write_report(result, tmp_path / "out", label="tiny", extra={"model": "tiny-dir"})
  samples = json.loads(paths["samples"].read_text())
  metrics = read_metrics(tmp_path / "out")
  assert samples["label"] == metrics["label"] == "tiny"
  assert samples["metrics"] == metrics["metrics"] == result.metrics
  assert metrics["config"]["model"] == "tiny-dir" and metrics["config"]["n"] == 4
  assert len(samples["prompts"]) == 4
  first = samples["prompts"][0]
  assert {"prompt", "gold", "samples", "greedy", "majority", "location"} <= set(first)
  assert [s["text"] for s in first["samples"]] == _texts(result)[0]
  summary = paths["summary"].read_text()
  assert summary.startswith("# tiny on length_mod3") and "| tiny |" in summary
  with pytest.raises(DataError, match="does not exist"):
    read_metrics(tmp_path / "nowhere")


def test_cli_end_to_end(tiny, tmp_path, capsys):
  from kdknob_jax import evaluate as cli  # pylint: disable=g-import-not-at-top
  teacher, _, _ = tiny
  out = tmp_path / "cli"
  code = cli.main(["--model", str(teacher), "--task", "capitals", "--limit", "4", "--n", "4",
                   "--k", "1,4", "--max-new-tokens", "6", "--seed", "3",
                   "--prompts-per-call", "2", "--label", "tiny", "--out", str(out)])
  printed = capsys.readouterr().out
  assert code == 0
  assert "| model | accuracy | maj@4 | pass@1 | pass@4 |" in printed and "| tiny |" in printed
  metrics = read_metrics(out)
  assert metrics["task"] == "capitals" and metrics["metrics"]["prompts"] == 4
  assert metrics["config"]["data"] == "builtin:capitals/test.jsonl"
  samples = json.loads((out / "samples.json").read_text())
  flat = [s for p in samples["prompts"] for s in p["samples"]]
  assert metrics["metrics"]["accuracy"] == pytest.approx(np.mean([s["correct"] for s in flat]))
  assert (out / "summary.md").is_file()


def test_cli_errors_before_loading_a_model(tmp_path, capsys):
  """Data and settings are checked first, so these fail in milliseconds with exit code 2."""
  from kdknob_jax import evaluate as cli  # pylint: disable=g-import-not-at-top
  out, teacher = tmp_path / "cli", tmp_path / "no-model-needed"
  code = cli.main(["--model", str(teacher), "--task", "bigmath", "--out", str(out)])
  assert code == 2 and "has no default data set; pass --data" in capsys.readouterr().err
  code = cli.main(["--model", str(teacher), "--task", "capitals", "--n", "2", "--k", "4",
                   "--out", str(out)])
  assert code == 2 and "outside 1..2" in capsys.readouterr().err
  code = cli.main(["--model", str(teacher), "--task", "trivia", "--out", str(out)])
  assert code == 2 and "Unknown task 'trivia'" in capsys.readouterr().err
  code = cli.main(["--model", str(teacher), "--task", "mmlu_pro", "--data",
                   str(tmp_path / "missing.jsonl"), "--out", str(out)])
  assert code == 2 and "missing.jsonl' not found" in capsys.readouterr().err
  code = cli.main(["--model", str(teacher), "--task", "capitals", "--mesh", "data=x",
                   "--out", str(out)])
  assert code == 2 and "Bad mesh entry" in capsys.readouterr().err
  assert not out.exists()
