"""Fit the fixed-exponent universality law to 10,000 points with 1,000 bootstrap refits over runs.

    /work/venv/bin/python benchmarks/fit_speed.py [--points 10000] [--boot 1000]

Prints JSON with wall seconds: the whole ``run_fit`` (selection, fit, bootstrap, derived quantities
with intervals, held-out checks, exclusion scan) and the bootstrap alone. Target: <= 10 s on the
project's 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def synthetic(n_points: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Constant-lr curves: 8 widths x 5 depths x seeds, 25 points per run, 0.5% noise."""
    rng = np.random.default_rng(seed)
    widths, depths, per_run = 2.0 ** np.arange(5, 13), np.array([2, 4, 8, 16, 32.0]), 25
    n_runs = max(1, n_points // per_run)
    shape = np.arange(n_runs) % (len(widths) * len(depths))
    m = np.repeat(widths[shape % len(widths)], per_run)
    l = np.repeat(depths[shape // len(widths)], per_run)
    run = np.repeat(np.arange(n_runs), per_run)
    tau = np.tile(np.geomspace(1, 100, per_run), n_runs)
    L = (0.8 + 0.6 * tau ** (-1 / 3) + 20 / m + 0.4 / l) * np.exp(0.005 * rng.standard_normal(len(m)))
    n = len(m)
    return {"variant": np.full(n, "gpt2"), "cell": np.array([f"m{a:g}_l{b:g}" for a, b in zip(m, l)]),
            "seed": run.astype(float), "m": m, "l": l, "tau_lr": tau, "tokens": tau / 3e-3 * 4096,
            "eval_loss": L}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--boot", type=int, default=1_000)
    args = ap.parse_args()
    from scaling_grid.analysis import laws
    from scaling_grid.analysis.fit import bootstrap, fit_fixed, run_fit
    from scaling_grid.analysis.selection import select_points

    table = synthetic(args.points)
    t0 = time.perf_counter()
    result = run_fit(table, "universality", n_boot=args.boot, seed=0)
    t_total = time.perf_counter() - t0

    law = laws.get("universality")
    pts = select_points(table, law)
    t1 = time.perf_counter()
    theta, info = fit_fixed(law, pts)
    t_fit = time.perf_counter() - t1
    t2 = time.perf_counter()
    samples, n_bad, _ = bootstrap(law, pts, theta, args.boot, np.random.default_rng(0))
    t_boot = time.perf_counter() - t2

    fit = result.variants["gpt2"]
    print(json.dumps({
        "benchmark": "fixed-exponent universality fit with bootstrap over runs",
        "n_points": len(pts), "n_runs": pts.n_runs, "n_boot": args.boot, "n_boot_discarded": n_bad,
        "wall_s_run_fit_total": round(t_total, 3),
        "wall_s_point_fit": round(t_fit, 3), "irls_iterations": info["iterations"],
        "wall_s_bootstrap": round(t_boot, 3),
        "c": {k: round(v, 5) for k, v in fit.params.items()},
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
