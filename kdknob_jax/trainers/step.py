"""The calibration step: jitted scoring of rollouts and one LoRA update, under a mesh.

A rollout batch holds P' distinct prompts and N = P·G completions (rows), laid out for
`predictor_hidden`: each prompt runs once and its KV cache is gathered for its G rows.
Shapes: P prompts, S prompt slots, N rows, T completion slots, D hidden; positions of
padding are −1 (the decoder masks on positions).

The state carries the frozen base params next to the trainable LoRA tree so the step can be
`(state, batch, rng) → (state, metrics)` with the state donated; only `step`, `lora` and
`opt_state` are ever checkpointed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdknob_jax.diagnostics.traps import predictor_hidden
from kdknob_jax.models import ModelConfig, head_of
from kdknob_jax.ops.fused_kl import auto_chunk, chunk_rows, head_logits, unchunk_rows
from kdknob_jax.ops.kl import log_probs
from kdknob_jax.rl.lora import LoraConfig, merge
from kdknob_jax.rl.objective import policy_loss

Array = jax.Array

# Rollout arrays and the logical axes of their leading dims.
BATCH_FIELDS = ("prompts", "prompt_pos", "owner", "completions", "completion_pos", "mask",
                "advantages", "old_logp", "ref_logp")


@flax.struct.dataclass
class CalibState:
  """Training state. `base` is frozen and reloaded from its source, never checkpointed."""
  step: Array
  lora: dict
  opt_state: Any
  base: dict


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the jitted functions.

  Attributes:
    beta: weight of the per-token k3 KL anchor to the base model.
    epsilon: lower clip range of the ratio.
    epsilon_high: upper clip range.
    aggregation: "sequence_mean" or "token_mean".
    chunk: rows of the LM head evaluated at once (the [chunk, V] logits are recomputed in
      the backward pass instead of stored); 0 picks `auto_chunk`'s size.
    on_policy: one update per rollout batch (μ = 1): the sampling policy is the policy being
      trained, so the old log-probs are the current ones with the gradient stopped (ratio
      exactly 1, as TRL does) and no separate forward pass computes them.
  """
  beta: float = 0.04
  epsilon: float = 0.2
  epsilon_high: float = 0.2
  aggregation: str = "sequence_mean"
  chunk: int = 0
  on_policy: bool = False


