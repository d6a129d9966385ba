#!/usr/bin/env bash
# Submits launch/slurm.sbatch with the task layout chosen here: one process per GPU (default) or
# one per node. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm_gpu.sh --config CONFIG --workdir WORKDIR [options] [-- EXTRA_CALIBRATE_FLAGS...]

  --config PATH          config file, relative to the repository root      (CONFIG)
  --workdir DIR          absolute path every node shares, or gs://...       (WORKDIR)
  --nodes N              default 2                                          (NODES)
  --gpus-per-node G      default 8                                          (GPUS_PER_NODE)
  --cpus-per-gpu C       default 12                                         (CPUS_PER_GPU)
  --per-node             one process per node driving its G GPUs (default: one per GPU)
  --time T               default 24:00:00                                   (TIME)
  --partition P          (PARTITION)       --account A      (ACCOUNT)
  --python PATH          interpreter on the nodes, default REPO/.venv/bin/python (PYTHON)
  --dry-run              print the sbatch command instead of submitting it
  -h, --help             this text
EOF
}

die() { echo "slurm_gpu.sh: $*" >&2; echo "Run launch/slurm_gpu.sh --help for usage." >&2; exit 2; }

CONFIG="${CONFIG:-}" WORKDIR="${WORKDIR:-}"
NODES="${NODES:-2}" GPUS="${GPUS_PER_NODE:-8}" CPUS="${CPUS_PER_GPU:-12}" TIME="${TIME:-24:00:00}"
PARTITION="${PARTITION:-}" ACCOUNT="${ACCOUNT:-}" PYTHON="${PYTHON:-}"
PER_NODE=0 DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --config) CONFIG="${2:?}"; shift 2 ;;
    --workdir) WORKDIR="${2:?}"; shift 2 ;;
    --nodes) NODES="${2:?}"; shift 2 ;;
    --gpus-per-node) GPUS="${2:?}"; shift 2 ;;
    --cpus-per-gpu) CPUS="${2:?}"; shift 2 ;;
    --time) TIME="${2:?}"; shift 2 ;;
    --partition) PARTITION="${2:?}"; shift 2 ;;
    --account) ACCOUNT="${2:?}"; shift 2 ;;
    --python) PYTHON="${2:?}"; shift 2 ;;
    --per-node) PER_NODE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config (or CONFIG) is required"
[[ -n "$WORKDIR" ]] || die "--workdir (or WORKDIR) is required"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ((PER_NODE)); then
  LAYOUT=(--ntasks-per-node=1 --gpus-per-task="$GPUS" --cpus-per-task=$((CPUS * GPUS)))
else
  LAYOUT=(--ntasks-per-node="$GPUS" --gpus-per-task=1 --cpus-per-task="$CPUS")
fi
CMD=(sbatch --chdir="$REPO" --nodes="$NODES" "${LAYOUT[@]}" --time="$TIME")
[[ -n "$PARTITION" ]] && CMD+=(--partition="$PARTITION")
[[ -n "$ACCOUNT" ]] && CMD+=(--account="$ACCOUNT")
# ALL keeps the submitting environment (modules, proxies, HF_HOME) alongside these.
EXPORT="ALL,CONFIG=$CONFIG,WORKDIR=$WORKDIR,REPO=$REPO"
[[ -n "$PYTHON" ]] && EXPORT+=",PYTHON=$PYTHON"
CMD+=(--export="$EXPORT" "$REPO/launch/slurm.sbatch" "${EXTRA[@]+"${EXTRA[@]}"}")

if ((DRY_RUN)); then
  printf '%q ' "${CMD[@]}"; echo
else
  "${CMD[@]}"
fi
