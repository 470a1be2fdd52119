"""Compile a run's train step for an accelerator that is not here: a TPU slice or an NVIDIA GPU.

The real compilers run without the hardware. libtpu describes a TPU topology (v4, v5e, v5p, v6e) and
compiles for it; the CUDA PJRT plugin compiles for a GPU described by a target config (the chip's
figures in protobuf text: ``targets/*.txtpb`` beside this file). Both need the ``aot`` extra
(``pip install -c constraints.txt '.[aot]'``), no chip, no driver and no CUDA libraries.

What comes back is the target's own answer, not the host's: memory per device from the target
compiler's memory analysis (a TPU compile that does not fit fails with RESOURCE_EXHAUSTED, quoted),
the attention kernel in the compiled program (splash custom calls, cuDNN fused attention or plain
dots), the collectives the partitioner chose with their element types, and the FLOPs per token XLA
counts. Timings, MFU and whether cuDNN accepts a graph at run time still need the hardware.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from .compile import memory_need
from .config import ConfigError, RunConfig
from .model import compute_dtype, flops_per_token, make_arch, non_embedding_formula, platform_of, resolve_attention
from .sharding import bytes_per_device, make_mesh
from .step import Steps, abstract_state, build, check_batch

GiB = 2**30
_SPECS = Path(__file__).parent / "targets"
INSTALL = "pip install -c constraints.txt '.[aot]'"

# TPU generations libtpu can describe: (chip config, device kind, HBM per device). v4 and v5p run two
# TensorCores as one device ("megacore"); their HBM per device is the chip's.
TPU_CHIPS = {
    "v4": ("megacore", 32 * GiB),
    "v5e": ("default", 16 * GiB),
    "v5p": ("megacore", 95 * GiB),
    "v6e": ("default", 32 * GiB),
}
# GPUs: the target config file and the device's memory (as the file states it).
GPU_CHIPS = {"h100": "h100_sxm.txtpb", "a100": "a100_sxm_80.txtpb"}
# The device kind each chip reports (trainer.peaks' key), for a target's peak FLOP/s.
DEVICE_KIND = {"v4": "TPU v4", "v5e": "TPU v5e", "v5p": "TPU v5p", "v6e": "TPU v6e",
               "h100": "NVIDIA H100 80GB HBM3", "a100": "NVIDIA A100-SXM4-80GB"}
GPU_HEADROOM = 0.9  # of a GPU's memory, as the launcher's memory check allows
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")


@dataclass(frozen=True)
class Target:
    """A chip and how many of it: ``tpu:v5e:2x4`` (a topology, chips along each axis) or ``gpu:h100``
    (one GPU; ``gpu:h100:8`` for eight on one host)."""
    name: str
    platform: str     # tpu | gpu
    chip: str         # v5e, h100, ...
    topology: str     # 2x4, 2x2x2 (TPU); the device count (GPU)
    hbm_bytes: int    # one device's memory

    @property
    def chips(self) -> int:
        """How many devices: the topology's product (TPU) or the count (GPU)."""
        return math.prod(int(x) for x in self.topology.split("x"))

    @property
    def peak_flops(self) -> float:
        """All the target's devices' dense bf16 peak, FLOP/s (the vendor's figure, trainer.peaks)."""
        from .peaks import PEAK_TFLOPS
        return 1e12 * PEAK_TFLOPS[DEVICE_KIND[self.chip]][0] * self.chips

    @property
    def extra_installed(self) -> bool:
        need = ("libtpu",) if self.platform == "tpu" else ("jax_plugins.xla_cuda12",)
        return all(importlib.util.find_spec(m) is not None for m in need)

    def devices(self) -> list[Any]:
        """The target's devices, described by its compiler (no chip needed); ConfigError naming the
        install line when the extra that brings the compiler is missing."""
        if not self.extra_installed:
            raise ConfigError(f"--target {self.name}: compiling for {self.platform.upper()} needs the aot extra: "
                              f"{INSTALL}")
        from jax.experimental import topologies
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")      # libtpu's machine-wide lock file
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no CUDA libraries: only compiling
        if self.platform == "tpu":
            dims = [int(x) for x in self.topology.split("x")]
            per_host = (2, 2, 1) if len(dims) == 2 or math.prod(dims) >= 4 else (*dims, 1)[:3]
            topo = topologies.get_topology_desc(
                platform="tpu", topology_name=f"{self.chip}:{self.topology}", chip_config_name=TPU_CHIPS[self.chip][0],
                chips_per_host_bounds=per_host, wrap=(False, False, False), num_slices=1)
        else:
            text = (_SPECS / GPU_CHIPS[self.chip]).read_text()
            topo = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{self.topology}", target_config=text)
        return list(topo.devices)


