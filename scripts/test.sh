#!/usr/bin/env bash
# Install what the tests need (into .venv), lint, type-check, and run the tests. Extra arguments go to pytest.
#   bash scripts/test.sh          # everything (what CI runs)
#   bash scripts/test.sh --fast   # leaves out the tests marked slow (processes, longer training) and aot
#                                 # (compiles for TPU/GPU targets): the loop while developing
EXTRAS=test,aot
source "$(dirname "$0")/env.sh"
export JAX_PLATFORMS=cpu  # also keeps the aot extra's TPU and CUDA plugins from probing for chips
ruff check .
mypy  # the package (pyproject.toml [tool.mypy]); ~10 s cold, about a second with its cache (.mypy_cache/)
if [ "${1:-}" = "--fast" ]; then
  shift
  exec pytest -q -m "not slow and not aot" "$@"
fi
exec pytest -q --durations=25 "$@"  # the slowest 25 in the log: where CI time goes
