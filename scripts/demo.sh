#!/usr/bin/env bash
# The main job on the embedded default: install (into .venv), train the demo grid on the Shakespeare
# corpus into stores/demo (resumable: run it again after an interruption), fit the universality law
# and write the report to reports/demo/index.html.
source "$(dirname "$0")/env.sh"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # a grid sized for a CPU; and no TPU/CUDA probing if the aot extra is here
scaling-grid run configs/demo.yaml --store stores/demo
scaling-grid report stores/demo --out reports/demo
echo "report: $PWD/reports/demo/index.html"