def parse_target(name: str) -> Target:
    """``tpu:CHIP:AxB[xC]`` or ``gpu:CHIP[:N]``; ConfigError listing what is known otherwise."""
    parts = name.lower().split(":")
    if parts[0] == "tpu" and len(parts) == 3 and parts[1] in TPU_CHIPS and re.fullmatch(r"\d+x\d+(x\d+)?", parts[2]):
        return Target(name, "tpu", parts[1], parts[2], TPU_CHIPS[parts[1]][1])
    if parts[0] == "gpu" and len(parts) in (2, 3) and parts[1] in GPU_CHIPS and (
            len(parts) == 2 or parts[2].isdigit() and int(parts[2]) > 0):
        n = parts[2] if len(parts) == 3 else "1"
        return Target(name, "gpu", parts[1], n, _gpu_memory(parts[1]))
    raise ConfigError(f"--target {name!r}: expected tpu:CHIP:TOPOLOGY (chips {', '.join(TPU_CHIPS)}; e.g. tpu:v5e:2x4, "
                      f"tpu:v4:2x2x1) or gpu:CHIP[:N] (chips {', '.join(GPU_CHIPS)}; e.g. gpu:h100, gpu:h100:8)")


@contextlib.contextmanager
def _cudnn_of(target: Target) -> Iterator[None]:
    """While tracing for a GPU target on a host without cuDNN: JAX asks the local cuDNN library for its
    version before it emits fused attention, and there is none here. Answer with the version the
    target's config names (dnn_version_info), so the traced program is the one a GPU host with that cuDNN
    would compile; whether cuDNN accepts the graph is still decided on the GPU at run time."""
    from jax._src.cudnn import fused_attention_stablehlo as fa
    try:
        fa.check_cudnn_version()
        local = True
    except Exception:  # noqa: BLE001 - no cuDNN library on this host (RuntimeError, OSError)
        local = False
    if target.platform != "gpu" or local:
        yield
        return
    text = (_SPECS / GPU_CHIPS[target.chip]).read_text()
    m = re.search(r"dnn_version_info\s*{\s*major:\s*(\d+)\s*minor:\s*(\d+)\s*patch:\s*(\d+)", text)
    version = int(m.group(1)) * 10000 + int(m.group(2)) * 100 + int(m.group(3)) if m else 90000
    real = fa.check_cudnn_version
    fa.check_cudnn_version = lambda: version
    try:
        yield
    finally:
        fa.check_cudnn_version = real


@contextlib.contextmanager
def _no_persistent_cache() -> Iterator[None]:
    """A program compiled for a target has no client here to load it back from JAX's persistent
    compilation cache (each lookup warns), and a cache entry of it is of no use to this host: skip it."""
    was = jax.config.jax_enable_compilation_cache  # type: ignore[attr-defined]
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", was)


def _gpu_memory(chip: str) -> int:
    m = re.search(r"device_memory_size:\s*(\d+)", (_SPECS / GPU_CHIPS[chip]).read_text())
    return int(m.group(1)) if m else 0


@dataclass
class ShapeReport:
    """One compiled shape on one target. Bytes are per device; None where the compiler gives none."""
    shape: str
    target: str
    devices: int
    mesh: dict[str, int]
    fits: bool
    bytes_per_device: int | None
    hbm_bytes_per_device: int
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    error: str = ""                       # the compiler's RESOURCE_EXHAUSTED message, when it refused
    flops_per_token_xla: float | None = None
    flops_per_token_formula: int = 0
    attention: str = ""                   # the kernel asked for, resolved for the target
    attention_kernel_calls: dict[str, int] = field(default_factory=dict)
    collectives: dict[str, dict[str, int]] = field(default_factory=dict)  # op -> {element type: count}
    state_bytes: int = 0                  # the train state's shard on one device (params, Adam moments)
    replicated_state_bytes: int = 0       # state leaves over 1 KiB that every device holds whole
    compile_s: float = 0.0


