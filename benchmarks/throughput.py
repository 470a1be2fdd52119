"""Training throughput of scaling-grid's own compiled train step, shape by shape.

Same flags and JSON-lines output as ../shared/bench/torch_reference.py (the yardstick), so the two can
be run A B A B in one sitting and compared line by line. The step measured is the tool's: the real
``trainer.step.build`` (the Transformer of the chosen variant, AdamW with its mask, global-norm
clipping, the warmup + cosine schedule, donation, k optimizer steps per compiled call), on random
tokens like the reference. Runs on whatever backend JAX has (CPU, GPU, TPU) with no code changes.

usage: python benchmarks/throughput.py [--vocab 256] [--widths 64,128,256] [--depths 2,4,8]
                                       [--seq 256] [--batch 16] [--threads 2] [--seconds 5]
                                       [--variant gpt2] [--steps-per-call auto] [--peak-tflops X]
One JSON line per shape: width, depth, tokens_per_s, step_s (per optimizer step), flops_per_token
(model.flops_per_token, the reference's formula), compile_s (lower + compile of the train chunk, kept
out of the steady state), mfu, backend, device, variant, steps_per_call, loss, and a few more.
MFU on CPU is relative to a peak measured once on this machine with a large float32 matmul (the
line says so in `peak_source`); on known accelerators it is the vendor's dense peak for the dtype.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# Vendor dense peaks in TFLOP/s by device_kind substring: (bf16, fp32 without TF32 tricks).
KNOWN_PEAKS = {
    "H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
    "A10": (125.0, 31.2), "V100": (125.0, 15.7),
    "TPU v6": (918.0, 918.0), "TPU v5p": (459.0, 459.0), "TPU v5 lite": (197.0, 197.0),
    "TPU v5e": (197.0, 197.0), "TPU v4": (275.0, 275.0), "TPU v3": (123.0, 123.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--depths", default="2,4,8")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU only: restrict the process to this many cores (0 = all; XLA sizes its "
                         "thread pool from the cores it may use)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--variant", default="gpt2", help="a name in trainer.model.VARIANTS")
    ap.add_argument("--head-dim", type=int, default=64, help="heads = max(1, width // head_dim), as the reference")
    ap.add_argument("--steps-per-call", default="auto",
                    help="optimizer steps per compiled call, or 'auto' (step.default_steps_per_call)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="compute dtype; auto = bf16 on GPU/TPU, fp32 on CPU (as the training loop)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak for MFU; default: vendor peak for known accelerators, measured on CPU")
    ap.add_argument("--unroll", type=int, default=0,
                    help="blocks per scan iteration (model.unroll); 0 = auto: all on CPU, 1 on GPU/TPU")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.threads and hasattr(os, "sched_setaffinity"):  # must precede the first JAX backend call
        cpus = sorted(os.sched_getaffinity(0))
        if a.threads < len(cpus):
            os.sched_setaffinity(0, cpus[:a.threads])

    import jax
    import jax.numpy as jnp

    from scaling_grid.trainer import model as model_lib
    from scaling_grid.trainer import step as step_lib
    from scaling_grid.trainer.config import ModelConfig
    from scaling_grid.trainer.loop import compute_dtype

    backend, dev = jax.default_backend(), jax.devices()[0]
    device = getattr(dev, "device_kind", str(dev))
    dtype = compute_dtype(a.dtype)
    peak, peak_source = peak_tflops(a.peak_tflops, backend, device, dtype)

    for width in map(int, a.widths.split(",")):
        for depth in map(int, a.depths.split(",")):
            heads = max(1, width // a.head_dim)
            mcfg = ModelConfig(variant=a.variant, width=width, depth=depth, heads=heads, seq_len=a.seq,
                               unroll=a.unroll)
            arch = model_lib.make_arch(mcfg, a.vocab, dtype)
            k = (step_lib.default_steps_per_call(arch, a.batch) if a.steps_per_call == "auto"
                 else int(a.steps_per_call))
            out = measure(arch, a.batch, k, a.seconds)
            out.update(
                framework=f"jax-{jax.__version__}", vocab=a.vocab, width=width, depth=depth, seq=a.seq,
                batch=a.batch, heads=heads, variant=a.variant, backend=backend, device=device,
                dtype=jnp.dtype(dtype).name, steps_per_call=k, unroll=model_lib.resolve_unroll(arch.unroll, depth),
                peak_tflops=peak, peak_source=peak_source,
                mfu=out["flops_per_token"] * out["tokens_per_s"] / (peak * 1e12) if peak else None)
            print(json.dumps(out), flush=True)


def measure(arch, batch: int, k: int, seconds: float) -> dict:
    import jax
    import numpy as np

    from scaling_grid.trainer import model as model_lib
    from scaling_grid.trainer import step as step_lib
    from scaling_grid.trainer.config import OptimConfig

    # The reference's optimizer settings (lr 3e-4, betas 0.9/0.95, wd 0.1) plus the tool's defaults
    # (warmup + cosine, clip 1.0). A long horizon keeps the schedule from mattering.
    optim = OptimConfig(lr=3e-4)
    steps = step_lib.build(arch, optim)
    lrs = jax.device_put(step_lib.lr_table(optim, 1_000_000), steps.lr_sharding)
    t0 = time.perf_counter()
    state = jax.block_until_ready(steps.init(jax.random.key(0)))
    init_s = time.perf_counter() - t0
    n_params = model_lib.param_counts(state.params)
    rng = np.random.default_rng(0)
    xs, ys = (jax.device_put(rng.integers(0, arch.vocab, (k, batch, arch.seq_len), dtype=np.int32),
                             steps.batch_sharding) for _ in range(2))

    t0 = time.perf_counter()
    train = steps.train.lower(state, xs, ys, lrs).compile()
    compile_s = time.perf_counter() - t0

    # Warm-up calls (first-touch allocations, thread-pool spin-up), then the steady state with the
    # training loop's pattern: dispatch call i+1, then wait for call i's metrics.
    for _ in range(2):
        state, metrics = train(state, xs, ys, lrs)
    jax.block_until_ready(metrics)
    calls, cpu0, t0 = 0, _cpu_times(), time.perf_counter()
    prev = None
    while calls < 3 or time.perf_counter() - t0 < seconds:
        state, metrics = train(state, xs, ys, lrs)
        if prev is not None:
            jax.block_until_ready(prev)
        prev = metrics
        calls += 1
    loss = float(np.asarray(jax.device_get(prev["loss"]))[-1])
    dt = time.perf_counter() - t0
    cpu1 = _cpu_times()
    step_s = dt / (calls * k)
    out = dict(step_s=step_s, tokens_per_s=batch * arch.seq_len / step_s,
               flops_per_token=model_lib.flops_per_token(arch, n_params["non_embedding"]),
               compile_s=compile_s, init_s=init_s, calls=calls, loss=loss,
               params_non_embedding=n_params["non_embedding"])
    if cpu0 and cpu1:  # CPU used by other processes during the timed window (shared machines)
        other = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])
        out["other_cpu_load"] = round(max(other, 0.0) / dt, 2)
    return out


def _cpu_times() -> tuple[float, float] | None:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this process), Linux only."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        busy = sum(vals) - vals[3] - vals[4]  # all but idle and iowait
        hz = os.sysconf("SC_CLK_TCK")
        own = os.times()
        return busy / hz, own.user + own.system
    except (OSError, ValueError, IndexError):
        return None


def peak_tflops(given: float | None, backend: str, device: str, dtype) -> tuple[float | None, str]:
    import jax.numpy as jnp

    if given:
        return given, "--peak-tflops"
    if backend == "cpu":
        return measured_matmul_peak(), "measured: float32 matmul 2048x2048x2048 on this CPU (all cores)"
    low = jnp.dtype(dtype).itemsize < 4
    for name, (p16, p32) in KNOWN_PEAKS.items():
        if name.lower() in device.lower():
            return (p16 if low else p32), f"vendor dense peak for {device} ({'bf16' if low else 'fp32'})"
    return None, f"unknown device {device!r}: pass --peak-tflops for MFU"


def measured_matmul_peak(n: int = 2048, seconds: float = 1.5) -> float:
    """Achievable float32 TFLOP/s of one large matmul (best of several timed repeats)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))
    best, t_end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


if __name__ == "__main__":
    sys.exit(main())
