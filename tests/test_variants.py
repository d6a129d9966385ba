"""Full-size configs of the paper's models, checked by `jax.eval_shape` only (no allocation)."""

from __future__ import annotations

import pytest

from kdknob_jax.models import param_count
from kdknob_jax.models.variants import VARIANTS, counted_params


@pytest.mark.parametrize("hub_id", sorted(VARIANTS))
def test_parameter_count_within_one_percent(hub_id):
  v = VARIANTS[hub_id]
  cfg = v.config("bfloat16")
  got = counted_params(cfg, param_count(cfg), v.counts)
  assert abs(got / v.published - 1) <= 0.01, (hub_id, got, v.published)


def test_families_and_features():
  assert VARIANTS["google/gemma-3-27b-it"].config().query_scale == pytest.approx(168 ** -0.5)
  assert VARIANTS["google/gemma-3-12b-it"].config().vocab_size == 262208  # multimodal default
  assert VARIANTS["meta-llama/Llama-3.2-3B-Instruct"].config().rope.factor == 32.0
  ds = VARIANTS["deepseek-ai/DeepSeek-R1-0528-Qwen3-8B"].config()
  # transformers ignores the file's `attn_factor` spelling; we match transformers.
  assert ds.rope.kind == "yarn" and ds.rope.attention_factor is None
