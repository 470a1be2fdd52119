"""bf16 against float32: the same model trained the same steps on the same text, from the same init.

Prepares the embedded Shakespeare with the chosen tokenizer (offline), then trains one model twice
with the tool's own compiled step (``trainer.step.build``): compute dtype float32, then bfloat16
(parameters and Adam's moments float32 in both). Same initial parameters, same batches (the batch at
step s is a function of (seed, s)), same warmup + cosine schedule. Prints one JSON line per dtype (the
loss curve's start and end, eval loss, step time) and a last line comparing the two curves.

    python benchmarks/precision.py                    # GPT-2 124M, seq 1024, batch 8, 200 steps
    python benchmarks/precision.py --width 64 --depth 2 --heads 2 --seq 64 --batch 4 --steps 20 \
        --tokenizer bytes                            # a CPU-sized smoke run

Times and losses are reported, never asserted (DESIGN.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="gpt2")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--tokenizer", default="gpt2", help="bytes | gpt2 (data.tokenizer)")
    ap.add_argument("--data-root", default=None, help="token stores go here (default: a temporary folder)")
    ap.add_argument("--attention", default="auto", help="model.attention for both runs")
    ap.add_argument("--remat", default="none", help="model.remat for both runs")
    ap.add_argument("--eval-batches", type=int, default=2)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.data_root is None:
        with tempfile.TemporaryDirectory() as root:
            return run(a, root)
    return run(a, a.data_root)


def run(a: argparse.Namespace, root: str) -> int:
    import jax
    import numpy as np

    from scaling_grid.trainer import step as step_lib
    from scaling_grid.trainer import tokenstore
    from scaling_grid.trainer.config import DataConfig, ModelConfig, OptimConfig
    from scaling_grid.trainer.model import make_arch, resolve_attention

    store = tokenstore.prepare(DataConfig(source="shakespeare", tokenizer=a.tokenizer, root=root), progress=False)
    optim = OptimConfig(lr=a.lr, warmup_steps=a.warmup)
    mcfg = ModelConfig(variant=a.variant, width=a.width, depth=a.depth, heads=a.heads, seq_len=a.seq,
                       attention=a.attention, remat=a.remat)
    val = store.val_set(a.eval_batches * a.batch, a.seq)
    curves: dict[str, np.ndarray] = {}
    for name in ("float32", "bfloat16"):
        arch = make_arch(mcfg, store.vocab_size, {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}[name])
        steps = step_lib.build(arch, optim)
        k = step_lib.default_steps_per_call(arch, a.batch)
        calls = -(-a.steps // k)
        lrs = jax.device_put(step_lib.lr_table(optim, a.steps, calls * k), steps.lr_sharding)
        state = steps.init(jax.random.key(0))
        losses: list[Any] = []
        t0 = time.perf_counter()
        for c in range(calls):
            xy = [store.batch(0, c * k + i, a.batch, a.seq) for i in range(k)]
            x, y = (jax.device_put(np.stack([b[j] for b in xy]), steps.batch_sharding) for j in (0, 1))
            state, metrics = steps.train(state, x, y, lrs)
            losses.append(metrics["loss"])
            if c == 0:
                jax.block_until_ready(metrics)
                first_s, t0 = time.perf_counter() - t0, time.perf_counter()  # compile + first call
        curve = np.concatenate([np.asarray(x) for x in jax.device_get(losses)])[:a.steps].astype(np.float64)
        steady_s = (time.perf_counter() - t0) / max((calls - 1) * k, 1)
        eval_loss = float(np.mean([np.asarray(steps.eval(state.params, jax.device_put(val[i:i + a.batch],
                                                                                     steps.eval_sharding))).mean()
                                   for i in range(0, len(val), a.batch)]))
        curves[name] = curve
        print(json.dumps(dict(dtype=name, variant=a.variant, width=a.width, depth=a.depth, seq=a.seq,
                              batch=a.batch, steps=a.steps, tokenizer=a.tokenizer, vocab=store.vocab_size,
                              attention=a.attention, attention_impl=resolve_attention(arch), remat=a.remat,
                              device_kind=jax.devices()[0].device_kind, n_devices=jax.device_count(),
                              loss_first=float(curve[0]), loss_last10=float(curve[-10:].mean()),
                              eval_loss=eval_loss, first_call_s=first_s, step_s=steady_s)), flush=True)
    f32, b16 = curves["float32"], curves["bfloat16"]
    gap = np.abs(b16 - f32)
    print(json.dumps(dict(compare="bfloat16 - float32", steps=a.steps, max_abs_diff=float(gap.max()),
                          mean_abs_diff=float(gap.mean()),
                          last10_diff=float(b16[-10:].mean() - f32[-10:].mean()),
                          last10_rel_diff=float((b16[-10:].mean() - f32[-10:].mean()) / f32[-10:].mean()))),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
