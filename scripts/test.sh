#!/usr/bin/env bash
# Install what the tests need (into .venv) and run them. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
export JAX_PLATFORMS=cpu
exec pytest -q "$@"
