"""Training throughput of scaling-grid's own compiled train step, shape by shape.

Same flags and JSON-lines output as ../shared/bench/torch_reference.py (the yardstick), so the two can
be run A B A B in one sitting and compared line by line. The step measured is the tool's: the real
``trainer.step.build`` (the Transformer of the chosen variant, AdamW with its mask, global-norm
clipping, the warmup + cosine schedule, donation, k optimizer steps per compiled call), on random
tokens like the reference. Runs on whatever backend JAX has (CPU, GPU, TPU) with no code changes, on
every device it sees (the batch is split over them).

usage: python benchmarks/throughput.py [--vocab 256] [--widths 64,128,256] [--depths 2,4,8]
                                       [--seq 256] [--batch 16] [--threads 2] [--seconds 5]
                                       [--variant gpt2] [--steps-per-call auto] [--peak-tflops X]
                                       [--dtype auto] [--attention auto] [--remat none] [--logits-fp32]
One JSON line per shape: width, depth, tokens_per_s (all devices together), step_s (per optimizer
step), flops_per_token, compile_s (lower + compile of the train chunk, kept out of the steady state),
mfu, n_devices, device_kind, peak_tflops (per device) and its source, attention (asked) and
attention_impl (the kernel that ran; on GPU cudnn_fmha_calls_in_hlo counts cuDNN's fused attention
calls in the compiled step), remat, peak_bytes_in_use (device memory_stats(), where the
backend keeps them; None on CPU), xla_temp_bytes (XLA's memory analysis of the compiled step, per
device), loss, and a few more. A shape that fails (out of memory, say) prints a line with `error`, and
the exit status is then 1.

MFU = flops_per_token x tokens_per_s / (peak_tflops x 1e12 x n_devices), with flops_per_token from
``model.flops_per_token``: 6N + 6Vm + 12lTm (N non-embedding parameters, V vocab, m width, l depth,
T sequence length; the attention term counts the full T x T square). It is model FLOPs: the extra
forward pass that ``--remat full`` recomputes is not counted, so remat shows as lower MFU.

Peaks: on an accelerator, the vendor's dense peak for the compute dtype, looked up by the exact
``device_kind`` JAX reports in ``trainer/peaks.py`` (a kind not in the table needs ``--peak-tflops``). On
CPU, a float32 matmul measured once on the whole machine; simulated CPU devices
(``--xla_force_host_platform_device_count``) share those cores, so each gets that peak / n_devices.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--depths", default="2,4,8")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="global sequences per step (split over all devices)")
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
                    help="peak TFLOP/s of one device for MFU; default: trainer/peaks.py by exact device kind on "
                         "accelerators, measured on CPU")
    ap.add_argument("--unroll", type=int, default=0,
                    help="blocks per scan iteration (model.unroll); 0 = auto: all on CPU, 1 on GPU/TPU")
    ap.add_argument("--attention", default="auto", help="model.attention: auto | xla | cudnn | splash")
    ap.add_argument("--remat", default="none", help="model.remat: none | full | dots_saveable")
    ap.add_argument("--logits-fp32", action="store_true", help="model.logits_fp32: the head matmul in float32")
    ap.add_argument("--packs", default="1", help="runs trained together per call (train.pack), e.g. 1,2,4,8: "
                    "a line each, tokens_per_s summed over the pack's runs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
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
    from scaling_grid.trainer.model import compute_dtype

    backend, dev = jax.default_backend(), jax.devices()[0]
    device_kind = getattr(dev, "device_kind", str(dev))
    n_devices = jax.device_count()
    dtype = compute_dtype(a.dtype)
    peak, peak_source = peak_tflops(a.peak_tflops, backend, device_kind, dtype, n_devices)

    failed = False
    shapes = [(w, d, K) for w in map(int, a.widths.split(",")) for d in map(int, a.depths.split(","))
              for K in map(int, a.packs.split(","))]
    for width, depth, pack in shapes:
        heads = max(1, width // a.head_dim)
        line: dict[str, Any] = dict(
            framework=f"jax-{jax.__version__}", vocab=a.vocab, width=width, depth=depth, seq=a.seq,
            batch=a.batch, heads=heads, variant=a.variant, backend=backend, device=device_kind,
            device_kind=device_kind, n_devices=n_devices, dtype=jnp.dtype(dtype).name,
            attention=a.attention, remat=a.remat, logits_fp32=a.logits_fp32,
            peak_tflops=peak, peak_source=peak_source, pack=pack)
        try:
            mcfg = ModelConfig(variant=a.variant, width=width, depth=depth, heads=heads, seq_len=a.seq,
                               unroll=a.unroll, attention=a.attention, remat=a.remat,
                               logits_fp32=a.logits_fp32)
            arch = model_lib.make_arch(mcfg, a.vocab, dtype)
            k = (step_lib.default_steps_per_call(arch, a.batch) if a.steps_per_call == "auto"
                 else int(a.steps_per_call))
            line.update(steps_per_call=k, unroll=model_lib.resolve_unroll(arch.unroll, depth),
                        attention_impl=model_lib.resolve_attention(arch))
            out = measure(arch, a.batch, k, a.seconds, pack)
            line.update(out)
            line["mfu"] = mfu(out["flops_per_token"], out["tokens_per_s"], peak, out["n_devices"])
        except Exception as e:  # noqa: BLE001 - one failed shape (OOM, an unsupported kernel) is a line
            failed = True
            line["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops_per_device: float | None,
        n_devices: int) -> float | None:
    """Model FLOPs utilisation of the whole job: achieved FLOP/s over the peak of all its devices."""
    if not peak_tflops_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_tflops_per_device * 1e12 * n_devices)


def measure(arch: Any, batch: int, k: int, seconds: float, pack: int = 1) -> dict[str, Any]:
    """Steady-state speed of the train step; with pack > 1, of `pack` runs in one vmapped call
    (tokens_per_s is then the pack's total, step_s the time of one step of all of them)."""
    import jax
    import numpy as np

    from scaling_grid.trainer import model as model_lib
    from scaling_grid.trainer import step as step_lib
    from scaling_grid.trainer.config import OptimConfig

    # The reference's optimizer settings (lr 3e-4, betas 0.9/0.95, wd 0.1) plus the tool's defaults
    # (warmup + cosine, clip 1.0). A long horizon keeps the schedule from mattering.
    optim = OptimConfig(lr=3e-4)
    steps = step_lib.build(arch, optim, pack=pack)
    K = steps.pack
    table = step_lib.lr_table(optim, 1_000_000)
    lrs = jax.device_put(np.stack([table] * K) if K else table, steps.lr_sharding)
    t0 = time.perf_counter()
    key = jax.random.split(jax.random.key(0), K) if K else jax.random.key(0)
    state = jax.block_until_ready(steps.init(key))
    init_s = time.perf_counter() - t0
    n_params = model_lib.param_counts(step_lib.abstract_state(steps.lane or steps).params)
    rng = np.random.default_rng(0)
    shape = (K, k, batch, arch.seq_len) if K else (k, batch, arch.seq_len)
    xs, ys = (jax.device_put(rng.integers(0, arch.vocab, shape, dtype=np.int32), steps.batch_sharding)
              for _ in range(2))

    t0 = time.perf_counter()
    train = steps.train.lower(state, xs, ys, lrs).compile()
    compile_s = time.perf_counter() - t0
    ma = train.memory_analysis()
    # cuDNN's fused attention shows in the compiled HLO as custom calls (forward and backward).
    fmha = train.as_text().count("__cudnn$fmha") if jax.default_backend() == "gpu" else None

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
    assert prev is not None
    loss = float(np.asarray(jax.device_get(prev["loss"])).reshape(-1)[-1])
    dt = time.perf_counter() - t0
    cpu1 = _cpu_times()
    step_s = dt / (calls * k)
    out: dict[str, Any] = dict(
        step_s=step_s, tokens_per_s=max(pack, 1) * batch * arch.seq_len / step_s,
        flops_per_token=model_lib.flops_per_token(arch, n_params["non_embedding"]),
        n_devices=int(steps.mesh.size), compile_s=compile_s, init_s=init_s, calls=calls, loss=loss,
        params_non_embedding=n_params["non_embedding"],
        xla_temp_bytes=int(ma.temp_size_in_bytes) if ma is not None else None, cudnn_fmha_calls_in_hlo=fmha,
        peak_bytes_in_use=peak_bytes_in_use())
    if cpu0 and cpu1:  # CPU used by other processes during the timed window (shared machines)
        other = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])
        out["other_cpu_load"] = round(max(other, 0.0) / dt, 2)
    return out


def peak_bytes_in_use() -> int | None:
    """The most device memory this process has held so far (the largest over local devices), where the
    backend keeps memory_stats (GPU, TPU); None elsewhere (CPU)."""
    import jax

    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


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


def peak_tflops(given: float | None, backend: str, device_kind: str, dtype: Any,
                n_devices: int = 1) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device, where it came from)."""
    import jax.numpy as jnp

    if given:
        return given, "--peak-tflops"
    if backend == "cpu":
        whole = measured_matmul_peak()
        share = f", shared by {n_devices} simulated devices" if n_devices > 1 else ""
        return whole / n_devices, f"measured: float32 matmul 2048x2048x2048 on this CPU (all cores{share})"
    from scaling_grid.trainer.peaks import device_peak_tflops
    low = jnp.dtype(dtype).itemsize < 4
    peak = device_peak_tflops(device_kind, dtype)
    if peak is not None:
        return peak, f"vendor dense peak for {device_kind} ({'bf16' if low else 'fp32'})"
    return None, f"unknown device kind {device_kind!r}: pass --peak-tflops (one device's peak) for MFU"


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
