"""Any model a user can name, loaded the same way: an embedded name, an HF directory, a .gguf
file, a cached hub id, a calibration workdir (the teacher with its adapters) or a distillation
workdir (the trained student). Adapters stay applied, not merged, unless `merge` is asked for
(export): merging into bfloat16 weights would round most of a calibration's change away.

A workdir is recognized by its `run.json`; its weights are the base model's, reloaded from its
source, plus what the run's latest (or a chosen) checkpoint holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.errors import RunStateError
from kdknob_jax.hf import LoadedModel, load_model, load_tokenizer
from kdknob_jax.hf.tokenizer import Tokenizer
from kdknob_jax.models import param_axes
from kdknob_jax.models.derive import keep_layers, parse_keep
from kdknob_jax.models.lora import (ADAPTER_KEY, LoraConfig, adapted, init_lora, lora_axes,
                                    merged_params)
from kdknob_jax.runs.checkpoints import DISTILL_KIND, RunCheckpoints, read_identity
from kdknob_jax.settings import from_mapping
from kdknob_jax.train.optimizer import make_optimizer
from kdknob_jax.train.settings import LoraSettings


def is_workdir(spec: str | Path) -> bool:
  """Whether `spec` names a run directory (calibration or distillation)."""
  return Path(spec).is_dir() and (Path(spec) / "run.json").is_file()


def workdir_step(spec: str | Path) -> int | None:
  """The latest checkpoint step of a run directory, or None (no checkpoint, or not a run)."""
  if not is_workdir(spec):
    return None
  ckpt = RunCheckpoints(spec, read_identity(spec))
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def lora_config(identity: dict) -> LoraConfig | None:
  """The adapter settings recorded in a run's identity (None: rank 0, full fine-tuning)."""
  return from_mapping(LoraSettings, identity["lora"], "run.json lora").config()


def saved_abstract(trainable: dict, optimizer_settings: dict, key: str) -> dict:
  """The shapes of a run's checkpoint on one device: {"step", key, "opt_state", "rng"}.

  Args:
    trainable: the trained tree (or its shapes): adapters, or a student's full params.
    optimizer_settings: the identity's "optimizer" entry.
    key: the tree's name in the checkpoint ("lora" for calibration, "params" for distillation).
  """
  o = optimizer_settings
  opt = make_optimizer(o["lr"], o["warmup_steps"], o["clip"], o["weight_decay"], o["b1"],
                       o["b2"])
  shapes = jax.eval_shape(lambda: trainable)
  tree = {"step": jax.ShapeDtypeStruct((), np.int32), key: shapes,
          "opt_state": jax.eval_shape(opt.init, shapes),
          "rng": jax.eval_shape(lambda: jax.random.PRNGKey(0))}
  one = SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                                tree)


def restore_trained(workdir: str | Path, identity: dict, trainable: dict, key: str,
                    step: int | None = None) -> dict:
  """The trained tree of a run's checkpoint (default: the latest), on one device.

  Raises:
    RunStateError: the workdir has no checkpoint yet, or it cannot be read.
  """
  ckpt = RunCheckpoints(workdir, identity)
  try:
    if ckpt.latest_step() is None:
      raise RunStateError(f"{workdir} has no checkpoint yet; let the run reach its first "
                          "checkpoint_every step (or finish).")
    saved, _ = ckpt.restore(saved_abstract(trainable, identity["optimizer"], key), step)
  finally:
    ckpt.close()
  return saved[key]


def place(params: dict, cfg, mesh, rules) -> dict:
  """Params (with any adapters beside them) on the mesh, each weight in its shards, each
  adapter sharded like its weight (unchanged without a mesh)."""
  if mesh is None:
    return params
  base = {k: v for k, v in params.items() if k != ADAPTER_KEY}
  axes = param_axes(cfg)
  out = jax.device_put(base, sharding_lib.shardings_for(jax.eval_shape(lambda: base), axes,
                                                        mesh, rules))
  adapter = params.get(ADAPTER_KEY)
  if adapter is not None:
    lcfg = LoraConfig(targets=tuple(adapter.layers))
    layers = jax.device_put(adapter.layers, sharding_lib.shardings_for(
        jax.eval_shape(lambda: adapter.layers), lora_axes(axes, lcfg)["layers"], mesh, rules))
    out[ADAPTER_KEY] = adapter.replace(layers=layers)
  return out


