"""The distillation step: one jitted update of the student on a batch of completions.

A batch has the rollout layout of `kdknob_jax.train.batch` (prompts [P, S] run once, rows
[N, T] continue them; padding has position −1 and mask 0), so only completion tokens are ever
scored: prompt tokens and padding carry no loss. The first completion token is predicted by the
prompt's last hidden state (`predictor_hidden`).

Losses:
  "ce"   −mean over completion tokens of log π_student(token)   (SFT)
  "jsd"  mean over completion tokens of the generalized JSD_β(teacher, student) of the full
         next-token distributions (β = 0: KL(teacher‖student), β = 1: KL(student‖teacher)),
         computed by the fused chunked kernel so no [N·T, V] logits are ever held.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from kdknob_jax.models import ExecConfig, ModelConfig, head_of
from kdknob_jax.models.lora import LoraConfig, adapted
from kdknob_jax.models.scoring import completion_logp, predictor_hidden
from kdknob_jax.ops.fused_kl import fused_divergence
from kdknob_jax.sharding import mesh_context
from kdknob_jax.train.state import keep_if_finite

Array = jax.Array

LOSSES = ("ce", "jsd")


@flax.struct.dataclass
class DistillState:
  """Training state. `params` is what trains (the student, or its adapters when `base` holds
  the frozen student); `teacher` is frozen. Only step, params and opt_state are checkpointed."""
  step: Array
  params: dict
  opt_state: Any
  base: dict
  teacher: dict


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static settings of the loss.

  Attributes:
    loss: "ce" or "jsd".
    beta: the JSD mixture weight (0 forward KL, 1 reverse KL).
    temperature: divides both models' logits in the JSD.
    chunk: tokens per chunk of the fused kernel / head rows per chunk of the CE (0: automatic).
    execution: the student's rematerialization and attention form (the teacher, under no
      gradient, runs without rematerialization).
  """
  loss: str = "jsd"
  beta: float = 0.0
  temperature: float = 1.0
  chunk: int = 0
  execution: ExecConfig = ExecConfig()


def student_params(state: DistillState, lcfg: LoraConfig | None) -> dict:
  """The student's weights: its params, or the frozen base with the adapters applied."""
  return state.params if lcfg is None else adapted(state.base, state.params, lcfg)


def distill_loss(student: dict, teacher: dict, batch: dict[str, Array], *, s_cfg: ModelConfig,
                 t_cfg: ModelConfig | None, lossc: LossConfig) -> Array:
  """The loss of one batch (a float32 scalar, a mean over its completion tokens)."""
  mask = batch["mask"].astype(jnp.float32)
  tokens = jnp.maximum(jnp.sum(mask), 1.0)
  if lossc.loss == "ce":
    lp = completion_logp(student, s_cfg, batch, lossc.chunk, lossc.execution)
    return -jnp.sum(lp * mask) / tokens
  args = (batch["prompts"], batch["prompt_pos"], batch["owner"], batch["completions"],
          batch["completion_pos"])
  hs = predictor_hidden(student, s_cfg, *args, lossc.execution)
  ht = jax.lax.stop_gradient(predictor_hidden(teacher, t_cfg, *args,
                                              lossc.execution.forward_only()))
  ws, s_spec = head_of(student, s_cfg)
  wt, t_spec = head_of(teacher, t_cfg)
  return fused_divergence(hs, ws, ht, wt, mask / tokens, kind="jsd", coef=lossc.beta,
                          temperature=lossc.temperature, student_spec=s_spec,
                          teacher_spec=t_spec, chunk_size=lossc.chunk or None)


def _train_step(state: DistillState, batch: dict[str, Array], *, s_cfg: ModelConfig,
                t_cfg: ModelConfig | None, lcfg: LoraConfig | None, lossc: LossConfig,
                optimizer: optax.GradientTransformation, mesh=None, rules=()
                ) -> tuple[DistillState, dict[str, Array]]:
  with mesh_context(mesh, rules):
    def loss_fn(trainable):
      student = trainable if lcfg is None else adapted(state.base, trainable, lcfg)
      return distill_loss(student, state.teacher, batch, s_cfg=s_cfg, t_cfg=t_cfg, lossc=lossc)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    params, opt_state = keep_if_finite((params, opt_state), (state.params, state.opt_state),
                                       loss, grad_norm)
  metrics = {"loss": loss, "grad_norm": grad_norm, "tokens": jnp.sum(batch["mask"])}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(s_cfg: ModelConfig, t_cfg: ModelConfig | None, lcfg: LoraConfig | None,
                    lossc: LossConfig, optimizer: optax.GradientTransformation, mesh=None,
                    rules=(), state_shardings=None):
  """The jitted `(state, batch) → (state, metrics)` with the state donated.

  Args:
    s_cfg, t_cfg: the student's and the teacher's configs (t_cfg None for "ce").
    lcfg: the student's adapters, or None for full fine-tuning.
    lossc: the loss settings.
    optimizer: updates `state.params`.
    mesh, rules: run under this mesh with these logical-axis rules.
    state_shardings: pin the new state to these, so every call reuses one program.
  """
  if lossc.loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {lossc.loss!r}.")
  fn = functools.partial(_train_step, s_cfg=s_cfg, t_cfg=t_cfg, lcfg=lcfg, lossc=lossc,
                         optimizer=optimizer, mesh=mesh, rules=tuple(rules))
  out = None if state_shardings is None else (state_shardings, None)
  return jax.jit(fn, donate_argnums=0, out_shardings=out)
