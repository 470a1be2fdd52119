"""Per-device memory of GPT-2-shaped train steps, from the target's own compiler (trainer/target.py): a
TPU topology through libtpu, or a GPU through XLA's GPU compiler and a target config; no chip needed
(the aot extra). One JSON line per (model, mesh, remat, attention):

    python benchmarks/memory_table.py --target tpu:v5e:2x4                        # 124M-1.3B x dp, fsdp
    python benchmarks/memory_table.py --target tpu:v5e:2x4 --models 1.3B --remat none full
    python benchmarks/memory_table.py --target gpu:h100 --models 124M --batch 16 --attention xla cudnn

Per device one sequence of --seq tokens (data parallel over every device, or FSDP over every device),
unless --batch gives the global batch; bf16 compute, float32 parameters and Adam moments, the scan over
blocks rolled (as `auto` resolves on an accelerator). "fits" is the compiler's word on TPU (a step that
does not fit fails there with RESOURCE_EXHAUSTED) and bytes <= the device's memory on GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import time

MODELS = {  # name: (width, depth, heads), GPT-3 paper shapes with head dim 64 (GPT-2 124M for the first)
    "124M": (768, 12, 12), "350M": (1024, 24, 16), "760M": (1536, 24, 24), "1.3B": (2048, 24, 32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="tpu:v5e:2x4, tpu:v4:2x2x2, gpu:h100, ...")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--meshes", nargs="+", default=["dp", "fsdp"], choices=["dp", "fsdp"])
    ap.add_argument("--remat", nargs="+", default=["none"], choices=["none", "full", "dots_saveable"])
    ap.add_argument("--attention", nargs="+", default=["xla"], choices=["xla", "splash", "cudnn"])
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=0, help="global batch (default: one sequence per device)")
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this host only compiles

    from scaling_grid.trainer import config as C
    from scaling_grid.trainer.target import compile_shape, parse_target
    target = parse_target(args.target)
    devices = target.devices()
    n = len(devices)
    for name in args.models:
        width, depth, heads = MODELS[name]
        for mesh in args.meshes:
            for remat in args.remat:
                for attention in args.attention:
                    cfg = C.RunConfig(
                        model=C.ModelConfig(width=width, depth=depth, heads=heads, seq_len=args.seq,
                                            remat=remat, attention=attention),
                        data=C.DataConfig(tokenizer="gpt2"),
                        mesh=C.MeshConfig(data=-1, fsdp=1) if mesh == "dp" else C.MeshConfig(data=1, fsdp=-1),
                        train=C.TrainConfig(batch_size=args.batch or n, tokens=(args.batch or n) * args.seq * 100))
                    t0 = time.perf_counter()
                    r = compile_shape(cfg, 50257, target, devices=devices, count_flops=False)
                    print(json.dumps({
                        "model": name, "target": target.name, "mesh": f"{mesh}{n}", "remat": remat,
                        "attention": attention, "global_batch": cfg.train.batch_size, "seq": args.seq,
                        "state_gib": round(r.state_bytes / 2**30, 3),
                        "temp_gib": None if r.temp_bytes is None else round(r.temp_bytes / 2**30, 3),
                        "total_gib": None if r.bytes_per_device is None else round(r.bytes_per_device / 2**30, 3),
                        "hbm_gib": round(target.hbm_bytes / 2**30, 2), "fits": r.fits, "error": r.error[:200],
                        "kernels": r.attention_kernel_calls, "compile_s": round(time.perf_counter() - t0, 1)}),
                        flush=True)


if __name__ == "__main__":
    main()
