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

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from kdknob_jax.calibration.objective import policy_loss
from kdknob_jax.models import ExecConfig, ModelConfig
from kdknob_jax.models.lora import LoraConfig, adapted
from kdknob_jax.models.scoring import completion_logp
from kdknob_jax.sharding import mesh_context
from kdknob_jax.train.state import keep_if_finite

Array = jax.Array


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
    execution: the decoder's rematerialization and attention form in the train step (the
      scoring programs take no gradient and ignore `remat`).
    logp_temperature: the policy's, old and reference log-probs of the loss are those of
      logits / this; 1 scores the model itself, the sampling temperature is TRL's convention
      (`CalibConfig.loss_temperature`).
  """
  beta: float = 0.04
  epsilon: float = 0.2
  epsilon_high: float = 0.2
  aggregation: str = "sequence_mean"
  chunk: int = 0
  on_policy: bool = False
  execution: ExecConfig = ExecConfig()
  logp_temperature: float = 1.0

  @classmethod
  def of(cls, c) -> "StepConfig":
    """The step settings of a `CalibConfig` (the trainer's and the planner's)."""
    return cls(float(c.beta), float(c.epsilon), float(c.epsilon_high), c.aggregation,
               int(c.chunk), on_policy=c.on_policy, execution=c.execution(),
               logp_temperature=(float(c.temperature) if c.loss_temperature == "sampling"
                                 else 1.0))


@functools.partial(jax.jit, static_argnames=("cfg", "lcfg", "scfg", "mesh", "rules"))
def score_rollouts(state: CalibState, batch: dict[str, Array], *, cfg: ModelConfig,
                   lcfg: LoraConfig, scfg: StepConfig, mesh=None, rules=()
                   ) -> tuple[Array, Array]:
  """(old_logp, ref_logp) [N, T]: the sampling policy's and the base model's log-probs of
  the completion tokens. Each is zeros when it is not needed: old_logp on policy (see
  `StepConfig.on_policy`), ref_logp without a KL anchor."""
  with mesh_context(mesh, rules):
    zeros = jnp.zeros(batch["completions"].shape, jnp.float32)
    old = (zeros if scfg.on_policy else
           completion_logp(adapted(state.base, state.lora, lcfg), cfg, batch, scfg.chunk,
                           scfg.execution.forward_only(), scfg.logp_temperature))
    ref = (completion_logp(state.base, cfg, batch, scfg.chunk, scfg.execution.forward_only(),
                           scfg.logp_temperature) if scfg.beta else zeros)
  return old, ref


def _train_step(state: CalibState, batch: dict[str, Array], rng: Array, *, cfg: ModelConfig,
                lcfg: LoraConfig, scfg: StepConfig, optimizer: optax.GradientTransformation,
                mesh=None, rules=()) -> tuple[CalibState, dict[str, Array]]:
  del rng  # the clipped surrogate is deterministic given the batch
  with mesh_context(mesh, rules):
    def loss_fn(lora):
      logp = completion_logp(adapted(state.base, lora, lcfg), cfg, batch, scfg.chunk,
                             scfg.execution, scfg.logp_temperature)
      old = jax.lax.stop_gradient(logp) if scfg.on_policy else batch["old_logp"]
      return policy_loss(logp, old, batch["advantages"], batch["mask"],
                         ref_logp=batch["ref_logp"], beta=scfg.beta, epsilon=scfg.epsilon,
                         epsilon_high=scfg.epsilon_high, aggregation=scfg.aggregation)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lora)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.lora)
    lora = optax.apply_updates(state.lora, updates)
    grad_norm = optax.tree.norm(grads)
    lora, opt_state = keep_if_finite((lora, opt_state), (state.lora, state.opt_state),
                                     loss, grad_norm)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
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
