"""Multi-process start-up: the same command on one CPU, a SLURM GPU cluster or a TPU pod slice.

Entry points call `initialize()` before anything else touches JAX. It reads the environment and,
when more than one process takes part, calls `jax.distributed.initialize` once. The first source
that applies wins:

  KDKNOB_DISTRIBUTED=off      one process, whatever else is set.
  KDKNOB_COORDINATOR, KDKNOB_NUM_PROCESSES, KDKNOB_PROCESS_ID (+ KDKNOB_LOCAL_DEVICE_IDS)
                              explicit: host:port of process 0, the process count, this process.
  SLURM_NTASKS > 1 in an srun step
                              JAX's SLURM detection (coordinator, count and id from SLURM_*).
  TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES naming several hosts,
  MEGASCALE_COORDINATOR_ADDRESS, MEGASCALE_NUM_SLICES > 1, CLOUD_TPU_TASK_ID
                              JAX's Cloud TPU detection.
  KDKNOB_DISTRIBUTED=auto     JAX's detection even without the variables above (a GCE TPU VM
                              slice lists its workers in metadata only; launch/tpu_pod.sh sets it).
  otherwise                   one process; `jax.distributed` is not touched.

KDKNOB_INIT_TIMEOUT (seconds, default 300) bounds the wait for every process to connect: a
missing peer then ends the process (JAX aborts it with DEADLINE_EXCEEDED) instead of hanging it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax

from kdknob_jax.errors import DistributedError

log = logging.getLogger(__name__)

_MODE = "KDKNOB_DISTRIBUTED"
_COORDINATOR = "KDKNOB_COORDINATOR"
_NUM_PROCESSES = "KDKNOB_NUM_PROCESSES"
_PROCESS_ID = "KDKNOB_PROCESS_ID"
_LOCAL_DEVICE_IDS = "KDKNOB_LOCAL_DEVICE_IDS"
_INIT_TIMEOUT = "KDKNOB_INIT_TIMEOUT"
# What JAX's SlurmCluster needs besides SLURM_NTASKS; all are set inside an srun step only.
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """Where this process stands after `initialize()`."""
  process_index: int
  process_count: int
  local_device_count: int
  device_count: int
  coordinator: str | None  # host:port of process 0; None on a single process


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize()` will do: `source` is "single", "explicit", "slurm", "tpu" or "auto";
  `kwargs` go to `jax.distributed.initialize` (empty ones leave the rest to JAX's detection)."""
  source: str
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def multi_process(self) -> bool:
    return self.source != "single"


_info: DistributedInfo | None = None


def detect(environ: Mapping[str, str] | None = None) -> Plan:
  """The launch plan the environment describes; reads nothing but `environ` (default os.environ).

  Raises:
    DistributedError: a KDKNOB_* variable that is malformed, or only part of the explicit set.
  """
  env = os.environ if environ is None else environ
  mode = _get(env, _MODE).lower()
  if mode not in ("", "auto", "off"):
    raise DistributedError(f"{_MODE}={env[_MODE]!r} is not one of 'auto', 'off' (or unset).")
  if mode == "off":
    return Plan("single")
  common: dict[str, Any] = {}
  if _get(env, _INIT_TIMEOUT):
    common["initialization_timeout"] = _int(env, _INIT_TIMEOUT, minimum=1)
  if _get(env, _LOCAL_DEVICE_IDS):
    common["local_device_ids"] = _device_ids(env, _LOCAL_DEVICE_IDS)

  explicit = _explicit(env)
  if explicit is not None:
    if not explicit.multi_process:
      return explicit
    return Plan("explicit", {**common, **explicit.kwargs})
  if _slurm_tasks(env) > 1 and all(_get(env, v) for v in _SLURM_STEP_VARS):
    if "local_device_ids" not in common and (ids := _slurm_local_devices(env)) is not None:
      common["local_device_ids"] = ids
    return Plan("slurm", common)
  if _tpu_pod(env):
    return Plan("tpu", common)
  if mode == "auto":
    return Plan("auto", common)
  if _slurm_tasks(env) > 1:
    # salloc shells and batch scripts carry SLURM_NTASKS without the step variables: running
    # python there directly is one process, not one of SLURM_NTASKS.
    log.info("SLURM_NTASKS>1 outside an srun step: running as one process.")
  if "local_device_ids" in common:
    log.warning("%s is ignored: no multi-process run was detected.", _LOCAL_DEVICE_IDS)
  return Plan("single")


