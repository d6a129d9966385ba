"""Typed settings: a config file's ConfigDict becomes frozen dataclasses once, with the same
defaults in both forms, unknown keys named, and every trainer's identity drawn from the typed
fields."""

from __future__ import annotations

import dataclasses

import pytest

from kdknob_jax import settings as settings_lib
from kdknob_jax.calibration import config as calib_config
from kdknob_jax.distillation import config as distill_config
from kdknob_jax.errors import ConfigError
from kdknob_jax.experiments import pilot_config, pipeline_config


@pytest.mark.parametrize("module,cls", [
    (calib_config, calib_config.CalibConfig), (distill_config, distill_config.DistillConfig),
    (pipeline_config, pipeline_config.PipelineConfig), (pilot_config, pilot_config.PilotConfig)])
def test_configdict_and_dataclass_defaults_agree(module, cls):
  c = module.base_config()
  typed = settings_lib.from_mapping(cls, c)
  assert typed == cls()
  assert settings_lib.to_configdict(typed).to_dict() == c.to_dict()


def test_edits_arrive_typed_and_frozen():
  c = calib_config.base_config()
  c.teacher, c.target, c.lam = "t", "g", -1.0
  c.lora.update(rank=8, alpha=16.0, targets="attention")
  c.rules = [["batch", "data"]]
  typed = calib_config.build(c)
  assert typed.lam == -1.0 and typed.lora.config().scale == 2.0
  assert typed.lora.config().targets == ("q_proj", "k_proj", "v_proj", "o_proj")
  assert typed.rules == (("batch", "data"),)  # lists become tuples: hashable, frozen
  with pytest.raises(dataclasses.FrozenInstanceError):
    typed.lam = 2.0  # type: ignore[misc]
  # The identity a workdir is bound to is the typed fields' values.
  ident = typed.identity()
  assert ident["lora"] == {"rank": 8, "alpha": 16.0, "targets": "attention"}
  assert set(ident) == set(calib_config.IDENTITY_KEYS)


def test_unknown_keys_are_named_with_their_path():
  with pytest.raises(ConfigError, match=r"config\.lora has no setting rnak"):
    settings_lib.from_mapping(calib_config.CalibConfig, {"lora": {"rnak": 4}})
  with pytest.raises(ConfigError, match=r"config\.datasets\[0\] has no setting tsak"):
    settings_lib.from_mapping(pilot_config.PilotConfig, {"datasets": [{"name": "x",
                                                                       "tsak": "gsm8k"}]})


def test_checks_run_at_the_boundary():
  c = distill_config.base_config()
  c.teacher, c.student, c.method = "t", "s", "sft"
  c.on_policy_share = 0.5
  with pytest.raises(ConfigError, match="on_policy_share must be 0"):
    distill_config.build(c)
  c.on_policy_share = -1.0
  typed = distill_config.build(c)
  assert typed.knobs == (0.0, 0.0) and typed.identity()["run_kind"] == "distill"


def test_flat_hparams_hold_the_scalar_settings():
  flat = settings_lib.flat(calib_config.CalibConfig(teacher="t"))
  assert flat["teacher"] == "t" and flat["lora.rank"] == 128 and flat["optimizer.lr"] == 2e-5
  assert "rules" not in flat and "mesh.fsdp" in flat
