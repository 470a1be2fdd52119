#!/usr/bin/env bash
# Install what the tests need (into .venv), lint, type-check, and run the tests. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
export JAX_PLATFORMS=cpu
ruff check .
mypy  # the package (pyproject.toml [tool.mypy]); ~10 s cold, about a second with its cache (.mypy_cache/)
exec pytest -q "$@"