def initialize(environ: Mapping[str, str] | None = None) -> DistributedInfo:
  """Joins the multi-process run the environment describes (see the module docstring); a no-op
  on one process. Call it before any other JAX call; calling it again returns the same info.

  Raises:
    DistributedError: a malformed environment, or a JAX refusal (e.g. a backend already started).
      Processes that do not all connect within KDKNOB_INIT_TIMEOUT abort inside JAX instead.
  """
  global _info
  if _info is not None:
    return _info
  plan = detect(environ)
  if plan.multi_process and not jax.distributed.is_initialized():
    _enable_cpu_collectives()
    log.info("jax.distributed.initialize(%s) from %s", dict(plan.kwargs), plan.source)
    try:
      jax.distributed.initialize(**plan.kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
      timeout = plan.kwargs.get("initialization_timeout", 300)
      raise DistributedError(
          f"Joining the {plan.source} multi-process run failed: {e}. Every process must start "
          f"the same command within {_INIT_TIMEOUT}={timeout}s and reach the coordinator, and "
          "initialize() must run before any other JAX call.") from e
  _info = DistributedInfo(process_index=jax.process_index(), process_count=jax.process_count(),
                          local_device_count=jax.local_device_count(),
                          device_count=jax.device_count(), coordinator=_coordinator())
  return _info


def is_main() -> bool:
  """Whether this is process 0, the one that logs and writes shared files. Call it after
  `initialize()`: it starts the JAX backend."""
  return (_info.process_index if _info is not None else jax.process_index()) == 0


def sync(name: str) -> None:
  """Blocks until every process reaches `sync(name)` with the same name; no-op on one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _explicit(env: Mapping[str, str]) -> Plan | None:
  """The plan of the KDKNOB_COORDINATOR/NUM_PROCESSES/PROCESS_ID trio; None when none is set."""
  names = (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)
  given = [n for n in names if _get(env, n)]
  if not given:
    return None
  missing = [n for n in names if n not in given]
  if missing:
    raise DistributedError(
        f"{', '.join(given)} set but {', '.join(missing)} missing: an explicit multi-process run "
        f"needs {_COORDINATOR} (host:port of process 0), {_NUM_PROCESSES} and {_PROCESS_ID} "
        f"(0 .. {_NUM_PROCESSES}-1, different on every process). Set {missing[0]}, or unset all.")
  coordinator = _get(env, _COORDINATOR)
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"{_COORDINATOR}={coordinator!r} is not host:port (e.g. 10.0.0.1:1234).")
  count = _int(env, _NUM_PROCESSES, minimum=1)
  pid = _int(env, _PROCESS_ID, minimum=0)
  if pid >= count:
    raise DistributedError(f"{_PROCESS_ID}={pid} is not below {_NUM_PROCESSES}={count}.")
  if count == 1:
    return Plan("single")  # nothing to coordinate; no port is bound
  return Plan("explicit", {"coordinator_address": coordinator, "num_processes": count,
                           "process_id": pid})


def _slurm_local_devices(env: Mapping[str, str]) -> tuple[int, ...] | None:
  """The GPU ordinals of this task under `--gpus-per-task=G`; None to keep JAX's default.

  JAX's SLURM detection gives task i (SLURM_LOCALID) GPU ordinal i alone, which is right when
  every task sees all of the node's GPUs. `--gpus-per-task` binds each task to its own G GPUs
  (CUDA_VISIBLE_DEVICES lists only those), so ordinal i is out of range for i >= G
  (jax-ml/jax#28194) and one task per node would drive one GPU instead of G.
  """
  per_task = _get(env, "SLURM_GPUS_PER_TASK")
  if not per_task:
    return None
  try:
    g = int(per_task.rsplit(":", 1)[-1])  # "2" or "a100:2"
  except ValueError:
    return None
  visible = _get(env, "CUDA_VISIBLE_DEVICES")
  if visible and len(visible.split(",")) == g:
    return tuple(range(g))
  local = int(env["SLURM_LOCALID"])
  ids = tuple(range(local * g, (local + 1) * g))  # unbound (--gpu-bind=none): the node's GPUs
  if visible and len(visible.split(",")) < ids[-1] + 1:
    raise DistributedError(
        f"SLURM task {local} with SLURM_GPUS_PER_TASK={per_task} sees CUDA_VISIBLE_DEVICES="
        f"{visible}; set {_LOCAL_DEVICE_IDS} to the ordinals this task should drive.")
  return ids


def _tpu_pod(env: Mapping[str, str]) -> bool:
  hosts = _get(env, "TPU_PROCESS_ADDRESSES") or _get(env, "TPU_WORKER_HOSTNAMES")
  if len([h for h in hosts.split(",") if h.strip()]) > 1:
    return True
  slices = _get(env, "MEGASCALE_NUM_SLICES")
  return bool(_get(env, "MEGASCALE_COORDINATOR_ADDRESS") or _get(env, "CLOUD_TPU_TASK_ID")
              or (slices.isdigit() and int(slices) > 1))


def _slurm_tasks(env: Mapping[str, str]) -> int:
  value = _get(env, "SLURM_NTASKS")
  return int(value) if value.isdigit() else 0


def _enable_cpu_collectives() -> None:
  """Cross-process collectives on the CPU backend need an implementation chosen before the
  backend starts. JAX 0.10 defaults to gloo; older versions default to none (every cross-process
  computation fails), and a user's own choice (mpi) is kept."""
  try:
    current = jax.config.jax_cpu_collectives_implementation
  except AttributeError:  # a JAX without the option: nothing to choose
    return
  if current in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _coordinator() -> str | None:
  if not jax.distributed.is_initialized():
    return None
  try:  # JAX has no public getter; the address matters only for logs
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    return jax_distributed.global_state.coordinator_address
  except (ImportError, AttributeError):
    return None


def _get(env: Mapping[str, str], name: str) -> str:
  return env.get(name, "").strip()


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
  value = _get(env, name)
  if not value.lstrip("-").isdigit() or int(value) < minimum:
    raise DistributedError(f"{name}={value!r} is not an integer >= {minimum}.")
  return int(value)


def _device_ids(env: Mapping[str, str], name: str) -> tuple[int, ...]:
  try:
    ids = tuple(int(x) for x in _get(env, name).split(","))
  except ValueError:
    ids = ()
  if not ids or min(ids) < 0:
    raise DistributedError(f"{name}={env[name]!r} is not a comma-separated list of device "
                           "ordinals (e.g. 0,1,2,3).")
  return ids
