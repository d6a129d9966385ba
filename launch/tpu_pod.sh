#!/usr/bin/env bash
# Runs `python -m kdknob_jax.calibrate` (or another entry point, --module) on every worker of a Cloud TPU VM slice: creates the
# slice (or reuses it), copies this repository's committed tree to every worker, installs it, and
# starts the same command everywhere. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --config CONFIG --workdir WORKDIR [options] [-- EXTRA_CALIBRATE_FLAGS...]

Required (flag or environment variable):
  --config PATH        config file, relative to the repository root     (CONFIG)
  --workdir DIR        gs://bucket/run, or a path every worker shares    (WORKDIR)
  --name NAME          TPU VM name                                        (TPU_NAME)
  --zone ZONE          e.g. us-east5-a                                    (TPU_ZONE)

Optional:
  --project PROJECT    GCP project (default: gcloud's configured one)     (TPU_PROJECT)
  --accelerator TYPE   accelerator type, default v5p-64                   (TPU_ACCELERATOR)
  --version VERSION    TPU runtime version, default v2-alpha-tpuv5        (TPU_RUNTIME_VERSION)
                       (v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e)
  --spot               create the slice as Spot capacity
  --ref REF            git ref to ship, default HEAD (uncommitted changes are NOT shipped)
  --jax-spec SPEC      pip spec of JAX for TPU, default 'jax[tpu]'        (JAX_TPU_SPEC)
  --skip-create        the slice exists; do not describe or create it
  --skip-install       the workers already have this ref installed
  --module MODULE      entry point: kdknob_jax.calibrate (default), kdknob_jax.distill,
                       kdknob_jax.pipeline or kdknob_jax.pilot                  (KDKNOB_MODULE)
  --detach             run under nohup on every worker, logging to ~/kdknob_run.log
  --dry-run            print the commands instead of running them
  -h, --help           this text

Every worker runs with KDKNOB_DISTRIBUTED=auto, so kdknob_jax.distributed.initialize() joins
the slice through JAX's Cloud TPU detection.

Example:
  launch/tpu_pod.sh --name kd-v5p --zone us-east5-a --accelerator v5p-64 \
    --config configs/qwen8b_undistill.py:v5p --workdir gs://my-bucket/kd/run1 -- --config.seed=1
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; echo "Run launch/tpu_pod.sh --help for usage." >&2; exit 2; }

CONFIG="${CONFIG:-}"
MODULE="${KDKNOB_MODULE:-kdknob_jax.calibrate}"
WORKDIR="${WORKDIR:-}"
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR="${TPU_ACCELERATOR:-v5p-64}"
VERSION="${TPU_RUNTIME_VERSION:-v2-alpha-tpuv5}"
JAX_SPEC="${JAX_TPU_SPEC:-jax[tpu]}"
REF=HEAD
SPOT=0 SKIP_CREATE=0 SKIP_INSTALL=0 DETACH=0 DRY_RUN=0
EXTRA=()

while (($#)); do
  case "$1" in
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --module) MODULE="${2:?--module needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --ref) REF="${2:?--ref needs a value}"; shift 2 ;;
    --jax-spec) JAX_SPEC="${2:?--jax-spec needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --skip-create) SKIP_CREATE=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

[[ -n "$CONFIG" ]] || die "--config (or CONFIG) is required"
[[ -n "$WORKDIR" ]] || die "--workdir (or WORKDIR) is required"
[[ -n "$NAME" ]] || die "--name (or TPU_NAME) is required"
[[ -n "$ZONE" ]] || die "--zone (or TPU_ZONE) is required"

REPO="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
git -C "$REPO" rev-parse --verify --quiet "$REF^{commit}" >/dev/null \
  || die "'$REF' is not a git ref"
# Workers get the tree at REF, so the config must be committed there, not only on this disk.
# A config may carry an argument after a colon (configs/x.py:v5p); the file is what must exist.
git -C "$REPO" cat-file -e "$REF:${CONFIG%%:*}" 2>/dev/null || die "config '${CONFIG%%:*}' is not in $REF"
# A relative workdir would be a different, unshared directory on every worker.
[[ "$WORKDIR" == gs://* || "$WORKDIR" == /* ]] \
  || die "--workdir must be gs://... or an absolute path on a filesystem all workers share"

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

# One word for a POSIX shell: as is when plain, else in single quotes.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command under --dry-run (a --flag=value as --flag='value'), runs it otherwise.
run() {
  if ((DRY_RUN)); then
    local arg out=()
    for arg in "$@"; do
      if [[ "$arg" =~ ^(--[a-z-]+=)(.*)$ ]]; then
        out+=("${BASH_REMATCH[1]}$(q "${BASH_REMATCH[2]}")")
      else
        out+=("$(q "$arg")")
      fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}

# 1. The slice.
if ((!SKIP_CREATE)); then
  CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR"
          --version="$VERSION")
  ((SPOT)) && CREATE+=(--spot)
  if ((DRY_RUN)); then
    echo "# create the slice unless this succeeds:"
    run "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)'
    run "${CREATE[@]}"
  elif STATE="$("${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' \
                2>/dev/null)"; then
    echo "Reusing TPU VM $NAME (state $STATE)."
  else
    run "${CREATE[@]}"
  fi
fi

# 2. The code: the committed tree at REF, identical on every worker.
SHA="$(git -C "$REPO" rev-parse --short "$REF")"
TARBALL="${TMPDIR:-/tmp}/kdknob_jax-$SHA.tar.gz"
if [[ "$REF" == HEAD ]] && ! git -C "$REPO" diff --quiet HEAD -- 2>/dev/null; then
  echo "tpu_pod.sh: warning: uncommitted changes are not shipped; workers get $SHA." >&2
fi
run git -C "$REPO" archive --format=tar.gz --output="$TARBALL" "$REF"
REMOTE_DIR='~/kdknob_jax'
if ((!SKIP_INSTALL)); then
  run "${TPU[@]}" scp "$TARBALL" "$NAME:kdknob_jax.tar.gz" "${WHERE[@]}" --worker=all
  INSTALL="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR"
  INSTALL+=" && tar -xzf ~/kdknob_jax.tar.gz -C $REMOTE_DIR"
  INSTALL+=" && cd $REMOTE_DIR && python3 -m pip install --user -q --upgrade pip"
  INSTALL+=" && python3 -m pip install --user -q -e . $(q "$JAX_SPEC")"
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$INSTALL"
fi

# 3. The same command on every worker.
case "$MODULE" in
  kdknob_jax.calibrate|kdknob_jax.distill|kdknob_jax.pipeline|kdknob_jax.pilot) ;;
  *) die "--module must be kdknob_jax.calibrate, .distill, .pipeline or .pilot (got $MODULE)" ;;
esac
CMD="cd $REMOTE_DIR && KDKNOB_DISTRIBUTED=auto python3 -m $MODULE"
CMD+=" --config $(q "$CONFIG") --workdir $(q "$WORKDIR")"
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do
  CMD+=" $(q "$arg")"
done
if ((DETACH)); then
  CMD="nohup bash -c $(q "$CMD") > ~/kdknob_run.log 2>&1 < /dev/null &"
fi
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$CMD"
