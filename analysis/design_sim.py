"""The simulation check of a design (docs/design.md): synthetic grids drawn from the prior with the
noise, each fitted with the project's own fit and bootstrap (:func:`fit.run_fit`, final points, runs
resampled, a wsd trunk's branches together), scored by the realised width and the coverage of every
goal's percentile interval."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .design import Candidate, Prior, check_goals, goal_values
from .design_choose import rho_of, t_per_token
from .errors import AnalysisError
from .fit import run_fit

SIM_BOOT = 200   # bootstrap draws per simulated fit (the fit's default is 1000; 200 keep a check quick)


def synthetic_table(cells: Sequence[Candidate], prior: Prior, noise: float, rho: float,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One grid's final points drawn from the prior: log L = log f + sigma (sqrt(rho) z_trunk +
    sqrt(1 - rho) e_cell), the layout of a store export (a branch names its trunk in ``parent``)."""
    n = len(cells)
    m = np.array([c.width for c in cells], float)
    l = np.array([c.depth for c in cells], float)
    tau = np.array([c.tau for c in cells], float)
    f = prior.law.predict(prior.theta, {"tau": tau, "m": m, "l": l})
    groups = [c.trunk if c.trunk is not None else f"#{i}" for i, c in enumerate(cells)]
    _, g = np.unique(groups, return_inverse=True)
    eps = np.sqrt(rho) * rng.standard_normal(int(g.max()) + 1)[g] + np.sqrt(1 - rho) * rng.standard_normal(n)
    return {"variant": np.full(n, "sim"), "cell": np.array([f"c{i}" for i in range(n)]),
            "parent": np.array([c.trunk or "" for c in cells]), "seed": np.array([c.seed or 0 for c in cells]),
            "m": m, "l": l, "tau_lr": tau, "tokens": np.array([c.tokens for c in cells], float),
            "eval_loss": f * np.exp(noise * eps), "is_final": np.ones(n, bool)}


def simulate(cells: Sequence[Candidate], prior: Prior, goals: Sequence[str], draws: int = 20,
             noise: float | None = None, spent: Sequence[Candidate] = (), trunk_corr: float | None = None,
             n_boot: int = SIM_BOOT, seed: int = 0, ci: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per goal: the median realised interval width relative to the true value ("width"), the
    fraction of draws whose interval holds the truth ("coverage"), and how many draws were fitted
    ("n"; a draw the fit refuses counts as not covering)."""
    goals = check_goals(goals)
    allc = list(spent) + list(cells)
    sigma = prior.noise if noise is None else noise
    rho = rho_of(allc, trunk_corr)
    N_ref = max(12.0 * c.width ** 2 * c.depth for c in allc)
    truth = {g: float(goal_values(prior.law, prior.theta, g, N_ref, t_per_token(allc, prior))[0]) for g in goals}
    widths: dict[str, list[float]] = {g: [] for g in goals}
    covered = dict.fromkeys(goals, 0)
    failed = 0
    rng = np.random.default_rng(seed)
    for d in range(draws):
        table = synthetic_table(allc, prior, sigma, rho, rng)
        try:
            res = run_fit(table, prior.law, n_boot=n_boot, checks=False, seed=seed + d, ci=ci)
        except AnalysisError:
            failed += 1
            continue
        vf = next(iter(res.variants.values()))
        for g in goals:
            s = goal_values(prior.law, vf.samples, g, vf.ctx.N_ref or N_ref, vf.ctx.t_per_token)
            lo, hi = np.nanquantile(s, [(1 - ci) / 2, (1 + ci) / 2]) if np.isfinite(s).any() else (np.nan, np.nan)
            widths[g].append(float((hi - lo) / abs(truth[g])) if np.isfinite(hi - lo) else float("inf"))
            covered[g] += bool(lo <= truth[g] <= hi)
    return {g: {"truth": truth[g], "width": float(np.median(widths[g])) if widths[g] else float("nan"),
                "coverage": covered[g] / draws, "n": draws - failed, "draws": draws, "n_boot": n_boot}
            for g in goals}
