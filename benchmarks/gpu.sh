#!/usr/bin/env bash
# Accelerator benchmarks of issue 9 in one prepared run, for a person with one GPU; prints JSON lines.
#
#   bash benchmarks/gpu.sh | tee gpu.jsonl       # one GPU: about 6 minutes, compiles included (< 8 min)
#   SMOKE=1 bash benchmarks/gpu.sh               # tiny shapes on any backend, CPU too: checks the script
#
# 1. GPT-2 124M (gpt2 variant, vocab 50257, width 768, 12 layers, 12 heads, seq 1024, bf16), batch
#    $BATCH: tokens/s, MFU (6N + 6Vm + 12lTm over the device's dense bf16 peak), step time, peak memory,
#    with model.attention xla vs cudnn and model.remat none vs full (benchmarks/throughput.py, one
#    process per line, so each line's peak memory is its own and an out-of-memory stays one line).
#    A line with "error" is a configuration that failed (out of memory, say); the script goes on, and
#    exits 1 at the end if any command failed. SMOKE on a backend other than gpu skips cudnn; without
#    SMOKE, a backend other than gpu stops the script at once (exit 2).
# 2. Packed vs unpacked tiny cells: K = 1, 2, 4, 8 runs of a width-64 depth-4 shape (vocab 256, seq
#    256, batch 16) per vmapped call (train.pack); tokens/s summed over each pack's runs.
# 3. bf16 vs float32: the loss of 200 steps of the same 124M model on the embedded Shakespeare with
#    GPT-2's tokenizer (benchmarks/precision.py).
# Each command runs under `timeout`, so the whole script ends inside 8 minutes even if one hangs.
# Environment: PYTHON (default .venv/bin/python if present, else python), BATCH (16), SECONDS_PER (5),
# PEAK_TFLOPS (for a GPU that benchmarks/throughput.py's table does not know), SMOKE.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
PEAK=()
if [ -n "${PEAK_TFLOPS:-}" ]; then PEAK=(--peak-tflops "$PEAK_TFLOPS"); fi
BACKEND=$("$PYTHON" -c "import jax; print(jax.default_backend())" 2>/dev/null)
ATTENTIONS=(xla cudnn)
if [ "$BACKEND" != "gpu" ]; then
    if [ -z "${SMOKE:-}" ]; then  # a CPU-only jax on a GPU machine would "benchmark" 124M on the CPU
        printf '{"error": "the JAX backend is %s, not gpu: install the cuda12 extra (README, Install), or run SMOKE=1"}\n' \
            "${BACKEND:-unavailable}"
        exit 2
    fi
    ATTENTIONS=(xla)
    printf '{"skipped": "model.attention=cudnn: needs an NVIDIA GPU, the backend is %s"}\n' "$BACKEND"
fi

if [ -n "${SMOKE:-}" ]; then
    SHAPE=(--vocab 256 --widths 64 --depths 2 --seq 128 --batch 8)
    SECONDS_PER=${SECONDS_PER:-0.5}
    PRECISION=(--width 64 --depth 2 --heads 2 --seq 128 --batch 4 --steps 10 --tokenizer bytes)
    LIMIT_THROUGHPUT=120; LIMIT_PRECISION=120; LIMIT_PACKED=120
    PACKED=(--vocab 256 --widths 64 --depths 2 --seq 64 --batch 8 --head-dim 32)
else
    SHAPE=(--vocab 50257 --widths 768 --depths 12 --seq 1024 --batch "${BATCH:-16}")
    SECONDS_PER=${SECONDS_PER:-5}
    PRECISION=(--width 768 --depth 12 --heads 12 --seq 1024 --batch 8 --steps 200 --tokenizer gpt2)
    LIMIT_THROUGHPUT=75; LIMIT_PRECISION=110; LIMIT_PACKED=50
    PACKED=(--vocab 256 --widths 64 --depths 4 --seq 256 --batch 16 --head-dim 32)
fi

section() { printf '{"section": "%s", "elapsed_s": %d}\n' "$1" "$SECONDS"; }
failures=0
run() {  # run LIMIT_SECONDS COMMAND...: a timeout is reported as a JSON line, and counted
    local limit=$1; shift
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        failures=$((failures + 1))
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            printf '{"error": "timed out after %d s", "command": "%s"}\n' "$limit" "$*"
        fi
    fi
}

section "gpt2-124m throughput: attention x remat"
for attention in "${ATTENTIONS[@]}"; do
    for remat in none full; do
        run "$LIMIT_THROUGHPUT" "$PYTHON" benchmarks/throughput.py "${SHAPE[@]}" --dtype bfloat16 \
            --variant gpt2 --head-dim 64 --attention "$attention" --remat "$remat" \
            --seconds "$SECONDS_PER" "${PEAK[@]}"
    done
done

# ---- PACKED CELLS: packed vs unpacked tiny cells (K = 1, 2, 4, 8 of a width-64 depth-4 shape) ----
# tokens_per_s of a line is the whole pack's; its ratio to the K=1 line is what packing buys.
section "packed tiny cells: K = 1, 2, 4, 8 runs per call"
run "$LIMIT_PACKED" "$PYTHON" benchmarks/throughput.py "${PACKED[@]}" --packs 1,2,4,8 --seconds "$SECONDS_PER" \
    "${PEAK[@]}"
# ---- end of PACKED CELLS ----

section "bf16 vs float32: loss of the same steps"
run "$LIMIT_PRECISION" "$PYTHON" benchmarks/precision.py "${PRECISION[@]}"

printf '{"section": "done", "elapsed_s": %d, "failed_commands": %d}\n' "$SECONDS" "$failures"
[ "$failures" -eq 0 ]
