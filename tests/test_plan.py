"""`python -m kdknob_jax.plan`: the programs of a run compiled ahead of time on a simulated mesh,
their per-device memory, the fit table and the largest batch; the paper's Qwen3-8B recipe
stays within an H100's budget on 8 devices (a memory regression fails here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from kdknob_jax.planning.fit import ACCELERATORS, fits
from kdknob_jax.planning.programs import GIB, PROGRAMS, ProgramMemory, device_bytes

ROOT = Path(__file__).resolve().parents[1]


def _plan(tmp_path: Path, *args: str) -> tuple[dict, str]:
  out = tmp_path / "plan.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-m", "kdknob_jax.plan", *args, "--json", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_the_embedded_run_is_planned_on_two_devices_with_its_largest_batch(tmp_path):
  plan, text = _plan(tmp_path, "--config", "configs/tiny_undistill.py:smoke", "--devices", "2",
                     "--accelerator", "v5e")
  assert plan["devices"] == 2 and set(plan["programs"]) == set(PROGRAMS)
  for name, m in plan["programs"].items():
    assert m["peak_gib"] > 0 and m["argument_gib"] > 0, name
    assert m["peak_gib"] >= m["argument_gib"] + m["temp_gib"] - m["alias_gib"] - 1e-3
  assert all(a["fits"] for a in plan["accelerators"].values())  # 135M + 270M params
  best = plan["largest_batch"]
  assert best["prompts_per_step"] > plan["prompts_per_step"] and best["peak_gib"] <= 13
  assert best["capped"]  # 135M + 270M parameters: far more than 8x the batch fits
  assert "| train_step |" in text and "largest rollout batch" in text


def test_qwen3_8b_recipe_fits_an_h100_budget_on_8_devices(tmp_path):
  """The paper's batch (16 prompts x 4 rollouts x 512 new tokens, prompts <= 256) with FSDP
  over 8 devices: every program's per-device peak within 64 GiB."""
  plan, _ = _plan(tmp_path, "--config", "configs/qwen8b_undistill.py", "--nosearch")
  assert plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  peaks = {k: m["peak_gib"] for k, m in plan["programs"].items()}
  assert max(peaks.values()) <= 64, peaks
  assert plan["accelerators"]["h100"]["fits"]


def test_peak_counts_inputs_temporaries_new_outputs_and_the_rest_of_the_run():
  m = ProgramMemory("train_step", argument=10, output=6, alias=4, temp=3, resident_other=5)
  assert m.peak == 10 + 3 + (6 - 4) + 5
  big = {"a": ProgramMemory("a", int(70 * GIB), 0, 0, 0, 0)}
  assert [fits(big, a) for a in ACCELERATORS] == [False, True, True, False]  # 64/128/80/13


def test_device_bytes_counts_one_shard():
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1), ("fsdp",))
  x = jax.ShapeDtypeStruct((8, 4), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec()))
  assert device_bytes({"x": x, "y": jax.ShapeDtypeStruct((3,), jnp.float32)}) == 8 * 4 * 2 + 12
