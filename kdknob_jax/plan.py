"""Plan a calibration run before renting its machines: compile each of its programs ahead of
time against abstract shapes (no weights are read) on a simulated CPU mesh of the run's device
count, and print per device what each program holds, whether the run fits a named accelerator,
and the largest rollout batch that fits.

  python -m kdknob_jax.plan --config configs/qwen8b_undistill.py
  python -m kdknob_jax.plan --config configs/qwen8b_undistill.py:v5p --accelerator v5p
  python -m kdknob_jax.plan --config configs/qwen8b_undistill.py:1gpu --devices 1 \
      --accelerator h200 --json out/plan_qwen8b_1gpu.json

Figures are XLA:CPU's buffer assignment of the same sharded programs. XLA:CPU computes
bfloat16 matmuls through float32 copies of their operands, so its temporaries are an upper
bound of what a GPU or TPU compile of the same program holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kdknob_jax.errors import KdknobError

_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _simulate(devices: int) -> None:
  """Asks XLA:CPU for `devices` host devices; must run before JAX starts its backend."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT_FLAG)]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"{_COUNT_FLAG}={devices}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _devices_of(mesh: dict) -> int:
  n = 1
  for size in mesh.values():
    n *= max(int(size), 1)
  return n


def _table(memory, plan) -> str:
  c = plan.config
  p, n = plan.rows()
  lines = [
      f"teacher {c.teacher}  target {c.target}  {c.dtype}  mesh {dict(plan.mesh.shape)}",
      f"batch: {c.prompts_per_step} prompts x {c.group_size} rollouts (padded to {p} x {n} "
      f"rows), prompts <= {plan.prompt_slots} tokens, {c.max_new_tokens} new tokens; "
      f"remat {c.remat!r}, attention {c.attention!r}",
      "",
      "| program | arguments GiB | temporaries GiB | new outputs GiB | rest of the run GiB | "
      "peak GiB |",
      "| --- | --- | --- | --- | --- | --- |"]
  for name, m in memory.items():
    d = m.as_dict()
    lines.append(f"| {name} | {d['argument_gib']:.2f} | {d['temp_gib']:.2f} | "
                 f"{(m.output - m.alias) / 2**30:.2f} | {d['resident_other_gib']:.2f} | "
                 f"{d['peak_gib']:.2f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "A calibration config (configs/*distill.py).",
                                  lock_config=True)
  flags.DEFINE_integer("devices", 0, "Simulated devices (default: the config's mesh).")
  flags.DEFINE_string("accelerator", "h100", "Search the largest batch for: h100, h200, v5p, "
                      "v5e.")
  flags.DEFINE_integer("prompt_tokens", 0, "Prompt slots planned for (default: the config's "
                       "prompt_slots, else 256).")
  flags.DEFINE_bool("search", True, "Search the largest rollout batch (more compiles).")
  flags.DEFINE_string("json", None, "Write the plan as JSON here.")
  flags.mark_flags_as_required(["config"])
  f = flags.FLAGS

  def run(argv_) -> int:
    del argv_
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is noise here
    try:
      return _plan(f)
    except KdknobError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2

  app.run(lambda a: sys.exit(run(a)), argv=argv)
  return 0


def _plan(f) -> int:
  from kdknob_jax.calibration import config as config_lib  # pylint: disable=g-import-not-at-top
  from kdknob_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = config_lib.build(f.config)
  if f.accelerator not in ("h100", "h200", "v5p", "v5e"):
    raise ConfigError(f"--accelerator {f.accelerator!r} is not one of h100, h200, v5p, v5e.")
  devices = f.devices or _devices_of(dict(config.mesh))
  _simulate(devices)
  import jax  # pylint: disable=g-import-not-at-top
  from kdknob_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from kdknob_jax.planning import fit  # pylint: disable=g-import-not-at-top
  from kdknob_jax.planning.programs import Plan  # pylint: disable=g-import-not-at-top
  if len(jax.devices()) != devices:
    raise ConfigError(f"JAX already runs on {len(jax.devices())} devices; plan {devices} in a "
                      "fresh process (python -m kdknob_jax.plan ...).")
  sizes = dict(config.mesh)
  try:
    mesh = sharding_lib.make_mesh(sizes)
  except ConfigError:
    sizes = dict(data=1, fsdp=-1, tensor=1)  # --devices asked for another count: all FSDP
    print(f"config.mesh {dict(config.mesh)} does not fit {devices} devices; planning "
          f"{sizes} instead")
    mesh = sharding_lib.make_mesh(sizes)
  say = lambda msg: print(f"  {msg} ...", flush=True)  # pylint: disable=unnecessary-lambda-assignment
  t0 = time.perf_counter()
  prompt_tokens = f.prompt_tokens or config.prompt_slots or 256
  plan = Plan.build(config, mesh, prompt_slots=prompt_tokens)
  memory = fit.measure(plan, progress=say)
  print(_table(memory, plan))
  peak = max(m.peak for m in memory.values()) / 2**30
  result = {"config": f["config"].config_filename, "devices": devices, "mesh": dict(mesh.shape),
            "teacher": config.teacher, "target": config.target, "dtype": config.dtype,
            "prompts_per_step": config.prompts_per_step, "group_size": config.group_size,
            "max_new_tokens": config.max_new_tokens, "prompt_tokens": prompt_tokens,
            "remat": config.remat, "attention": config.attention,
            "programs": {k: m.as_dict() for k, m in memory.items()},
            "peak_gib": round(peak, 3), "backend": "XLA:CPU (simulated devices)",
            "accelerators": {}}
  print("\n| accelerator | budget GiB | run's peak GiB | fits |\n| --- | --- | --- | --- |")
  for acc in fit.ACCELERATORS:
    ok = fit.fits(memory, acc)
    result["accelerators"][acc.name] = {"label": acc.label, "budget_gib": acc.budget_gib,
                                        "fits": ok}
    print(f"| {acc.label} ({acc.memory_gb:g} GB) | {acc.budget_gib:g} | {peak:.2f} | "
          f"{'yes' if ok else 'no'} |")
  if f.search:
    acc = fit.BY_NAME[f.accelerator]
    best = fit.largest_batch(plan, memory, acc, progress=say)
    result["largest_batch"] = {"accelerator": acc.name, "prompts_per_step": best.prompts_per_step,
                               "rows": best.rows, "peak_gib": best.peak_gib,
                               "capped": best.capped}
    where = f"{acc.label} ({acc.budget_gib:g} GiB budget)"
    if best.prompts_per_step:
      print(f"\nlargest rollout batch on {where}: {best.prompts_per_step} prompts x "
            f"{config.group_size} rollouts = {best.rows} rows a step (compiled there: peak "
            f"{best.peak_gib:.2f} GiB)"
            + (f"; the search stops at {fit.MAX_GROWTH}x the config's batch" if best.capped
               else ""))
    else:
      print(f"\nno rollout batch fits {where}: the weights and the fixed programs alone "
            "exceed it; use more devices (config.mesh) or a larger accelerator")
  print(f"\nplanned in {time.perf_counter() - t0:.0f} s on {devices} simulated devices")
  if f.json:
    Path(f.json).parent.mkdir(parents=True, exist_ok=True)
    Path(f.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"wrote {f.json}")
  return 0


if __name__ == "__main__":
  main()
