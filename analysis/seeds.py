"""Seed replicates: the noise of one run's loss, measured (docs/science.md section 4, issue 23).

Replicates are points that differ only in seed: the same variant, the same value of every law
variable (tau/D, m, l, N) and the same peak lr, from two or more seeds. Their spread is the run-to-run
noise alone, where the fit's residuals also hold the law's misfit. :func:`seed_noise` pools it:
``sd = sqrt(sum over groups of sum (log L - group mean)^2 / sum (group size - 1))``, the pooled
within-group sd of log L (a relative spread: 0.01 is 1%). Points of one run along its curve
(``--points all``) are correlated across times, so the degrees of freedom are then overstated.

Where it is used: ``fit`` reports it beside the residual rms (terminal and JSON ``seed_noise``),
and with ``--points best-lr`` the bootstrap's lr selection draws its noise from it
(:func:`resampling.envelope_counts`) instead of from the fit's residuals. Without replicates nothing
changes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .points import Points


def seed_noise(pts: Points) -> dict[str, Any] | None:
    """``{sd, n_groups, n_points, dof, method}`` of the seed replicates among ``pts`` (module
    docstring); None when there are none (no seed column, or no two seeds at one point)."""
    if pts.seed is None or len(pts) < 2:
        return None
    cols = [pts.variant.astype(str)] + [np.asarray(pts.V[k], float).astype(str) for k in sorted(pts.V)]
    if "peak_lr" in pts.extra:
        cols.append(np.asarray(pts.extra["peak_lr"], float).astype(str))
    key = np.array(["|".join(k) for k in zip(*cols)], dtype=str)
    _, g = np.unique(key, return_inverse=True)
    y = np.log(np.asarray(pts.loss, float))
    seeds_per = np.array([len(np.unique(pts.seed[g == i])) for i in range(int(g.max()) + 1)])
    rep = seeds_per[g] >= 2
    if not rep.any():
        return None
    size = np.bincount(g[rep], minlength=len(seeds_per))
    mean = np.bincount(g[rep], weights=y[rep], minlength=len(seeds_per)) / np.maximum(size, 1)
    ss = float(np.sum((y[rep] - mean[g[rep]]) ** 2))
    n_groups = int(np.sum(size >= 2))
    dof = int(rep.sum()) - n_groups
    return {"sd": float(np.sqrt(ss / dof)), "n_groups": n_groups, "n_points": int(rep.sum()), "dof": dof,
            "method": "pooled within-group sd of log loss over points that differ only in seed (same variant, "
                      "law variables and peak lr)"}


def seed_noise_line(variant: str, noise: dict[str, Any], rms: float) -> str:
    """The terminal's sentence: the seed-to-seed spread beside the fit's residual rms."""
    return (f"seed-to-seed spread ({variant}): {100 * noise['sd']:.3g}% (pooled sd of log loss over "
            f"{noise['n_groups']} groups of seed replicates, {noise['dof']} df), beside the fit's residual "
            f"rms {100 * rms:.3g}% (noise plus the law's misfit)")