def calibrated_teacher(workdir: str | Path, dtype: str | None = None, mesh=None,
                       rules: Sequence = sharding_lib.DEFAULT_RULES, step: int | None = None,
                       merge: bool = False) -> LoadedModel:
  """A calibration run's teacher: the base reloaded from its source with its adapters.

  Args:
    workdir: the run's --workdir.
    dtype: of the weights (default: the run's).
    mesh, rules: place the weights on this mesh.
    step: the checkpoint (default: the latest).
    merge: fold the adapters into the weights (one rounding to `dtype`; for export).
  """
  identity = read_identity(workdir)
  if identity.get("run_kind") == DISTILL_KIND:
    raise RunStateError(f"{workdir} is a distillation run, not a calibration; load it with "
                        "`load_trained`.")
  lcfg = lora_config(identity)
  base = load_model(identity["teacher"], dtype=dtype or identity["dtype"])
  shapes = jax.eval_shape(lambda: base.params)
  lora_shapes = jax.eval_shape(lambda: init_lora(shapes, lcfg, jax.random.PRNGKey(0)))
  lora = restore_trained(workdir, identity, lora_shapes, "lora", step)
  params = (merged_params(base.params, lora, lcfg=lcfg) if merge
            else adapted(base.params, lora, lcfg))
  return dataclasses.replace(base, params=place(params, base.config, mesh, rules))


def load_trained_tokenizer(spec: str | Path) -> Tokenizer:
  """The tokenizer of any model spec `load_trained` takes (no weights are read)."""
  if is_workdir(spec):
    identity = read_identity(spec)
    return load_tokenizer(identity["student" if identity.get("run_kind") == DISTILL_KIND
                                   else "teacher"])
  return load_tokenizer(str(spec))


def load_trained(spec: str | Path, dtype: str = "float32", mesh=None,
                 rules: Sequence = sharding_lib.DEFAULT_RULES, step: int | None = None,
                 merge: bool = False) -> tuple[LoadedModel, Tokenizer]:
  """(model, tokenizer) for any model spec: a name or path `load_model` takes, or a workdir.

  Args:
    spec: an embedded name, HF directory, .gguf file, cached hub id, or a calibration or
      distillation workdir.
    dtype: of the weights.
    mesh, rules: place the weights on this mesh.
    step: a workdir's checkpoint to load (default: the latest).
    merge: fold a workdir's adapters into the weights (for export); else they stay applied.

  Raises:
    ModelNotFoundError, RunStateError: with the fix.
  """
  tokenizer = load_trained_tokenizer(spec)
  if is_workdir(spec):
    if read_identity(spec).get("run_kind") == DISTILL_KIND:
      return trained_student(spec, dtype, mesh, rules, step, merge), tokenizer
    return calibrated_teacher(spec, dtype, mesh, rules, step, merge), tokenizer
  return load_model(str(spec), dtype=dtype, mesh=mesh, rules=rules), tokenizer


def load_student(student: str, keep: str, dtype: str, mesh=None,
                 rules: Sequence = sharding_lib.DEFAULT_RULES) -> LoadedModel:
  """A student's starting weights: `student`, cut to the layers `keep` names ("": all).

  Raises:
    ConfigError: a malformed `keep`.
  """
  model = load_model(student, dtype=dtype)
  layers = parse_keep(keep, model.config.num_layers)
  if layers != tuple(range(model.config.num_layers)):
    params, cfg = keep_layers(model.params, model.config, layers)
    params = jax.tree_util.tree_map(jnp.array, params)  # own the sliced layers
    model = dataclasses.replace(model, params=params, config=cfg)
  return dataclasses.replace(model, params=place(model.params, model.config, mesh, rules))


def trained_student(workdir: str | Path, dtype: str | None = None, mesh=None,
                    rules: Sequence = sharding_lib.DEFAULT_RULES, step: int | None = None,
                    merge: bool = False) -> LoadedModel:
  """A distillation run's student, from its latest (or `step`) checkpoint.

  Args:
    workdir: the run's --workdir.
    dtype: of the returned weights (default: the run's).
    mesh, rules: place the weights on this mesh.
    step: the checkpoint (default: the latest).
    merge: fold adapters into the weights (for export); else they stay applied.
  """
  identity = read_identity(workdir)
  # In the run's dtype, which is what the checkpoint holds.
  model = load_student(identity["student"], identity["student_keep"], identity["dtype"])
  lcfg = lora_config(identity)
  shapes = jax.eval_shape(lambda: model.params)
  trainable = shapes if lcfg is None else jax.eval_shape(
      lambda: init_lora(shapes, lcfg, jax.random.PRNGKey(0)))
  params = restore_trained(workdir, identity, trainable, "params", step)
  cfg = model.config
  base = model.params if lcfg is not None else params
  if dtype and dtype != cfg.dtype:
    base = jax.tree_util.tree_map(lambda x: x.astype(dtype), base)
    cfg = dataclasses.replace(cfg, dtype=dtype)
  if lcfg is not None:
    params = (merged_params(base, params, lcfg=lcfg) if merge
              else adapted(base, params, lcfg))
  else:
    params = base
  return dataclasses.replace(model, params=place(params, cfg, mesh, rules), config=cfg)
