"""What this process computes on: the line `train` and `run` print first, and the warning for an
accelerator that JAX leaves unused."""
from __future__ import annotations

import os
from pathlib import Path

import jax


def backend_line() -> str:
    """'jax 0.10.2 on gpu: 8 x NVIDIA H100 80GB HBM3': what this process computes on, printed first by
    `train` and `run`, so a CPU-only jaxlib on a GPU machine shows at once. Initialises the backend:
    call it after jax.distributed.initialize."""
    devices = jax.devices()
    backend, n = jax.default_backend(), len(devices)
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    what = f"{n} device{'s' if n > 1 else ''} ({kinds})" if backend == "cpu" else f"{n} x {kinds}"
    line = f"jax {jax.__version__} on {backend}: {what}"
    if jax.process_count() > 1:
        line += f"; process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local"
    return line


def accelerator_unused() -> str | None:
    """A warning when JAX runs on the CPU of a machine with an accelerator it is not using (a CPU-only
    jaxlib, or one that failed to start it), else None. JAX_PLATFORMS=cpu says the CPU is intended."""
    if jax.default_backend() != "cpu" or os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return None
    if Path("/dev/nvidia0").exists():
        return ("an NVIDIA GPU is present (/dev/nvidia0) but JAX runs on the CPU: install a CUDA jaxlib "
                "(pip install -U 'jax[cuda12]'), or set JAX_PLATFORMS=cpu to say this is intended")
    if Path("/dev/accel0").exists():  # TPU v2-v4 (later ones use vfio, which other devices share)
        return ("a TPU is present but JAX runs on the CPU: install the TPU jaxlib (pip install -U 'jax[tpu]'), "
                "or set JAX_PLATFORMS=cpu to say this is intended")
    return None
