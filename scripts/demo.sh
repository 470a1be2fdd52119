#!/usr/bin/env bash
# The main job on the embedded default: install the base dependencies only (into .venv; no test or
# developer tools), then `scaling-grid demo`: train the demo grid on the Shakespeare corpus into
# stores/demo (resumable: run it again after an interruption), fit the universality law and write the
# report to reports/demo/index.html. From an installed wheel, `scaling-grid demo` alone does the same.
EXTRAS=
source "$(dirname "$0")/env.sh"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # a grid sized for a CPU; and no TPU/CUDA probing if the aot extra is here
scaling-grid demo "$@"
