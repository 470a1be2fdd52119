#!/usr/bin/env bash
# Install what the tests need (into .venv), lint, and run the tests. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
export JAX_PLATFORMS=cpu
ruff check .
exec pytest -q "$@"
