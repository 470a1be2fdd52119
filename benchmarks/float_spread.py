"""How far two computations that are equal up to float reordering drift apart, and how far a real bug
moves the same numbers: the evidence behind the tests' tolerances (tests/grid/test_pack.py and friends).

For each trial, four runs of the packed grid test's shape (gpt2, width 16, depth 1, seq 16, batch 4,
224 steps, 4 steps per call; two seeds x two peak lrs, warmup 10%, cosine) train alone and as one pack
of 4 (`step.build(pack=4)`, a vmapped step), on the same batches. Printed per metric: the largest
relative and absolute difference over every step of every run, and the same for the bug references
(one run with one update lost halfway (lr 0 there) and at step 20; and one with the data of the middle step replaced
by the next step's). One JSON line per trial, then a summary line:

    python benchmarks/float_spread.py --trials 5
    python benchmarks/float_spread.py --trials 5 --load 2   # with 2 busy processes beside it
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _busy() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--load", type=int, default=0, help="busy processes to run beside the measurement")
    ap.add_argument("--steps", type=int, default=224)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=0.1, help="warmup steps as a fraction of --steps")
    args = ap.parse_args()
    busy = [mp.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    import jax
    import numpy as np

    from scaling_grid.trainer import config as C
    from scaling_grid.trainer import step, tokenstore
    from scaling_grid.trainer.model import make_arch

    root = tempfile.mkdtemp()
    base = C.RunConfig(model=C.ModelConfig(variant="gpt2", width=args.width, depth=args.depth, heads=2, seq_len=16),
                       data=C.DataConfig(root=root),
                       optim=C.OptimConfig(lr=3e-3, warmup_steps=max(1, round(args.warmup * args.steps))),
                       train=C.TrainConfig(batch_size=4, tokens=4 * 16 * args.steps, steps_per_call=4))
    store = tokenstore.prepare(base.data, progress=False)
    arch = make_arch(base.model, store.vocab_size)
    lane = step.build(arch, base.optim)
    pack = step.build(arch, base.optim, pack=4, lane=lane)
    S, k, B, T = args.steps, 4, 4, 16

    def batches(seed: int, swap_at: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        order = list(range(S))
        if swap_at is not None:
            order[swap_at] = swap_at + 1
        xy = [store.batch(seed, s, B, T) for s in order]
        return np.stack([x for x, _ in xy]), np.stack([y for _, y in xy])

    def alone(seed: int, cfg: C.RunConfig, lose_at: int | None = None, swap_at: int | None = None) -> dict:
        lrs = step.lr_table(cfg.optim, S)
        if lose_at is not None:
            lrs[lose_at] = 0.0
        x, y = batches(seed, swap_at)
        state, out = lane.init(jax.random.key(seed)), []
        for c in range(0, S, k):
            state, m = lane.train(state, x[c:c + k], y[c:c + k], lrs)
            out.append(m)
        return {f: np.concatenate([np.asarray(m[f]) for m in out]) for f in ("loss", "grad_norm")}

    def packed(seeds: list[int], cfgs: list[C.RunConfig]) -> list[dict]:
        lrs = np.stack([step.lr_table(c.optim, S) for c in cfgs])
        xs, ys = zip(*(batches(s) for s in seeds))
        x, y = np.stack(xs), np.stack(ys)
        out: list = []
        state = pack.stack([lane.init(jax.random.key(s)) for s in seeds])
        for c in range(0, S, k):
            state, m = pack.train(state, x[:, c:c + k], y[:, c:c + k], lrs)
            out.append(m)
        return [{f: np.concatenate([np.asarray(m[f][i]) for m in out]) for f in ("loss", "grad_norm")}
                for i in range(4)]

    def diff(a: dict, b: dict, start: int = 0) -> dict:
        return {f: {"rel": float(np.max(np.abs(a[f][start:] - b[f][start:]) / np.abs(b[f][start:]))),
                    "abs": float(np.max(np.abs(a[f][start:] - b[f][start:])))} for f in a}

    def first(curves: dict, n: int) -> dict:
        return {f: v[:n] for f, v in curves.items()}

    def worst(ds: list[dict]) -> dict:
        return {f: {q: max(d[f][q] for d in ds) for q in ("rel", "abs")} for f in ds[0]}

    summary: dict[str, list[dict]] = {"packed_vs_alone": [], "alone_twice": [], "lost_update": [], "swapped_batch": [],
                                      "lost_update_at_20": []}
    by_steps: dict[int, list[dict]] = {}
    for trial in range(args.trials):
        t0 = time.perf_counter()
        seeds = [10 * trial + i for i in (0, 1, 0, 1)]
        cfgs = [dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=lr))
                for lr in (3e-3, 3e-3, 1e-3, 1e-3)]
        ref = [alone(s, c) for s, c in zip(seeds, cfgs)]
        again = alone(seeds[0], cfgs[0])
        got = packed(seeds, cfgs)
        line = {"trial": trial, "load": args.load,
                "packed_vs_alone": worst([diff(g, r) for g, r in zip(got, ref)]),
                "packed_vs_alone_by_steps": {n: worst([diff(first(g, n), first(r, n)) for g, r in zip(got, ref)])
                                             for n in (16, 32, 64, 96, 128, 160, S) if n <= S},
                "alone_twice": diff(again, ref[0]),
                # bugs, measured from the step after they happen
                "lost_update": diff(alone(seeds[0], cfgs[0], lose_at=S // 2), ref[0], start=S // 2 + 1),
                "swapped_batch": diff(alone(seeds[0], cfgs[0], swap_at=S // 2), ref[0], start=S // 2 + 1),
                "lost_update_at_20": diff(alone(seeds[0], cfgs[0], lose_at=20), ref[0], start=21),
                "seconds": round(time.perf_counter() - t0, 1)}
        for key in summary:
            summary[key].append(line[key])
        for n, d in line["packed_vs_alone_by_steps"].items():
            by_steps.setdefault(n, []).append(d)
        print(json.dumps(line), flush=True)
    print(json.dumps({"summary": {key: worst(v) for key, v in summary.items()},
                      "packed_vs_alone_by_steps": {n: worst(v) for n, v in by_steps.items()},
                      "trials": args.trials, "load": args.load, "shape": vars(args)}))


if __name__ == "__main__":
    main()
