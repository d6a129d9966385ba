"""Whether a planned run fits an accelerator, and the largest rollout batch that does.

Each program's peak is measured by compiling it (`kdknob_jax.planning.programs`). The batch
search compiles the batch-dependent programs at two batch sizes, fits peak = a + b·P per
program (P prompts per step, G rollouts each), takes the largest P under every program's
budget, and compiles there again to confirm (stepping down while it does not fit).
"""

from __future__ import annotations

import dataclasses

from kdknob_jax.planning.programs import GIB, PROGRAMS, Plan, ProgramMemory


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A device's memory as sold, and the budget a run may plan to use of it.

  Attributes:
    name: the key `--accelerator` takes.
    label: the product.
    memory_gb: its memory in 10^9 bytes, as sold.
    budget_gib: what a run's programs may peak at: the rest is the runtime's (CUDA context,
      cuDNN/cuBLAS workspaces, XLA's allocator slack) and fragmentation.
  """
  name: str
  label: str
  memory_gb: float
  budget_gib: float


ACCELERATORS = (
    Accelerator("h100", "NVIDIA H100 80GB", 80, 64),
    Accelerator("h200", "NVIDIA H200", 141, 128),
    Accelerator("v5p", "TPU v5p", 95, 80),
    Accelerator("v5e", "TPU v5e", 16, 13),
)
BY_NAME = {a.name: a for a in ACCELERATORS}
# Programs whose memory grows with the rollout batch (target scoring: at most `rows_per_call` rows).
BATCHED = ("sampling", "rollout_scoring", "train_step")
# The search looks no further than this many times the config's prompts per step.
MAX_GROWTH = 8


def measure(plan: Plan, prompts_per_step: int | None = None,
            progress=None) -> dict[str, ProgramMemory]:
  """Every program's memory at a batch of `prompts_per_step` (default: the config's)."""
  out = {}
  for name in PROGRAMS:
    if progress:
      progress(f"compiling {name} at {prompts_per_step or plan.config.prompts_per_step} "
               "prompts per step")
    out[name] = plan.memory(name, prompts_per_step)
  return out


def fits(memory: dict[str, ProgramMemory], acc: Accelerator) -> bool:
  """Every program's peak within the accelerator's budget."""
  return all(m.peak <= acc.budget_gib * GIB for m in memory.values())


@dataclasses.dataclass(frozen=True)
class BatchFit:
  """The largest rollout batch of one accelerator.

  Attributes:
    prompts_per_step: the largest P that fits (0: not even one step's minimum).
    rows: P · G rollouts.
    peak_gib: the largest program's peak at P, compiled (None when only estimated).
    lines: per batch-dependent program, (bytes at P = 0, bytes per prompt).
    capped: the budget allows more than `MAX_GROWTH` times the config's batch; the search
      stopped there.
  """
  prompts_per_step: int
  rows: int
  peak_gib: float | None
  lines: dict[str, tuple[float, float]]
  capped: bool = False


def largest_batch(plan: Plan, base: dict[str, ProgramMemory], acc: Accelerator,
                  confirm: bool = True, progress=None) -> BatchFit:
  """The largest prompts per step (a multiple of the mesh's batch split) whose programs fit
  `acc`, from a linear fit through the config's batch and twice it; confirmed by compiling
  there when `confirm`."""
  p1 = plan.config.prompts_per_step
  step = plan.rows(1)[0]  # prompts are padded to a multiple of the batch split
  p2 = max(2 * p1, p1 + step)
  second = {name: plan.memory(name, p2) for name in BATCHED}
  lines = {}
  best = None
  for name in BATCHED:
    slope = max((second[name].peak - base[name].peak) / (p2 - p1), 1.0)
    intercept = base[name].peak - slope * p1
    lines[name] = (intercept, slope)
    cap = int((acc.budget_gib * GIB - intercept) // slope)
    best = cap if best is None else min(best, cap)
  fixed_ok = all(base[n].peak <= acc.budget_gib * GIB for n in PROGRAMS if n not in BATCHED)
  capped = best > MAX_GROWTH * p1
  best = min(best, MAX_GROWTH * p1)
  p = max(0, (best // step) * step) if fixed_ok else 0
  peak = None
  while confirm and p > 0:
    if progress:
      progress(f"confirming {p} prompts per step on {acc.label}")
    at_p = measure(plan, p)
    if fits(at_p, acc):
      peak = max(m.peak for m in at_p.values()) / GIB
      break
    p = ((p * 9 // 10) // step) * step  # the line was optimistic: 10% less, and again
  return BatchFit(p, p * plan.config.group_size, peak, lines, capped)