def shape_name(cfg: RunConfig, pack: int = 0, mesh: dict[str, int] | None = None) -> str:
    """'gpt2 w768 d12 T1024 B16 fsdp8 remat:full': what sets a compiled step apart, short."""
    m, t = cfg.model, cfg.train
    sizes = mesh or {a: getattr(cfg.mesh, a) for a in ("data", "fsdp", "tensor")}
    extra = [f"{a}{n}" for a, n in sizes.items() if n != 1] or ["data1"]
    extra += [f"pack{pack}"] if pack > 1 else []
    extra += [f"accum{t.grad_accum}"] if t.grad_accum > 1 else []
    extra += [f"k{t.steps_per_call}"] if t.steps_per_call > 1 else []
    extra += [f"attn:{m.attention}"] if m.attention != "auto" else []
    extra += [f"remat:{m.remat}"] if m.remat != "none" else []
    return " ".join([f"{m.variant} w{m.width} d{m.depth} T{m.seq_len} B{t.batch_size}", *extra])


def _lower(cfg: RunConfig, vocab: int, devices: list[Any], platform: str, table_len: int,
           pack: int) -> tuple[Any, Steps]:
    arch = make_arch(cfg.model, vocab, compute_dtype(cfg.train.dtype, platform))
    arch = dataclasses.replace(arch, platform=platform)
    mesh = make_mesh(cfg.mesh, devices)
    steps = build(arch, cfg.optim, cfg.train.grad_accum, mesh, pack=pack)
    t, lead = cfg.train, ((pack,) if pack > 1 else ())
    x = jax.ShapeDtypeStruct((*lead, t.steps_per_call, t.batch_size, cfg.model.seq_len), jnp.int32,
                             sharding=steps.batch_sharding)
    lrs = jax.ShapeDtypeStruct((*lead, table_len), jnp.float32, sharding=steps.lr_sharding)
    return steps.train.lower(abstract_state(steps), x, x, lrs), steps


def compile_shape(cfg: RunConfig, vocab: int, target: Target, table_len: int | None = None, pack: int = 0,
                  devices: list[Any] | None = None, count_flops: bool = True) -> ShapeReport:
    """Compile the train step of ``cfg`` (a pack of ``pack`` runs if > 1) on its mesh over the target's
    devices and report memory, kernels, collectives and FLOPs (``xla_flops_per_token``: TPU only)."""
    devices = devices or target.devices()
    platform = platform_of(devices)
    t = cfg.train
    sizes = check_batch(t.batch_size, t.grad_accum, mesh=cfg.mesh, n_devices=len(devices))
    table_len = table_len or cfg.steps
    arch = make_arch(cfg.model, vocab, compute_dtype(cfg.train.dtype, platform))
    report = ShapeReport(shape_name(cfg, pack, sizes), target.name, len(devices), sizes, True, None, target.hbm_bytes,
                         flops_per_token_formula=flops_per_token(arch, non_embedding_formula(arch)))
    t0 = time.perf_counter()
    with _cudnn_of(target), _no_persistent_cache():
        lowered, steps = _lower(cfg, vocab, devices, platform, table_len, pack)
    report.attention = resolve_attention(dataclasses.replace(arch, platform=platform))
    report.replicated_state_bytes = replicated_bytes(steps)
    report.state_bytes = bytes_per_device(abstract_state(steps), steps.state_sharding)
    try:
        with _no_persistent_cache():
            compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - the compiler's own word that it does not fit is an answer
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report.fits, report.error = False, _first_line(str(e), "RESOURCE_EXHAUSTED")
        report.compile_s = time.perf_counter() - t0
        return report
    report.compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    if ma is not None:
        report.argument_bytes, report.output_bytes = int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes)
        report.alias_bytes, report.temp_bytes = int(ma.alias_size_in_bytes), int(ma.temp_size_in_bytes)
        report.bytes_per_device = memory_need(compiled)
        # TPU: the compiler refused what does not fit (above). GPU: the launcher's headroom; JAX itself
        # preallocates 75% of the memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
        report.fits = target.platform == "tpu" or (report.bytes_per_device or 0) <= GPU_HEADROOM * target.hbm_bytes
    hlo = compiled.as_text()
    report.attention_kernel_calls = kernel_calls(hlo)
    report.collectives = collectives(hlo)
    if count_flops and target.platform == "tpu":  # XLA's GPU compiler gives no cost analysis for a target
        report.flops_per_token_xla = xla_flops_per_token(cfg, vocab, devices, platform, pack)
    return report


