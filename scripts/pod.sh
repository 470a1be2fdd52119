#!/usr/bin/env bash
# Run a grid on a Cloud TPU pod slice, from a machine with gcloud and this checkout:
#   scripts/pod.sh --zone us-central2-b my-slice configs/my-grid.yaml --store gs://my-bucket/grids/my-grid
# 1. this checkout's working tree (no .git, .venv, .python, data/, stores/, runs/, reports/) goes to
#    ~/scaling-grid on every worker; 2. each worker installs it there once, with a Python >= 3.11
#    that uv brings (TPU VM images ship 3.10): scripts/install.sh tpu,gcs; 3. every worker runs
#    `scaling-grid run SPEC FLAGS --distributed --no-progress` (after all installs are done, so they
#    join within --peer-timeout). Paths in FLAGS are seen from ~/scaling-grid on the workers: the
#    store and data.root go in a bucket every worker reaches. After a preemption, run it again.
set -euo pipefail
usage() { echo "usage: scripts/pod.sh [--print] --zone ZONE [--project PROJECT] TPU_NAME SPEC [run flags...]"; }
PRINT=0 ZONE= PROJECT=
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage
      echo "  --print    print the gcloud commands (and the tar that packs the code) instead of running them"
      echo "  --zone     the slice's zone; --project its project (default: gcloud's configured one)"
      echo "  env: SG_EXTRAS (default tpu,gcs), SG_PYTHON (default 3.12): what scripts/install.sh installs"
      exit 0 ;;
    --print) PRINT=1; shift ;;
    --zone|--project)
      [ $# -ge 2 ] || { usage >&2; echo "pod.sh: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --zone ]; then ZONE=$2; else PROJECT=$2; fi; shift 2 ;;
    --zone=*) ZONE=${1#*=}; shift ;;
    --project=*) PROJECT=${1#*=}; shift ;;
    -*) usage >&2; echo "pod.sh: unknown option $1 (options go before TPU_NAME)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { usage >&2; echo "pod.sh: give the TPU name and the grid spec" >&2; exit 2; }
[ -n "$ZONE" ] || { usage >&2; echo "pod.sh: --zone is required (the slice's zone)" >&2; exit 2; }
TPU=$1; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PACK=${TMPDIR:-/tmp}/scaling-grid-pod.tar.gz

# --print: each command on one line, quoted for a shell, instead of running it
run() { if [ $PRINT = 1 ]; then quote "$@"; echo; else "$@"; fi; }
quote() { local a s=; for a; do [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]] || a="'${a//\'/\'\\\'\'}'"; s+="$a "; done; printf %s "${s% }"; }
where=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then where+=(--project="$PROJECT"); fi
on_all() { run gcloud compute tpus tpu-vm ssh "$TPU" "${where[@]}" --worker=all --command="$1"; }

run tar czf "$PACK" --exclude=./.git --exclude=./.venv --exclude=./.python --exclude='./.*_cache' \
  --exclude=./data --exclude=./stores --exclude=./runs --exclude=./reports --exclude=__pycache__ .
run gcloud compute tpus tpu-vm scp "$PACK" "$TPU:scaling-grid.tar.gz" "${where[@]}" --worker=all
on_all "mkdir -p ~/scaling-grid && tar xzf ~/scaling-grid.tar.gz -C ~/scaling-grid && \
SG_PYTHON=$(quote "${SG_PYTHON:-3.12}") ~/scaling-grid/scripts/install.sh $(quote "${SG_EXTRAS:-tpu,gcs}")"
on_all "cd ~/scaling-grid && .venv/bin/scaling-grid run $(quote "$@") --distributed --no-progress"
