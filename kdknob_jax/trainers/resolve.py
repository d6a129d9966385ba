"""Any model a user can name, loaded the same way: an embedded name, an HF directory, a .gguf
file, a cached hub id, a calibration workdir (the teacher with its adapters merged) or a
distillation workdir (the trained student).

A workdir is recognized by its `run.json`; its weights are the base model's, reloaded from its
source, plus what the run's latest (or a chosen) checkpoint holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

from kdknob_jax import sharding as sharding_lib
from kdknob_jax.checkpoint import RunCheckpoints, read_identity
from kdknob_jax.errors import RunStateError
from kdknob_jax.hf import LoadedModel, load_model, load_tokenizer
from kdknob_jax.hf.tokenizer import Tokenizer
from kdknob_jax.models import param_axes
from kdknob_jax.rl.lora import LoraConfig, init_lora, merge, targets_from_names

DISTILL_KIND = "distill"  # run.json's "run_kind" of a distillation; calibrations have none


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


def lora_config(identity: dict) -> LoraConfig:
  """The adapter settings recorded in a run's identity."""
  lo = identity["lora"]
  return LoraConfig(int(lo["rank"]), float(lo["alpha"]), targets_from_names(lo["targets"]))


def saved_abstract(trainable: dict, optimizer_settings: dict, key: str) -> dict:
  """The shapes of a run's checkpoint on one device: {"step", key, "opt_state", "rng"}.

  Args:
    trainable: the trained tree (or its shapes): adapters, or a student's full params.
    optimizer_settings: the identity's "optimizer" entry.
    key: the tree's name in the checkpoint ("lora" for calibration, "params" for distillation).
  """
  from kdknob_jax.trainers.step import make_optimizer  # pylint: disable=g-import-not-at-top
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


def _place(params: dict, cfg, mesh, rules) -> dict:
  if mesh is None:
    return params
  shardings = sharding_lib.shardings_for(jax.eval_shape(lambda: params), param_axes(cfg), mesh,
                                         rules)
  return jax.device_put(params, shardings)


def calibrated_teacher(workdir: str | Path, dtype: str | None = None, mesh=None,
                       rules: Sequence = sharding_lib.DEFAULT_RULES, step: int | None = None
                       ) -> LoadedModel:
  """A calibration run's teacher: the base reloaded from its source with the adapters merged.

  Args:
    workdir: the run's --workdir.
    dtype: of the weights (default: the run's).
    mesh, rules: place the merged weights on this mesh.
    step: the checkpoint (default: the latest).
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
  merged = jax.jit(lambda b, l: merge(b, l, lcfg))(base.params, lora)
  return dataclasses.replace(base, params=_place(merged, base.config, mesh, rules))


def load_trained_tokenizer(spec: str | Path) -> Tokenizer:
  """The tokenizer of any model spec `load_trained` takes (no weights are read)."""
  if is_workdir(spec):
    identity = read_identity(spec)
    return load_tokenizer(identity["student" if identity.get("run_kind") == DISTILL_KIND
                                   else "teacher"])
  return load_tokenizer(str(spec))


def load_trained(spec: str | Path, dtype: str = "float32", mesh=None,
                 rules: Sequence = sharding_lib.DEFAULT_RULES, step: int | None = None
                 ) -> tuple[LoadedModel, Tokenizer]:
  """(model, tokenizer) for any model spec: a name or path `load_model` takes, or a workdir.

  Args:
    spec: an embedded name, HF directory, .gguf file, cached hub id, or a calibration or
      distillation workdir.
    dtype: of the weights.
    mesh, rules: place the weights on this mesh.
    step: a workdir's checkpoint to load (default: the latest).

  Raises:
    ModelNotFoundError, RunStateError: with the fix.
  """
  tokenizer = load_trained_tokenizer(spec)
  if is_workdir(spec):
    if read_identity(spec).get("run_kind") == DISTILL_KIND:
      from kdknob_jax.trainers import distill  # pylint: disable=g-import-not-at-top
      return distill.trained_student(spec, dtype, mesh, rules, step), tokenizer
    return calibrated_teacher(spec, dtype, mesh, rules, step), tokenizer
  return load_model(str(spec), dtype=dtype, mesh=mesh, rules=rules), tokenizer
