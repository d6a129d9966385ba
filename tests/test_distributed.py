"""Multi-process start-up: the environment parsing, and a real 2-process CPU run whose jitted
sum crosses processes (gloo collectives through jax.distributed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from kdknob_jax import distributed
from kdknob_jax.errors import DistributedError, KdknobError

HERE = Path(__file__).parent
# Launcher variables of whatever machine runs the tests (a SLURM CI job) must not leak in.
_LAUNCH_PREFIXES = ("KDKNOB_", "SLURM_", "TPU_", "MEGASCALE_", "CLOUD_TPU_", "JAX_COORDINATOR")

EXPLICIT = {"KDKNOB_COORDINATOR": "10.0.0.1:1234", "KDKNOB_NUM_PROCESSES": "4",
            "KDKNOB_PROCESS_ID": "2"}
SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "16",
         "SLURM_PROCID": "11", "SLURM_LOCALID": "3"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_PREFIXES)}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2", **extra)
  return env


def _launch_env(how: str, i: int, port: int) -> dict[str, str]:
  """Process i of 2, launched with the explicit variables or as an srun step would be."""
  if how == "explicit":
    return _child_env(KDKNOB_COORDINATOR=f"127.0.0.1:{port}", KDKNOB_NUM_PROCESSES="2",
                      KDKNOB_PROCESS_ID=str(i), KDKNOB_INIT_TIMEOUT="30")
  # JAX's own SLURM detection: coordinator = first node of the step, port from the override.
  return _child_env(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                    SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port),
                    KDKNOB_INIT_TIMEOUT="30")


def _run_pair(how: str):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(HERE / "_dist_child.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_launch_env(how, i, port))
           for i in range(2)]
  outs = []
  deadline = time.monotonic() + 240
  try:
    for p in procs:
      outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
  except subprocess.TimeoutExpired:
    pytest.fail("a 2-process collective hung past 240 s")
  finally:
    for p in procs:  # a failed or hung peer must not outlive the test
      if p.poll() is None:
        p.kill()
        p.communicate()
  return procs, outs, port


@pytest.mark.parametrize("how", ["explicit", "slurm"])
def test_two_cpu_processes_sum_across_processes(how):
  procs, outs, port = _run_pair(how)
  if any(p.returncode != 0 for p in procs):
    # The free-port probe and the coordinator's bind are not atomic, so another process can
    # take the port in between (seen once in a full run): one more try on a fresh port, with
    # the first failure shown if the second fails too.
    first = "\n".join(err[-3000:] for _, err in outs)
    procs, outs, port = _run_pair(how)
    outs = [(out, err + "\n--- first attempt ---\n" + first) for out, err in outs]
  results = []
  for p, (out, err) in zip(procs, outs):
    # gloo's C++ logging shares stdout and may split a line around ours ("[Gloo] Rank
    # RESULT {...}"), so the result is found anywhere in a line, not only at its start.
    lines = [l[l.index("RESULT "):] for l in out.splitlines() if "RESULT " in l]
    assert p.returncode == 0 and lines, f"rc={p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    # raw_decode stops at the object's end: gloo may write on after it on the same line.
    results.append(json.JSONDecoder().raw_decode(lines[-1][len("RESULT "):])[0])
  # Rows 0..3 from process 0 and 10..13 from process 1: 6 + 46.
  assert [r["sum"] for r in results] == [52, 52], results
  assert [r["process_index"] for r in results] == [0, 1]
  assert [r["is_main"] for r in results] == [True, False]
  assert [r["local_rows"] for r in results] == [[0, 1, 2, 3], [10, 11, 12, 13]]
  host = "127.0.0.1" if how == "explicit" else "localhost"
  assert {r["coordinator"] for r in results} == {f"{host}:{port}"}


def test_lone_process_fails_after_the_timeout_instead_of_hanging():
  """Process 1 of 2 with no coordinator: JAX aborts the process (DEADLINE_EXCEEDED, not a Python
  exception) once KDKNOB_INIT_TIMEOUT has passed."""
  env = _child_env(KDKNOB_COORDINATOR=f"127.0.0.1:{_free_port()}", KDKNOB_NUM_PROCESSES="2",
                   KDKNOB_PROCESS_ID="1", KDKNOB_INIT_TIMEOUT="2")
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", "from kdknob_jax import distributed\n"
                         "distributed.initialize()\nprint('JOINED')"],
                        capture_output=True, text=True, env=env, timeout=60, check=False)
  assert proc.returncode != 0 and "JOINED" not in proc.stdout, proc.stdout
  assert "DEADLINE_EXCEEDED" in proc.stderr, proc.stderr[-3000:]
  assert time.monotonic() - start < 30


def test_nothing_set_is_one_process():
  assert distributed.detect({}) == distributed.Plan("single")
  assert not distributed.detect({"PATH": "/bin"}).multi_process


def test_explicit_variables():
  plan = distributed.detect({**EXPLICIT, "KDKNOB_LOCAL_DEVICE_IDS": "0,1",
                             "KDKNOB_INIT_TIMEOUT": "20", **SLURM})  # explicit beats SLURM
  assert plan.source == "explicit"
  assert dict(plan.kwargs) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                               "process_id": 2, "local_device_ids": (0, 1),
                               "initialization_timeout": 20}
  one = {"KDKNOB_COORDINATOR": "h:1", "KDKNOB_NUM_PROCESSES": "1", "KDKNOB_PROCESS_ID": "0"}
  assert distributed.detect(one).source == "single"


@pytest.mark.parametrize("missing", sorted(EXPLICIT))
def test_partial_explicit_variables_name_the_missing_one(missing):
  env = {k: v for k, v in EXPLICIT.items() if k != missing}
  with pytest.raises(DistributedError, match=f"{missing} missing"):
    distributed.detect(env)
  assert issubclass(DistributedError, KdknobError)


@pytest.mark.parametrize("name,value,match", [
    ("KDKNOB_COORDINATOR", "10.0.0.1", "not host:port"),
    ("KDKNOB_COORDINATOR", "host:http", "not host:port"),
    ("KDKNOB_NUM_PROCESSES", "two", "KDKNOB_NUM_PROCESSES='two' is not an integer"),
    ("KDKNOB_PROCESS_ID", "-1", "KDKNOB_PROCESS_ID='-1' is not an integer >= 0"),
    ("KDKNOB_PROCESS_ID", "4", "not below KDKNOB_NUM_PROCESSES=4"),
    ("KDKNOB_LOCAL_DEVICE_IDS", "0;1", "comma-separated"),
    ("KDKNOB_INIT_TIMEOUT", "0", "KDKNOB_INIT_TIMEOUT='0'"),
    ("KDKNOB_DISTRIBUTED", "yes", "'auto', 'off'"),
])
def test_malformed_variables(name, value, match):
  with pytest.raises(DistributedError, match=match):
    distributed.detect({**EXPLICIT, name: value})


def test_slurm():
  assert distributed.detect(SLURM) == distributed.Plan("slurm")  # JAX's detection does the rest
  assert distributed.detect({**SLURM, "SLURM_NTASKS": "1"}).source == "single"
  # An salloc shell or batch script without srun: no step variables, one process.
  assert distributed.detect({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "16"}).source == "single"
  assert distributed.detect({**SLURM, "KDKNOB_DISTRIBUTED": "off"}).source == "single"


def test_slurm_gpus_per_task_drive_the_gpus_the_task_sees():
  bound = {**SLURM, "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "3"}
  assert distributed.detect(bound).kwargs["local_device_ids"] == (0,)
  per_node = {**SLURM, "SLURM_LOCALID": "0", "SLURM_GPUS_PER_TASK": "h100:8",
              "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert distributed.detect(per_node).kwargs["local_device_ids"] == tuple(range(8))
  unbound = {**SLURM, "SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert distributed.detect(unbound).kwargs["local_device_ids"] == (6, 7)
  with pytest.raises(DistributedError, match="KDKNOB_LOCAL_DEVICE_IDS"):
    distributed.detect({**unbound, "CUDA_VISIBLE_DEVICES": "0,1,2"})
  override = {**bound, "KDKNOB_LOCAL_DEVICE_IDS": "5"}
  assert distributed.detect(override).kwargs["local_device_ids"] == (5,)


@pytest.mark.parametrize("env,source", [
    ({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "w-0"}, "single"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, "tpu"),
    ({"MEGASCALE_NUM_SLICES": "2"}, "tpu"),
    ({"CLOUD_TPU_TASK_ID": "0"}, "tpu"),
    ({"KDKNOB_DISTRIBUTED": "auto"}, "auto"),
    ({"KDKNOB_DISTRIBUTED": "AUTO", "TPU_WORKER_HOSTNAMES": "w-0,w-1"}, "tpu"),
])
def test_tpu_and_auto(env, source):
  plan = distributed.detect(env)
  assert plan.source == source and (source == "single" or dict(plan.kwargs) == {})


def test_initialize_on_one_process_never_calls_jax_distributed(monkeypatch):
  monkeypatch.setattr(distributed, "_info", None)
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **_: pytest.fail("jax.distributed.initialize was called"))
  info = distributed.initialize({})
  assert (info.process_count, info.process_index, info.coordinator) == (1, 0, None)
  assert info.device_count == jax.device_count()
  assert distributed.initialize({**EXPLICIT, "KDKNOB_PROCESS_ID": "bad"}) is info  # cached
  assert distributed.is_main()
  distributed.sync("one process: no-op")


def test_initialize_wraps_jax_failures(monkeypatch):
  def fail(**_):
    raise RuntimeError("jax.distributed.initialize() must be called before any JAX calls")
  monkeypatch.setattr(distributed, "_info", None)
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  with pytest.raises(DistributedError, match="explicit multi-process run failed.*before any"):
    distributed.initialize(EXPLICIT)
