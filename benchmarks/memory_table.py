"""Per-device memory of GPT-2-shaped train steps under data parallelism and FSDP, from XLA's memory
analysis of the step compiled ahead of time (nothing is allocated, so it runs on this CPU with
simulated devices). One JSON line per (model, mesh):

    python benchmarks/memory_table.py                  # 124M, 350M, 760M, 1.3B x dp8, fsdp8, fsdp64
    python benchmarks/memory_table.py --models 124M --meshes fsdp8

Per device: a batch of 1 sequence of 1024 tokens, bf16 compute, float32 parameters and Adam moments,
the scan over blocks rolled (as on GPU/TPU, model.unroll=1). XLA's CPU backend plans temporaries
somewhat differently from GPU/TPU, so read the figures as estimates; the state's share is exact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

MODELS = {  # name: (width, depth, heads), GPT-3 paper shapes with head dim 64 (GPT-2 124M for the first)
    "124M": (768, 12, 12), "350M": (1024, 24, 16), "760M": (1536, 24, 24), "1.3B": (2048, 24, 32)}
MESHES = {"dp8": (8, {"data": 8, "fsdp": 1}), "fsdp8": (8, {"data": 1, "fsdp": 8}),
          "fsdp64": (64, {"data": 1, "fsdp": 64})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--remat", default=None, help="model.remat, where the model has it (none | full | ...)")
    args = ap.parse_args()
    devices = max(MESHES[m][0] for m in args.meshes)
    if "jax" not in sys.modules:  # the device count is fixed when JAX starts
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp

    from scaling_grid.trainer import sharding, step
    from scaling_grid.trainer.compile import memory_need
    from scaling_grid.trainer.config import MeshConfig, ModelConfig, OptimConfig
    from scaling_grid.trainer.model import make_arch

    for name in args.models:
        width, depth, heads = MODELS[name]
        extra = {"remat": args.remat} if args.remat else {}
        arch = make_arch(ModelConfig(width=width, depth=depth, heads=heads, seq_len=args.seq, unroll=1, **extra),
                         50257, jnp.bfloat16)
        for mesh_name in args.meshes:
            n, axes = MESHES[mesh_name]
            mesh = sharding.make_mesh(MeshConfig(**axes), jax.devices()[:n])
            steps = step.build(arch, OptimConfig(), 1, mesh)
            batch = sharding.batch_devices(mesh)  # one sequence per device
            x = jax.ShapeDtypeStruct((1, batch, args.seq), jnp.int32, sharding=steps.batch_sharding)
            lrs = jax.ShapeDtypeStruct((16,), jnp.float32, sharding=steps.lr_sharding)
            abstract = step.abstract_state(steps)
            compiled = steps.train.lower(abstract, x, x, lrs).compile()
            ma = compiled.memory_analysis()
            state = sharding.bytes_per_device(abstract, steps.state_sharding)
            total = memory_need(compiled) or 0
            n_params = sum(int(p.size) for p in jax.tree.leaves(abstract.params))
            print(json.dumps({
                "model": name, "params": n_params, "mesh": mesh_name, "devices": n, "global_batch": batch,
                "seq": args.seq, "state_gib": round(state / 2**30, 3),
                "temp_gib": round(ma.temp_size_in_bytes / 2**30, 3), "total_gib": round(total / 2**30, 3),
                "fits_16gib": total <= 0.9 * 16 * 2**30, "fits_32gib": total <= 0.9 * 32 * 2**30}), flush=True)


if __name__ == "__main__":
    main()
