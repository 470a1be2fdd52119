"""Learning-rate transfer under model.param = sp | mup | completep (issue 11, "Fair learning rates").

An lr sweep (powers of 2) at two widths (fixed depth) and at two depths (fixed width), for each
parametrization, on the embedded Shakespeare corpus (bytes), with trainer.step.build: one compiled
step per (param, shape), the lr arriving as a table. Prints one JSON line per run (param, width,
depth, lr, final eval loss), then a summary: the best lr per (param, shape) and by how many sweep
steps it moves between the two widths and between the two depths.

    python benchmarks/lr_transfer.py                  # the recorded sweep: 84 runs, 22 min on a shared
                                                      # 2-core CPU, about half of it compiling 12 shapes
    python benchmarks/lr_transfer.py --steps 100 --lrs -9 -7 -5   # a quick look

The base shape (base_width, base_depth) is the smaller shape, as in practice: tune small, transfer up.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from scaling_grid.trainer.config import OptimConfig
from scaling_grid.trainer.model import Arch, resolve_variant
from scaling_grid.trainer.sources import shakespeare_documents
from scaling_grid.trainer.step import build, lr_table


def corpus(val_docs: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of the plays: the last ``val_docs`` documents are the validation text."""
    docs = shakespeare_documents()
    enc = [np.frombuffer(d.encode(), np.uint8).astype(np.int32) for d in docs]
    return np.concatenate(enc[:-val_docs]), np.concatenate(enc[-val_docs:])


def windows(text: np.ndarray, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    starts = rng.integers(0, len(text) - length, n)
    return text[starts[:, None] + np.arange(length)]


def run_shape(param: str, width: int, depth: int, lrs: list[float], a: argparse.Namespace,
              train_text: np.ndarray, val_BT1: np.ndarray) -> list[dict]:
    arch = Arch(resolve_variant(a.variant), 256, width, depth, width // a.head_dim, a.seq_len, param=param,
                base_width=a.base_width, base_depth=a.base_depth)
    optim = OptimConfig(lr=1.0, warmup_steps=a.warmup, schedule="cosine", final_lr_ratio=0.1)
    steps = build(arch, optim)
    k = a.chunk
    # The same batches for every lr and shape: the batch at step s depends on s only.
    seqs = windows(train_text, a.steps * a.batch, a.seq_len + 1, np.random.default_rng(a.seed))
    seqs = seqs.reshape(a.steps // k, k, a.batch, a.seq_len + 1)
    out = []
    for lr in lrs:
        table = jnp.asarray(lr_table(OptimConfig(lr=lr, warmup_steps=a.warmup, schedule="cosine",
                                                 final_lr_ratio=0.1), a.steps))
        state = steps.init(jax.random.key(a.seed))
        t0 = time.time()
        for c in range(a.steps // k):
            state, metrics = steps.train(state, seqs[c, ..., :-1], seqs[c, ..., 1:], table[c * k:])
        loss = float(np.mean(np.asarray(steps.eval(state.params, val_BT1))))
        train = float(np.asarray(metrics["loss"])[-1])
        row = {"param": param, "width": width, "depth": depth, "lr": lr, "log2_lr": round(math.log2(lr)),
               "eval_loss": round(loss, 4) if math.isfinite(loss) else None, "train_loss": round(train, 4),
               "seconds": round(time.time() - t0, 2)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def best(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["eval_loss"] is not None]
    return min(ok, key=lambda r: r["eval_loss"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", nargs="+", default=["sp", "mup", "completep"])
    p.add_argument("--lrs", nargs="+", type=int, default=[-10, -9, -8, -7, -6, -5, -4], help="log2 of the lrs")
    p.add_argument("--widths", nargs=2, type=int, default=[32, 128], help="the width pair, at --width-depth")
    p.add_argument("--width-depth", type=int, default=2)
    p.add_argument("--depths", nargs=2, type=int, default=[2, 8], help="the depth pair, at --depth-width")
    p.add_argument("--depth-width", type=int, default=64)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--base-depth", type=int, default=2)
    p.add_argument("--variant", default="llama")
    p.add_argument("--head-dim", type=int, default=8, help="heads = width / head_dim (the grids' rule)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--chunk", type=int, default=10, help="optimizer steps per compiled call")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    assert a.steps % a.chunk == 0
    lrs = [2.0 ** e for e in a.lrs]
    train_text, val_text = corpus()
    val_BT1 = windows(val_text, 64, a.seq_len + 1, np.random.default_rng(1234))
    print(f"# {jax.default_backend()} x{jax.device_count()}; {a.variant}, seq {a.seq_len}, batch {a.batch}, "
          f"{a.steps} steps (cosine, warmup {a.warmup}), base shape w{a.base_width} d{a.base_depth}", flush=True)
    t0 = time.time()
    shapes = [(w, a.width_depth) for w in a.widths] + [(a.depth_width, d) for d in a.depths]
    shapes = list(dict.fromkeys(shapes))
    results: dict[tuple[str, int, int], list[dict]] = {}
    for param in a.params:
        for w, d in shapes:
            results[param, w, d] = run_shape(param, w, d, lrs, a, train_text, val_BT1)
    print(f"# wall time {time.time() - t0:.0f} s", flush=True)

    summary = []
    print("\n| param | shape | best log2 lr (eval loss) | other shape | best log2 lr (eval loss) "
          "| moved (sweep steps) |")
    print("|---|---|---|---|---|---|")
    for param in a.params:
        for what, (s1, s2) in (("width", ((a.widths[0], a.width_depth), (a.widths[1], a.width_depth))),
                               ("depth", ((a.depth_width, a.depths[0]), (a.depth_width, a.depths[1])))):
            b1, b2 = best(results[(param, *s1)]), best(results[(param, *s2)])
            moved = b2["log2_lr"] - b1["log2_lr"]
            edge = [f"w{s[0]}d{s[1]}" for s, b in ((s1, b1), (s2, b2)) if b["log2_lr"] in (min(a.lrs), max(a.lrs))]
            summary.append({"param": param, "axis": what, "shapes": [s1, s2],
                            "best_log2_lr": [b1["log2_lr"], b2["log2_lr"]],
                            "eval_loss": [b1["eval_loss"], b2["eval_loss"]], "moved_steps": moved,
                            "at_sweep_edge": edge})
            at_edge = f" (edge: {', '.join(edge)})" if edge else ""
            print(f"| {param} | w{s1[0]} d{s1[1]} | {b1['log2_lr']} ({b1['eval_loss']}) | w{s2[0]} d{s2[1]} | "
                  f"{b2['log2_lr']} ({b2['eval_loss']}) | {moved:+d}{at_edge} |")
    for s in summary:
        print(json.dumps({"summary": s}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
