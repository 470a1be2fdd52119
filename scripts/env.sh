# Sourced by the quickstart scripts: a project virtualenv with the exact versions CI tested. EXTRAS names
# the extras to install beside the base dependencies (test.sh: test,aot; demo.sh: none).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
EXTRAS=${EXTRAS-test}
.venv/bin/pip install -q -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
export PATH="$PWD/.venv/bin:$PATH"
