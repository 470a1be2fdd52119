"""Fitting a law to every variant of a table, with uncertainty (docs/science.md section 3): the entry point.

:func:`run_fit` selects the points (selection.py), and for each variant :func:`fit_variant` checks
that the points can determine the law (identify.py), fits it under the chosen objective (objective.py,
linear.py, nonlinear.py) and bootstraps over runs (resampling.py, nonlinear.bootstrap), derives what the law implies
(derived.py), runs the held-out checks and the exclusion scan (validation.py), and with ``holdout``
predicts and scores the held-out points (predict.py). The result and its JSON are in results.py.

The names below were all defined here before the split and stay importable from here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import derived as dv
from .columns import check_table
from .compare import compare_variants, universality_across
from .errors import AnalysisError
from .identify import BOUND_REL, VAR_WORDS, check_identifiable, parameter_flags, term_text
from .laws import Law
from .linear import bootstrap_fixed, fit_fixed, nnls_normal_batch
from .nonlinear import bootstrap, fit_free, fit_law, one_thread, single_threaded_blas
from .objective import HUBER_DELTA, RESIDUALS, Objective, huber
from .points import Points
from .power import DRAWS as POWER_DRAWS
from .predict import INTERVALS, heldout_predictions
from .resampling import Draws, envelope_counts, run_counts
from .results import FitResult, VariantFit, interval, universality_targets, universality_test
from .seeds import seed_noise
from .selection import cells_of
from .validation import exclusion_scan, holdout_checks, rel_residuals

__all__ = ["BOUND_REL", "HUBER_DELTA", "RESIDUALS", "VAR_WORDS", "Draws", "FitResult", "Objective", "VariantFit",
           "bootstrap", "bootstrap_fixed", "check_identifiable", "envelope_counts", "exclusion_scan", "fit_fixed",
           "fit_free",
           "fit_law", "fit_variant", "holdout_checks", "huber", "interval", "nnls_normal_batch", "parameter_flags",
           "rel_residuals", "run_counts", "run_fit", "single_threaded_blas", "term_text", "universality_targets",
           "universality_test"]


def _estimate_warnings(law: Law, pts: Points, theta: np.ndarray, info: dict[str, Any], where: str) -> list[str]:
    """Raise when no term is measurable; warn when the optimiser did not converge."""
    warn: list[str] = []
    # nothing but the constant measurable: every other parameter would be reported from where the
    # optimiser stopped, so this is an error rather than a table of flags
    at_start = parameter_flags(law, theta, pts, np.empty((0, len(theta))))
    if all(at_start.get(t.coef, {}).get("flag") == "at_bound" for t in law.terms):
        raise AnalysisError(f"every term of law {law.name!r} is at its bound 0{where}: "
                            f"{', '.join(map(term_text, law.terms))} stay below {BOUND_REL:g} of the loss at "
                            f"every point, so the loss does not vary measurably with {', '.join(law.variables)} "
                            f"and {', '.join(p for p in law.param_names if p != law.constant)} cannot be "
                            f"determined")
    if not info.get("converged", True):
        dec = info.get("newton_decrement")
        warn.append(f"the optimiser did NOT converge: L-BFGS-B stopped with {info.get('stop', '?')!r}"
                    + (", also when retried from where it stopped" if info.get("retried") else "")
                    + (f", and a Newton step still predicts a decrease of {dec:.3g} in the objective "
                       f"({info['objective']:.3g})" if dec is not None else "")
                    + ": the values are where it stopped, not an optimum")
    return warn


def _bootstrap_draws(law: Law, pts: Points, theta: np.ndarray, n_boot: int, rng: np.random.Generator,
                     objective: Objective, where: str, warn: list[str]) -> tuple[np.ndarray, int, int]:
    """The bootstrap draws (samples, resamples discarded, resamples not converged); warnings appended
    to ``warn``."""
    n_runs = pts.n_runs
    if n_runs < 2 and n_boot > 0:
        raise AnalysisError(f"too few runs{where}: the bootstrap resamples whole runs and there is only {n_runs}")
    if n_runs < 10 and n_boot > 0:
        warn.append(f"only {n_runs} runs to resample: bootstrap intervals are rough")
    n_bad_opt = 0
    if n_boot > 0:
        samples, n_bad, n_bad_opt = bootstrap(law, pts, theta, n_boot, rng, objective)
        if n_bad > 0.05 * n_boot:
            warn.append(f"{n_bad} of {n_boot} bootstrap resamples could not identify every coefficient "
                        f"(too few distinct widths/depths/times among the drawn runs) and were discarded: "
                        f"the intervals are conditional on identifiable resamples")
        if n_bad_opt > 0.05 * len(samples):
            warn.append(f"the optimiser did not converge on {n_bad_opt} of {len(samples)} bootstrap resamples "
                        f"(kept: dropping them would narrow the intervals)")
    else:
        samples, n_bad = np.empty((0, len(theta))), 0
    if n_boot == 0:
        warn.append("n_boot = 0: no bootstrap, so no intervals (lo/hi are null)")
    return samples, n_bad, n_bad_opt


def _design_warnings(law: Law, pts: Points, theta: np.ndarray, samples: np.ndarray, ci: float,
                     sc: dict[str, np.ndarray], ctx: dv.Context) -> list[str]:
    """What the grid's design leaves loose: wide exponent intervals, too few widths or depths, shapes
    all near the optimal aspect ratio."""
    warn: list[str] = []
    for name in law.exp_names:
        if len(samples) >= 10:
            i = law.param_names.index(name)
            lo, hi = np.quantile(samples[:, i], [(1 - ci) / 2, (1 + ci) / 2])
            if hi - lo > abs(theta[i]):
                warn.append(f"{name} is poorly constrained by these points: {theta[i]:.3g} with interval "
                            f"[{lo:.3g}, {hi:.3g}], wider than the value itself")
    if {"m", "l"} <= set(law.variables):
        nm, nl = len(np.unique(pts.V["m"])), len(np.unique(pts.V["l"]))
        if nm < 3 or nl < 3:
            warn.append(f"grid design: {nm} widths and {nl} depths; at least 3 of each (varied independently, "
                        f"m/l spanning about x8) are needed to pin c_m against c_l")
    if "m_over_l_star" in sc and ctx.aspect is not None and law.fixed and np.isfinite(sc["m_over_l_star"][0]):
        x = ctx.aspect / sc["m_over_l_star"][0]
        lo5, hi5 = dv.penalty_band(0.05)
        if np.min(x) > lo5 and np.max(x) < hi5:
            warn.append("every shape lies within the 5% penalty band around the optimal aspect ratio: "
                        "such shapes carry little information about c_l against c_m")
    return warn


def fit_variant(law: Law, pts: Points, label: str, n_boot: int, rng: np.random.Generator,
                objective: Objective | None = None, ci: float = 0.95, checks: bool = True) -> VariantFit:
    objective = objective or Objective.for_law(law)
    where = f" (variant {label})" if label else ""
    warn = check_identifiable(law, pts, label)
    if pts.envelope is not None:   # best-lr: shapes whose best lr is the smallest or largest swept
        warn += pts.envelope.warnings()
    theta, info = fit_law(law, pts, objective)
    warn += _estimate_warnings(law, pts, theta, info, where)
    ctx = dv.make_context(law, pts, pts.time or "tau_lr")
    samples, n_bad, n_bad_opt = _bootstrap_draws(law, pts, theta, n_boot, rng, objective, where, warn)
    sc, fr = dv.derived(law, theta, ctx)
    warn += _design_warnings(law, pts, theta, samples, ci, sc, ctx)
    if len(samples):
        sc_b, fr_b = dv.derived(law, samples, ctx)
    else:
        sc_b = {k: np.empty(0) for k in sc}
        fr_b = {k: np.empty((0, v.shape[1])) for k, v in fr.items()}
    if fr and any(k.startswith("numerical_") for k in fr):
        if np.any(np.isnan(fr["numerical_N_star"][0])):
            warn.append("the numerical frontier's optimum lies outside the searched shapes at some "
                        "computes (left undefined)")
    for k, v in sc.items():
        if not np.all(np.isfinite(v)):
            warn.append(f"{k} is undefined or unbounded for the fitted coefficients")
    flags = parameter_flags(law, theta, pts, samples)
    warn += [f"{name} {f['flag'].replace('_', ' ')}: {f['meaning']}" for name, f in flags.items()]
    res = rel_residuals(law, theta, pts)
    vf = VariantFit(variant=label, law=law, points=pts, theta=theta, info=info, samples=samples,
                    n_boot_invalid=n_bad, ctx=ctx, derived=sc, frontier=fr, derived_samples=sc_b,
                    frontier_samples=fr_b, residuals=res, warnings=warn, ci=ci, flags=flags,
                    objective=objective, n_boot_not_converged=n_bad_opt, seed_noise=seed_noise(pts))
    if checks:
        vf.holdout = holdout_checks(law, pts, theta, objective, rng)
        vf.scan = exclusion_scan(law, pts, theta, objective, ctx)
    return vf


@one_thread
def run_fit(table: Mapping[str, Iterable[Any]], law: str | Law = "universality", loss: str = "eval",
            time: str | None = None, *, points: str = "final", min_tau: float | None = None, drop_highest: int = 0,
            exclude_variants: Iterable[str] = (), exclude_cells: Iterable[str] = (),
            variants: Iterable[str] | None = None, depth_offset: float = 0.0,
            nan_policy: str = "raise", huber_delta: float | None = HUBER_DELTA, residual: str | None = None,
            n_boot: int = 1000, ci: float = 0.95, seed: int = 0, checks: bool = True, where: str | None = None,
            holdout: str | None = None, holdout_interval: str = "law",
            source_columns: Mapping[str, str] | None = None, reference: str | None = None) -> FitResult:
    """Fit ``law`` (a registered name, a formula, or a Law) to every variant of ``table`` (see
    ``analysis/__init__.py`` for the options)."""
    from . import laws as L
    from .expr import evaluate
    from .expr import parse as parse_condition
    from .selection import select_points
    lw = L.get(law) if isinstance(law, str) else law
    if not 0 < ci < 1:
        raise AnalysisError(f"ci={ci!r}: must be in (0, 1), e.g. 0.95")
    if n_boot < 0:
        raise AnalysisError(f"n_boot={n_boot!r}: must be >= 0")
    objective = Objective.for_law(lw, residual, huber_delta)
    if holdout_interval not in INTERVALS:
        raise AnalysisError(f"holdout_interval={holdout_interval!r}: allowed: {', '.join(INTERVALS)}")
    for cond, what in ((where, "--where"), (holdout, "--holdout")):
        if cond is not None:
            parse_condition(cond, what)   # a bad condition costs nothing
    T = check_table(table)
    pts = select_points(T, lw, loss=loss, time=time, points=points, min_tau=min_tau,
                        drop_highest=drop_highest, exclude_variants=exclude_variants,
                        exclude_cells=exclude_cells, variants=variants, depth_offset=depth_offset,
                        nan_policy=nan_policy, where=where, source_columns=source_columns)
    if reference is not None and reference not in pts.variants:  # before the fit: a typo costs nothing
        raise AnalysisError(f"--reference {reference!r}: not a variant of the selected points (variants: "
                            f"{', '.join(map(str, pts.variants))})")
    held = np.zeros(len(pts), bool)
    if holdout is not None:
        held = evaluate(holdout, T, "--holdout")[pts.row]
        if not held.any():
            raise AnalysisError(f"--holdout {holdout!r} matches none of the {len(pts)} points selected for the fit")
        pts.exclusions.append({"rule": "holdout", "value": holdout, "n_points": int(held.sum()),
                               "cells": cells_of(pts.cell, held),
                               "detail": "held out of the fit, then predicted and scored"})
    rng = np.random.default_rng(seed)
    fits = {}
    for v in pts.variants:
        mine = pts.variant == v
        if holdout is not None and not (mine & ~held).any():
            raise AnalysisError(f"--holdout {holdout!r} holds out every point of variant {v!r}: nothing is "
                                f"left to fit it")
        train = pts.subset(mine & ~held)
        vf = fit_variant(lw, train, v, n_boot, np.random.default_rng(rng.integers(2 ** 63)), objective, ci, checks)
        if holdout is not None and (mine & held).any():
            test = pts.subset(mine & held)
            vf.heldout = heldout_predictions(lw, vf.theta, vf.samples, test.V, test.loss, test.row, test.cell,
                                             ci, holdout, holdout_interval, vf.residuals)
        fits[v] = vf
    options = {"law": lw.name, "formula": lw.formula, "loss": loss, "loss_column": pts.loss_name,
               "time": pts.time, "time_column": pts.time_name, "points": points, "min_tau": min_tau,
               "drop_highest": int(drop_highest), "exclude_variants": sorted(map(str, exclude_variants)),
               "exclude_cells": sorted(map(str, exclude_cells)),
               "variants": None if variants is None else sorted(map(str, variants)),
               "depth_offset": depth_offset, "nan_policy": nan_policy, "residual": objective.residual,
               "huber_delta": objective.delta, "where": where, "holdout": holdout,
               "holdout_interval": holdout_interval if holdout is not None else None,
               "n_boot": n_boot, "ci": ci, "seed": seed, "reference": reference}
    result = FitResult(lw, options, pts.notes, pts.exclusions, fits, objective, dict(pts.columns))
    # comparing variants (compare.py): differences against the reference, and whether the exponents
    # can be shared; the test refits free exponents, so checks=False (the inner refits) skips it
    result.comparison = compare_variants(result, reference)
    if checks and len(fits) >= 2:
        result.universality_across = universality_across(lw, {v: f.points for v, f in fits.items()}, ci,
                                                         starts={v: f.theta for v, f in fits.items()},
                                                         reference=result.comparison.get("reference"),
                                                         power_draws=POWER_DRAWS, seed=seed)
    return result