def make_optimizer(lr: float, warmup_steps: int, clip: float, weight_decay: float,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW after global-norm clipping, the learning rate warmed up linearly then constant."""
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
      [max(warmup_steps, 1)]) if warmup_steps > 0 else optax.constant_schedule(lr)
  return optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))


def _context(mesh, rules):
  if mesh is None:
    return contextlib.nullcontext()
  stack = contextlib.ExitStack()
  stack.enter_context(mesh)  # the decoder engine does the same (inside jit)
  stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def completion_logp(params: dict, cfg: ModelConfig, batch: dict[str, Array], chunk: int
                    ) -> Array:
  """Float32 log-probs [N, T] of every completion token under `params` (0 on padding).

  The head runs over chunks of rows under `jax.checkpoint`, so the backward pass holds one
  chunk's [chunk, V] logits at a time.
  """
  hidden = predictor_hidden(params, cfg, batch["prompts"], batch["prompt_pos"], batch["owner"],
                            batch["completions"], batch["completion_pos"])
  n, t, d = hidden.shape
  weight, spec = head_of(params, cfg)

  @jax.checkpoint
  def one(xs):
    h, tok = xs
    lp = log_probs(head_logits(h, weight, spec))
    return jnp.take_along_axis(lp, tok[:, None], axis=1)[:, 0]

  rows = n * t
  c = chunk or auto_chunk(rows, cfg.vocab_size)
  out = jax.lax.map(one, (chunk_rows(hidden.reshape(rows, d), c),
                          chunk_rows(batch["completions"].reshape(rows).astype(jnp.int32), c)))
  lp = unchunk_rows(out, rows).reshape(n, t)
  return jnp.where(batch["completion_pos"] >= 0, lp, 0.0)


@functools.partial(jax.jit, static_argnames=("cfg", "lcfg", "mesh", "rules"))
def merged_params(base: dict, lora: dict, *, cfg: ModelConfig, lcfg: LoraConfig, mesh=None,
                  rules=()) -> dict:
  """The adapted weights, for sampling (a transient copy; the step never needs one)."""
  del cfg
  with _context(mesh, rules):
    return merge(base, lora, lcfg)


@functools.partial(jax.jit, static_argnames=("cfg", "lcfg", "scfg", "mesh", "rules"))
def score_rollouts(state: CalibState, batch: dict[str, Array], *, cfg: ModelConfig,
                   lcfg: LoraConfig, scfg: StepConfig, mesh=None, rules=()
                   ) -> tuple[Array, Array]:
  """(old_logp, ref_logp) [N, T]: the sampling policy's and the base model's log-probs of
  the completion tokens. Each is zeros when it is not needed: old_logp on policy (see
  `StepConfig.on_policy`), ref_logp without a KL anchor."""
  with _context(mesh, rules):
    zeros = jnp.zeros(batch["completions"].shape, jnp.float32)
    old = (zeros if scfg.on_policy else
           completion_logp(merge(state.base, state.lora, lcfg), cfg, batch, scfg.chunk))
    ref = completion_logp(state.base, cfg, batch, scfg.chunk) if scfg.beta else zeros
  return old, ref


def _train_step(state: CalibState, batch: dict[str, Array], rng: Array, *, cfg: ModelConfig,
                lcfg: LoraConfig, scfg: StepConfig, optimizer: optax.GradientTransformation,
                mesh=None, rules=()) -> tuple[CalibState, dict[str, Array]]:
  del rng  # the clipped surrogate is deterministic given the batch
  with _context(mesh, rules):
    def loss_fn(lora):
      logp = completion_logp(merge(state.base, lora, lcfg), cfg, batch, scfg.chunk)
      old = jax.lax.stop_gradient(logp) if scfg.on_policy else batch["old_logp"]
      return policy_loss(logp, old, batch["advantages"], batch["mask"],
                         ref_logp=batch["ref_logp"], beta=scfg.beta, epsilon=scfg.epsilon,
                         epsilon_high=scfg.epsilon_high, aggregation=scfg.aggregation)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lora)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.lora)
    lora = optax.apply_updates(state.lora, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, lora=lora, opt_state=opt_state), metrics


def make_train_step(cfg: ModelConfig, lcfg: LoraConfig, scfg: StepConfig,
                    optimizer: optax.GradientTransformation, mesh=None, rules=(),
                    state_shardings=None):
  """The jitted `(state, batch, rng) → (state, metrics)` with the state donated.

  Args:
    cfg, lcfg, scfg: the model, adapter and loss settings.
    optimizer: updates the adapters.
    mesh, rules: run under this mesh with these logical-axis rules.
    state_shardings: the state's shardings; the new state is pinned to them so the next call
      reuses the same compiled program.
  """
  fn = functools.partial(_train_step, cfg=cfg, lcfg=lcfg, scfg=scfg, optimizer=optimizer,
                         mesh=mesh, rules=tuple(rules))
  out = None if state_shardings is None else (state_shardings, None)
  return jax.jit(fn, donate_argnums=0, out_shardings=out)


def batch_sharding(mesh, rules) -> Any:
  """NamedSharding of rollout arrays: leading dim over the rules' batch axes."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  target = dict(rules).get("batch")
  axes = (target,) if isinstance(target, str) else tuple(target or ())
  axes = tuple(a for a in axes if mesh.shape[a] > 1)
  spec = PartitionSpec(axes if len(axes) > 1 else (axes[0] if axes else None))
  return NamedSharding(mesh, spec)


def to_device(batch: dict[str, np.ndarray], mesh=None, rules=()) -> dict[str, Array]:
  """Host arrays onto the mesh, rows split over the batch axes. Every process holds the same
  host batch, so each one builds its own shards from it (this also works across processes)."""
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items()}
