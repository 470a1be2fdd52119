"""Vendor peak FLOP/s per device, for MFU: in `scaling-grid train`'s log lines and in
benchmarks/throughput.py. Model FLOPs per token (model.flops_per_token) x tokens/s over the peak of
every device the run uses; a device kind not in the table has no MFU (never a guessed one).
"""
from __future__ import annotations

from typing import Any

# Vendor dense (no sparsity) peaks in TFLOP/s per device, by the exact device_kind JAX reports:
# (bf16/fp16 tensor cores, fp32 without TF32). TPUs run float32 matmuls as bf16 passes by default,
# so their fp32 entry is the bf16 peak. Sources: NVIDIA's H100/H200/A100/L4/L40S/A10 datasheets,
# Google Cloud's TPU system-architecture pages; TPU v5p reports "TPU v5" on some runtimes.
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "NVIDIA H100 80GB HBM3": (989.4, 66.9),     # SXM5
    "NVIDIA H100 PCIe": (756.0, 51.2),
    "NVIDIA H100 NVL": (835.0, 60.0),
    "NVIDIA H200": (989.4, 66.9),               # SXM; an H200 NVL reports the same kind: --peak-tflops 835
    "NVIDIA A100-SXM4-80GB": (312.0, 19.5),
    "NVIDIA A100-SXM4-40GB": (312.0, 19.5),
    "NVIDIA A100 80GB PCIe": (312.0, 19.5),
    "NVIDIA A100-PCIE-40GB": (312.0, 19.5),
    "NVIDIA L4": (121.0, 30.3),
    "NVIDIA L40S": (362.05, 91.6),
    "NVIDIA A10": (125.0, 31.2),
    "TPU v3": (123.0, 123.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5e": (197.0, 197.0),
    "TPU v5": (459.0, 459.0),
    "TPU v5p": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),
    "TPU v6e": (918.0, 918.0),
}


def device_peak_tflops(device_kind: str, dtype: Any) -> float | None:
    """One device's dense peak TFLOP/s for matmuls in ``dtype`` (bf16/fp16: the tensor-core peak;
    float32: without TF32), by the exact kind JAX reports; None for a kind not in the table (CPUs too)."""
    import numpy as np
    if device_kind not in PEAK_TFLOPS:
        return None
    p16, p32 = PEAK_TFLOPS[device_kind]
    return p16 if np.dtype(dtype).itemsize < 4 else p32


def peak_flops(devices: Any, dtype: Any) -> float | None:
    """The summed peak FLOP/s of these devices (a run's mesh), or None if any kind is unknown."""
    peaks = [device_peak_tflops(d.device_kind, dtype) for d in devices]
    return None if not peaks or any(p is None for p in peaks) else 1e12 * sum(p for p in peaks if p is not None)
