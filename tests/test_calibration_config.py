"""The paper's calibration configs at full size, checked without weights: every config file
loads and passes the checks, and one whole calibration step traces at its models' shapes
(`jax.eval_shape`, milliseconds of work, no memory)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from kdknob_jax.errors import ConfigError
from kdknob_jax.models import abstract_params
from kdknob_jax.models.variants import VARIANTS
from kdknob_jax.models.lora import count, init_lora
from kdknob_jax.calibration import config as config_lib
from kdknob_jax.calibration import step as step_lib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = ["qwen8b_distill", "qwen8b_undistill", "gemma12b_distill", "gemma12b_undistill",
         "llama8b_undistill", "dsr1_8b_undistill"]


def _load(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_is_the_paper_recipe(name):
  c = config_lib.build(_load(name))
  assert (c.lora.rank, c.lora.alpha, c.optimizer.lr, c.group_size) == (128, 128.0, 2e-5, 4)
  assert c.lam == (1.0 if name.endswith("_distill") else -1.0)
  assert c.teacher in VARIANTS and c.target in VARIANTS
  assert dict(c.mesh) == {"data": 1, "fsdp": 8, "tensor": 1}  # one 8×H100 host
  assert dict(_load(name, "v5p").mesh) == {"data": -1, "fsdp": 8, "tensor": 1}
  laptop = _load(name, "laptop")
  assert laptop.teacher == config_lib.EMBEDDED_TEACHER and laptop.lam == c.lam
  with pytest.raises(ConfigError, match="Unknown config argument"):
    _load(name, "huge")


@pytest.mark.parametrize("name", ["tiny_distill", "tiny_undistill"])
def test_tiny_configs_use_the_embedded_pair(name):
  c = config_lib.build(_load(name))
  assert (c.teacher, c.target) == (config_lib.EMBEDDED_TEACHER, config_lib.EMBEDDED_TARGET)
  assert _load(name, "smoke").steps < c.steps


@pytest.mark.parametrize("name", ["qwen8b_undistill", "gemma12b_distill"])
def test_a_full_size_step_traces(name):
  c = config_lib.build(_load(name))
  cfg = VARIANTS[c.teacher].config(c.dtype)
  lcfg = c.lora.config()
  base = abstract_params(cfg)
  lora = jax.eval_shape(lambda: init_lora(base, lcfg, jax.random.PRNGKey(0)))
  opt = c.optimizer.make()
  state = step_lib.CalibState(step=jax.ShapeDtypeStruct((), jnp.int32), lora=lora,
                              opt_state=jax.eval_shape(opt.init, lora), base=base)
  p, n, s, t = c.prompts_per_step, c.prompts_per_step * c.group_size, 256, c.max_new_tokens
  i32, f32 = jnp.int32, jnp.float32
  sds = jax.ShapeDtypeStruct
  batch = dict(prompts=sds((p, s), i32), prompt_pos=sds((p, s), i32), owner=sds((n,), i32),
               completions=sds((n, t), i32), completion_pos=sds((n, t), i32),
               mask=sds((n, t), f32), advantages=sds((n,), f32), old_logp=sds((n, t), f32),
               ref_logp=sds((n, t), f32))
  scfg = step_lib.StepConfig(c.beta, c.epsilon, c.epsilon_high, c.aggregation, c.chunk)
  new, metrics = jax.eval_shape(step_lib.make_train_step(cfg, lcfg, scfg, opt), state, batch,
                                jax.random.PRNGKey(0))
  assert jax.tree_util.tree_structure(new.lora) == jax.tree_util.tree_structure(lora)
  assert metrics["loss"].shape == ()
  # LoRA of rank r on every projection holds r·(in + out) params per weight and layer.
  d, q, kv, f = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim,
                 cfg.intermediate_size)
  per_layer = 128 * ((d + q) * 2 + (d + kv) * 2 + (d + f) * 3)
  assert count(lora) == per_layer * cfg.num_layers
