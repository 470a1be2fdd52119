#!/usr/bin/env bash
# Install scaling-grid and the extras named (e.g. tpu,gcs or cuda12) into .venv of this checkout,
# with the versions CI tested (constraints.txt) and a Python >= 3.11 that uv downloads when the
# machine has none (TPU VM images ship 3.10). The interpreter goes into .python/ beside .venv, so a
# checkout on a shared filesystem is usable from every node. Install once per disk: two installs
# into one .venv at the same time can break it (pod.sh runs this once on each worker, slurm.sbatch
# once before srun, ssh.sh one host after the other).
set -euo pipefail
usage() { echo "usage: scripts/install.sh [--print] [EXTRAS]   (e.g. tpu,gcs | cuda12; default: none)"; }
PRINT=0
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; echo "  --print  print the commands instead of running them"
               echo "  env: SG_PYTHON (default 3.12), the Python version uv installs"; exit 0 ;;
    --print) PRINT=1; shift ;;
    -*) usage >&2; echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -le 1 ] || { usage >&2; echo "install.sh: one EXTRAS argument at most (comma-separated)" >&2; exit 2; }
EXTRAS=${1:-}
PY=${SG_PYTHON:-3.12}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export UV_PYTHON_INSTALL_DIR="$PWD/.python" PATH="$HOME/.local/bin:$PATH"
# --print: each command on one line, quoted for a shell, instead of running it
run() { if [ $PRINT = 1 ]; then quote "$@"; echo; else "$@"; fi; }
quote() { local a s=; for a; do [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]] || a="'${a//\'/\'\\\'\'}'"; s+="$a "; done; printf %s "${s% }"; }

if [ $PRINT = 1 ]; then quote cd "$PWD"; echo; fi
if ! command -v uv >/dev/null || [ $PRINT = 1 ]; then  # uv's own installer: one binary in ~/.local/bin
  run sh -c 'command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh'
fi
run uv python install "$PY"
run uv venv --allow-existing --python "$PY" .venv
run uv pip install --python .venv/bin/python --quiet -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
run .venv/bin/python -c 'import scaling_grid.grid.cli'  # the install imports
