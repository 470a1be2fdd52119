# Sourced by the quickstart scripts: a project virtualenv with the exact versions CI tested.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -c constraints.txt -e ".[${EXTRAS:-test}]"
export PATH="$PWD/.venv/bin:$PATH"
