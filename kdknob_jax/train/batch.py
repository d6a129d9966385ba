"""The batch layout every trainer feeds its jitted step: which train rows a step reads, the
rollout arrays (prompts run once, completion rows continue them), and their placement on the
mesh.

Shapes: P prompts, S prompt slots, N completion rows, T completion slots. Padding has position
−1 and mask 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdknob_jax.decode.engine import Generation
from kdknob_jax.hf.tokenizer import Tokenizer
from kdknob_jax.models.scoring import prompt_slot_count, round_up

Array = jax.Array

def data_indices(step: int, per_step: int, n_records: int, seed: int) -> np.ndarray:
  """The train rows of a step: positions step·P .. step·P + P − 1 of an endless stream that
  visits every row once per epoch in a seeded order, so a resumed run sees the same rows."""
  pos = np.arange(step * per_step, (step + 1) * per_step)
  epochs, offsets = pos // n_records, pos % n_records
  out = np.empty_like(pos)
  for e in np.unique(epochs):
    order = np.random.default_rng([seed, int(e)]).permutation(n_records)
    out[epochs == e] = order[offsets[epochs == e]]
  return out


@dataclasses.dataclass
class Rollouts:
  """One step's samples as host arrays (rows prompt-major, N = P·G real rows first).

  Attributes:
    arrays: the step's input arrays except log-probs and advantages .
    texts: [N] decoded completions.
    stopped: [N] ended on a stop token.
    lengths: [N] completion tokens.
    prompt_of: [N] index into the step's prompts.
  """
  arrays: dict[str, np.ndarray]
  texts: list[str]
  stopped: np.ndarray
  lengths: np.ndarray
  prompt_of: np.ndarray


def layout(prompt_ids: Sequence[Sequence[int]], gen: Generation, tokenizer: Tokenizer,
           row_multiple: int = 1, prompt_slots: int = 0, completion_slots: int = 0
           ) -> Rollouts:
  """Arrays for `predictor_hidden`-style scoring: prompts [P', S] run once, rows [N', T].

  P' and N' are padded to multiples of `row_multiple` (the data-parallel degree); S and T are
  at least `prompt_slots` and `completion_slots` (a run passes its largest, so that every step
  has one shape and compiles once) and bucketed; padding has position −1 and mask 0.
  """
  n_rows = gen.tokens.shape[0]
  p_pad = round_up(len(prompt_ids), row_multiple)
  r_pad = round_up(n_rows, row_multiple)
  s = prompt_slot_count(max(len(p) for p in prompt_ids), prompt_slots)
  t = round_up(max(int(gen.lengths.max()), completion_slots, 1), 16)
  prompts = np.zeros((p_pad, s), np.int32)
  prompt_pos = np.full((p_pad, s), -1, np.int32)
  for i, p in enumerate(prompt_ids):
    prompts[i, :len(p)] = p
    prompt_pos[i, :len(p)] = np.arange(len(p))
  owner = np.zeros(r_pad, np.int32)
  comps = np.zeros((r_pad, t), np.int32)
  comp_pos = np.full((r_pad, t), -1, np.int32)
  for r in range(n_rows):
    ln, p = int(gen.lengths[r]), int(gen.prompt_index[r])
    owner[r] = p
    comps[r, :ln] = gen.tokens[r, :ln]
    comp_pos[r, :ln] = len(prompt_ids[p]) + np.arange(ln)
  arrays = {"prompts": prompts, "prompt_pos": prompt_pos, "owner": owner,
            "completions": comps, "completion_pos": comp_pos,
            "mask": (comp_pos >= 0).astype(np.float32)}
  texts = [tokenizer.decode(gen.row_tokens(r)) for r in range(n_rows)]
  return Rollouts(arrays, texts, np.asarray(gen.stopped, bool), np.asarray(gen.lengths),
                  np.asarray(gen.prompt_index))


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