def xla_flops_per_token(cfg: RunConfig, vocab: int, devices: list[Any], platform: str, pack: int = 0) -> float | None:
    """FLOPs per token of one optimizer step as XLA counts them (all devices together; a pack's runs
    together); None where the compiler gives no cost analysis (GPU targets) or cannot fit the counting
    compile. XLA counts a loop's body once, so the count is taken from programs without loops over
    layers or shards: every block unrolled, one step per call, the micro-batch, XLA's attention (no
    custom kernel, whose FLOPs it cannot see) and data parallelism over every device (FSDP's windowed
    matmuls are loops too). Blocks are identical, so depth 1 and 2 are compiled and the count is
    extrapolated linearly in depth, which keeps the compile small whatever the model's depth."""
    t, n = cfg.train, len(devices)
    micro = t.batch_size // max(t.grad_accum, 1)
    batch = micro if micro % n == 0 else n

    def count(depth: int) -> float | None:
        one = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, depth=depth, unroll=depth,
                                           attention="xla" if cfg.model.attention in ("splash", "cudnn") else
                                           cfg.model.attention),
            mesh=dataclasses.replace(cfg.mesh, data=-1, fsdp=1, tensor=1),
            train=dataclasses.replace(t, steps_per_call=1, grad_accum=1, batch_size=batch))
        try:
            with _no_persistent_cache():
                costs = _lower(one, vocab, devices, platform, 1, pack)[0].compile().cost_analysis()
        except Exception as e:  # noqa: BLE001 - a counting program too large for the chip: no count
            if "RESOURCE_EXHAUSTED" in str(e):
                return None
            raise
        if isinstance(costs, list):
            costs = costs[0] if costs else None
        if not costs or "flops" not in costs:
            return None
        # cost_analysis is per device (SPMD: one program for all); the step's tokens are split over them
        return float(costs["flops"]) * n / (batch * cfg.model.seq_len)

    depth = cfg.model.depth
    if depth <= 2:
        return count(depth)
    f1, f2 = count(1), count(2)
    return None if f1 is None or f2 is None else f1 + (depth - 1) * (f2 - f1)


def replicated_bytes(steps: Steps, min_bytes: int = 1024) -> int:
    """Bytes of the train state held whole on every device, counting only leaves over ``min_bytes``
    (step counters and small vectors are replicated by design)."""
    state, total = abstract_state(steps), 0
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(steps.state_sharding)):
        nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
        if nbytes > min_bytes and sharding.is_fully_replicated and len(steps.mesh.devices.flat) > 1:
            total += nbytes
    return total


def kernel_calls(hlo: str) -> dict[str, int]:
    """Custom attention kernels in a compiled program: TPU Pallas (splash) and cuDNN fused attention."""
    return {"splash": hlo.count('custom_call_target="tpu_custom_call"'),
            "cudnn_fmha": len(re.findall(r'custom_call_target="__cudnn\$fmha', hlo))}


_COLLECTIVE = re.compile(r"=\s+(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """Collective ops in a compiled program by kind, with the element types they move (an async pair
    counts once, at its start)."""
    out: dict[str, Counter[str]] = {}
    for shape, op in _COLLECTIVE.findall(hlo):
        types = set(re.findall(r"\b([a-z]+[0-9]*(?:e[0-9]+m[0-9]+[a-z]*)?)\[", shape)) or {"?"}
        out.setdefault(op, Counter()).update(types)
    return {op: dict(sorted(c.items())) for op, c in sorted(out.items())}


def _first_line(text: str, marker: str) -> str:
    for line in text.splitlines():
        if marker in line:
            return line.strip()[:400]
    return text.strip().splitlines()[0][:400] if text.strip() else ""
