"""The pilot command: the paper pairs' configs at full size (shapes only), config errors, and an
end-to-end smoke run of the embedded config through the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jax
import jax.numpy as jnp

from kdknob_jax.experiments import pilot, pilot_config
from kdknob_jax.models.scoring import predictor_hidden
from kdknob_jax.diagnostics.traps import score_tokens
from kdknob_jax.errors import ConfigError
from kdknob_jax.models import abstract_params, head_of
from kdknob_jax.models.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
PAPER = ["pilot_qwen3_1p7b_8b", "pilot_qwen3_1p7b_14b", "pilot_qwen3_1p7b_32b",
         "pilot_gemma3_4b_12b", "pilot_gemma3_4b_27b"]


# Rows in the shared data's formats, written by the tests, so that they run where
# ../shared/data is absent.
_GSM8K_ROWS = [
    {"question": "Ann has 3 boxes of 12 pens and gives away 5 pens. How many pens are left?",
     "answer": "3 boxes hold 3 * 12 = 36 pens. 36 - 5 = 31.\n#### 31"},
    {"question": "A train travels 60 km per hour for 2.5 hours. How far does it go?",
     "answer": "60 * 2.5 = 150 km.\n#### 150"},
]
_CSQA_ROWS = [
    {"answerKey": "B", "question": {"stem": "Where would you keep milk cold?", "choices": [
        {"label": "A", "text": "oven"}, {"label": "B", "text": "refrigerator"},
        {"label": "C", "text": "desk"}, {"label": "D", "text": "garden"},
        {"label": "E", "text": "car roof"}]}},
    {"answerKey": "A", "question": {"stem": "What do you use to cut paper?", "choices": [
        {"label": "A", "text": "scissors"}, {"label": "B", "text": "spoon"},
        {"label": "C", "text": "pillow"}, {"label": "D", "text": "cup"},
        {"label": "E", "text": "blanket"}]}},
]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
  """A data root holding the two files the embedded config names; KDKNOB_DATA points at it."""
  root = tmp_path / "data"
  for rel, rows in (("gsm8k/test.jsonl", _GSM8K_ROWS),
                    ("commonsenseqa/sample200.jsonl", _CSQA_ROWS)):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
  monkeypatch.setenv("KDKNOB_DATA", str(root))
  return root


def _config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", PAPER)
def test_paper_pair_configs_trace_at_full_size(name):
  """Both models resolve to the paper's variants with one vocabulary, and one scoring call
  (16 rollouts of 4 prompts) traces at full size without allocating."""
  c = _config(name)
  assert c.rollouts == 16 and c.temperature == 1.0 and c.top_k == 0 and c.top_p == 1.0
  student, teacher = (VARIANTS[n].config(c.dtype) for n in (c.student, c.teacher))
  assert student.vocab_size == teacher.vocab_size
  assert teacher.hidden_size > student.hidden_size
  rows, p_len, c_len = c.score_rows, 256, 1024
  args = (jax.ShapeDtypeStruct((4, p_len), jnp.int32), jax.ShapeDtypeStruct((4, p_len), jnp.int32),
          jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows, c_len), jnp.int32),
          jax.ShapeDtypeStruct((rows, c_len), jnp.int32))
  hidden = {}
  for side, cfg in (("s", student), ("t", teacher)):
    params = abstract_params(cfg)
    h = jax.eval_shape(lambda p, *a, cfg=cfg: predictor_hidden(p, cfg, *a), params, *args)
    assert h.shape == (rows, c_len, cfg.hidden_size) and h.dtype == jnp.bfloat16
    hidden[side] = (jax.ShapeDtypeStruct((rows * c_len, cfg.hidden_size), h.dtype),
                    *head_of(params, cfg))
  (hs, ws, s_spec), (ht, wt, t_spec) = hidden["s"], hidden["t"]
  n = rows * c_len
  out = jax.eval_shape(
      lambda *a: score_tokens(*a, ks=(1, 10, 100, 1000), direction="rkl", student_spec=s_spec,
                              teacher_spec=t_spec, chunk=64),
      hs, ws, ht, wt, jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n,),
                                                                                  jnp.float32))
  assert out["contrib"].shape == (5, student.vocab_size)
  assert out["rkl"].shape == (n,)


def test_config_errors_name_the_fix(tmp_path):
  c = _config("pilot_embedded", "smoke")
  c.rollouts = 1
  with pytest.raises(ConfigError, match="rollouts"):
    pilot.run(pilot_config.build(c), tmp_path)
  c = _config("pilot_embedded", "smoke")
  c.datasets = [dict(name="x", source="gsm8k/test.jsonl")]
  with pytest.raises(ConfigError, match="task"):
    pilot.run(pilot_config.build(c), tmp_path)
  c = _config("pilot_embedded", "smoke")
  c.temperature = -1.0
  with pytest.raises(ConfigError, match="temperature"):
    pilot.run(pilot_config.build(c), tmp_path)
  with pytest.raises(ValueError, match="smoke"):
    _config("pilot_embedded", "huge")


@pytest.mark.slow
def test_pair_with_two_tokenizers_is_refused(tmp_path, data_dir):  # pylint: disable=unused-argument
  c = _config("pilot_embedded", "smoke")
  c.student, c.student_layers = "gemma3-270m", 0
  with pytest.raises(ConfigError, match="one tokenizer"):
    pilot.run(pilot_config.build(c), tmp_path)
  assert not (tmp_path / "table1.md").exists()  # nothing half-written


@pytest.mark.slow
def test_embedded_smoke_run_through_the_cli(tmp_path, data_dir):  # pylint: disable=unused-argument
  out = tmp_path / "pilot"
  proc = subprocess.run(
      [sys.executable, "-m", "kdknob_jax.pilot", "--config",
       str(ROOT / "configs" / "pilot_embedded.py") + ":smoke", "--workdir", str(out),
       "--config.seed=3"], capture_output=True, text=True, timeout=900, check=False, cwd=ROOT,
      env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (out / "table1.md").read_text()
  assert "| commonsenseqa |" in table and "| gsm8k |" in table
  data = json.loads((out / "pilot.json").read_text())
  assert data["config"]["seed"] == 3
  assert data["student"]["layers"] == 18 and data["teacher"]["layers"] == 30
  for row in data["table1"]:
    # A truncated student differs from its teacher: positive token and sequence divergences.
    assert row["token_rkl_on"] > 0 and row["token_fkl_off"] > 0
    assert math.isfinite(row["seq_rkl_on"])
  assert len(data["samples"]) == 2 * 2 * 2 * 2  # datasets x samplers x prompts x rollouts
  for panel in data["figure2"].values():
    levels = panel["levels"]
    assert [lv["k"] for lv in levels] == [1, 10, 100, 1000, 49152]
    assert levels[-1]["kl_share"] == pytest.approx(1.0)
  assert (out / "figure2_tail.png").stat().st_size > 10_000
  assert (out / "table1.csv").read_text().startswith("dataset,")
