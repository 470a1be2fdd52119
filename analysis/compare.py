"""Comparing variants (docs/science.md section 5): differences against a reference, and a cross-variant
universality test.

**Differences.** Each variant's bootstrap resamples only its own runs, from its own random stream
(``run_fit`` gives every variant a generator of its own), so the draws of two variants are
independent and draw i of B minus draw i of A is a draw of the difference's bootstrap distribution
(likewise the ratio). Every parameter of the law and every derived quantity present in both fits is
compared, plus L*(C) at one common compute, the largest of any variant's runs (a variant's own
frontier starts at its own largest compute, which differs between variants).

**Universality across variants.** The law with every exponent free (``L0 + c_tau/tau^alpha_tau +
c_m/m^alpha_m + c_l/l^alpha_l`` for the universality law) is fitted twice by least squares on
log L: once with the exponents shared by every variant (coefficients per variant), once with
exponents per variant. The shared model is nested in the per-variant one with
q = k (V - 1) fewer parameters (k exponents, V variants), so the extra-sum-of-squares F-test of
nested nonlinear regression applies:
``F = ((RSS_shared - RSS_separate) / q) / (RSS_separate / (n - p_separate))`` against F(q, n - p),
exact for a linear model with normal errors of one variance, asymptotic (small noise) otherwise.
Its false-rejection rate under shared exponents is checked in tests/analysis/test_compare.py. It
assumes independent points: several points per run (``--points all``) are correlated, which makes
it reject too often (a warning says so). The exponent differences are reported with Wald intervals
from the per-variant fits' Gauss-Newton covariance (pooled residual variance), the same
approximation the F-test makes, Bonferroni-corrected over all k (V - 1) differences so that the
set as a whole holds at the stated level.

The words and tables of both are in :mod:`compare_text`.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats
from scipy.optimize import minimize

from . import derived as dv
from .errors import AnalysisError
from .laws import Law, parse
from .nonlinear import LogSumExpProblem, fit_free, one_thread
from .objective import Objective
from .points import Points

if TYPE_CHECKING:
    from .results import FitResult, VariantFit

TEST_NAME = ("extra-sum-of-squares F-test (least squares on log L) of exponents shared across variants "
             "against exponents per variant")


# ------------------------------------------------------------------------------------------ differences
def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent draws of two variants, paired index by index (each keeps its own order); the
    longer is cut to the shorter (resamples discarded as unidentified make the counts differ)."""
    n = min(len(a), len(b))
    return a[:n], b[:n]


def _interval(value: float, draws: np.ndarray, ci: float, null: float) -> dict[str, Any]:
    from .results import interval
    iv = interval(value, draws, ci)
    key = "excludes_zero" if null == 0 else "excludes_one"
    iv[key] = bool(np.isfinite(iv["lo"]) and (iv["lo"] > null or iv["hi"] < null))
    return iv


def quantities(vf: VariantFit, C: float | None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(values, draws) of every parameter and derived scalar of one variant, plus ``L_star_at_C``
    (the closed-form L* at compute C) where the law gives a frontier."""
    law = vf.law
    vals = {n: float(vf.theta[i]) for i, n in enumerate(law.param_names)}
    draws = {n: vf.samples[:, i] for i, n in enumerate(law.param_names)}
    for k in vf.derived:
        vals[k] = float(vf.derived[k][0])
        draws[k] = np.asarray(vf.derived_samples[k], float)
    if C is not None and vf.ctx.C_ref is not None:
        ctx = replace(vf.ctx, C_ref=np.array([C]), flops=None)  # closed form only: the grid search is slow
        _, fr = dv.derived(law, vf.theta, ctx)
        if "L_star" in fr:
            vals["L_star_at_C"] = float(fr["L_star"][0, 0])
            draws["L_star_at_C"] = (dv.derived(law, vf.samples, ctx)[1]["L_star"][:, 0] if len(vf.samples)
                                    else np.empty(0))
    return vals, draws


def compare_variants(result: FitResult, reference: str | None = None) -> dict[str, Any]:
    """``{reference, C_for_L_star, interval, variants: {B: {quantity: {value, lo, hi, se, n,
    excludes_zero, ratio: {value, lo, hi, ..., excludes_one}}}}}``: each variant minus (and over)
    the reference, with bootstrap intervals (module docstring). {} with fewer than two variants."""
    fits = result.variants
    if len(fits) < 2:
        if reference is not None and reference not in fits:
            raise AnalysisError(f"--reference {reference!r}: not a fitted variant (fitted: {', '.join(fits)})")
        return {}
    ref = next(iter(fits)) if reference is None else reference
    if ref not in fits:
        raise AnalysisError(f"--reference {ref!r}: not a fitted variant (fitted: {', '.join(fits)})")
    ci = float(result.options.get("ci", 0.95))
    tops = [vf.ctx.C_data[1] for vf in fits.values() if vf.ctx.C_data is not None]
    C = max(tops) if tops else None
    qa, da = quantities(fits[ref], C)
    out: dict[str, Any] = {"reference": ref, "C_for_L_star": C,
                           "interval": f"{100 * ci:g}% percentile interval of (draw of variant - draw of the "
                                       f"reference); the draws resample each variant's runs independently",
                           "variants": {}}
    for v, vf in fits.items():
        if v == ref:
            continue
        qb, db = quantities(vf, C)
        rows: dict[str, Any] = {}
        for k in qa:
            if k not in qb:
                continue
            a, b = _pair(da[k], db[k])
            with np.errstate(divide="ignore", invalid="ignore"):
                row = _interval(qb[k] - qa[k], b - a, ci, 0.0)
                ratio = qb[k] / qa[k] if qa[k] != 0 else float("nan")
                row["ratio"] = _interval(ratio, b / a, ci, 1.0)
            rows[k] = row
        out["variants"][v] = rows
    return out


# ------------------------------------------------------------------------------ universality across variants
def free_law(law: Law) -> Law | None:
    """``law`` with every fixed exponent made a fitted one (``alpha_<var>``); tied exponents stay
    tied. None where two terms share a variable (the per-variable exponent would be ambiguous)."""
    if len({t.var for t in law.terms}) < len(law.terms) or not law.terms:
        return None
    parts = [law.constant]
    for t in law.terms:
        parts.append(f"{t.coef}/{t.var}^{t.exp_name or 'alpha_' + t.var}")
    return parse(f"{law.name}-free-exponents", " + ".join(parts))


def _term_of(law: Law, exp_name: str) -> int:
    """The index of the first term whose exponent is ``exp_name``."""
    return next(j for j, t in enumerate(law.terms) if t.exp_name == exp_name)


class _Joint:
    """Least squares on log L summed over variants, each variant's objective that of nonlinear.LogSumExpProblem;
    the exponents either shared (one set) or per variant. Parameter vector: per variant its log
    coefficients and log constant, then the exponents (one set, or one set per variant)."""

    def __init__(self, law: Law, parts: list[Points], shared: bool):
        obj = Objective("log", None)
        self.F = [LogSumExpProblem(law, p, obj) for p in parts]
        self.w = [np.ones(len(p)) for p in parts]
        self.nc = law.const_index + 1
        self.ne = len(law.exp_names)
        self.shared = shared
        self.V = len(parts)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        nc, ne = self.nc, self.ne
        base = self.V * nc
        return [np.concatenate([x[v * nc:(v + 1) * nc], x[base:base + ne] if self.shared
                                else x[base + v * ne:base + (v + 1) * ne]]) for v in range(self.V)]

    def join(self, ths: list[np.ndarray]) -> np.ndarray:
        nc = self.nc
        coefs = [th[:nc] for th in ths]
        exps = [np.mean([th[nc:] for th in ths], axis=0)] if self.shared else [th[nc:] for th in ths]
        return np.concatenate(coefs + exps)

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        nc, ne, base = self.nc, self.ne, self.V * self.nc
        f, g = 0.0, np.zeros_like(x)
        for v, (F, th) in enumerate(zip(self.F, self.split(x))):
            fv, gv = F.objective(th, self.w[v])
            f += fv
            g[v * nc:(v + 1) * nc] += gv[:nc]
            if self.shared:
                g[base:base + ne] += gv[nc:]
            else:
                g[base + v * ne:base + (v + 1) * ne] += gv[nc:]
        return f, g

    def fit(self, starts: list[np.ndarray]) -> tuple[np.ndarray, float]:
        best: tuple[np.ndarray, float] | None = None
        for x0 in starts:
            x = np.asarray(x0, float)
            prev = np.inf
            for _ in range(4):  # restart until it no longer moves (a fresh memory after a failed line search)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = minimize(self, x, jac=True, method="L-BFGS-B",
                                   options={"maxiter": 20000, "maxfun": 50000, "ftol": 1e-15, "gtol": 1e-12,
                                            "maxcor": 30})
                x = res.x
                if prev - res.fun <= 1e-13 * max(1.0, abs(res.fun)):
                    break
                prev = res.fun
            if best is None or res.fun < best[1]:
                best = (x, float(res.fun))
        assert best is not None
        return best

    def jacobian(self, v: int, th: np.ndarray) -> np.ndarray:
        """d log Lhat / d (log c..., log K, exponents) of variant v at its internal parameters."""
        F = self.F[v]
        alpha = F._alpha(th)
        Z = np.vstack([np.full(F.lx.shape[1], th[F.kc]), th[F.ci, None] - alpha[:, None] * F.lx])
        W = np.exp(Z - Z.max(0))
        W /= W.sum(0)
        J = np.zeros((F.lx.shape[1], len(th)))
        J[:, F.kc] = W[0]
        for j in range(F.k):
            J[:, F.ci[j]] += W[1 + j]
        for j, e in zip(F.free, F.free_idx):
            J[:, e] -= W[1 + j] * F.lx[j]
        return J


@one_thread
def universality_across(law: Law, parts: dict[str, Points], ci: float = 0.95, level: float = 0.05,
                        starts: dict[str, np.ndarray] | None = None, reference: str | None = None) -> dict[str, Any]:
    """The cross-variant universality test (module docstring) on the points of each variant:
    ``{test, statistic, df, p_value, level, rejected, verdict, rss_shared, rss_separate,
    shared_exponents, exponents, differences, warnings}``. {} with fewer than two variants or where
    the law cannot be given free exponents. ``starts``: {variant: the law's fitted parameters}, a
    warm start for the per-variant free fits (else a grid of starts). ``reference``: the variant the
    exponent differences are taken against (default the first), as in the difference table."""
    fl = free_law(law)
    if fl is None or len(parts) < 2 or not fl.exp_names:
        return {}
    names = list(parts)
    if reference in parts:
        names = [reference] + [v for v in names if v != reference]
    pts = [parts[v] for v in names]
    sep = _Joint(fl, pts, shared=False)
    obj = Objective("log", None)
    ths = []
    for v, p, F in zip(names, pts, sep.F):
        start = None
        if starts is not None and v in starts:   # the law's fit, its fixed exponents appended as free ones
            start = np.concatenate([np.asarray(starts[v], float)[:law.const_index + 1],
                                    [law.exponents(np.atleast_2d(starts[v]))[_term_of(fl, e)][0]
                                     for e in fl.exp_names]])
        theta, _ = fit_free(fl, p, obj, start=start)
        ths.append(F.from_params(theta))
    x1, f1 = sep.fit([sep.join(ths)])
    sh = _Joint(fl, pts, shared=True)
    # starts: the per-variant fits with their mean exponents, and with each variant's exponents
    tries = [sh.join(ths)] + [sh.join([np.concatenate([t[:sh.nc], th[sh.nc:]]) for t in ths]) for th in ths]
    x0, f0 = sh.fit(tries)
    n = sum(len(p) for p in pts)
    k, V = len(fl.exp_names), len(pts)
    p_sep = V * (sh.nc + k)
    q = k * (V - 1)
    rss1, rss0 = 2 * f1, 2 * max(f0, f1)   # the objective is sum r^2 / 2; the nested fit cannot do better
    dof = n - p_sep
    warn = []
    if dof < 1:
        return {"test": TEST_NAME, "skipped": f"{n} points for {p_sep} parameters: nothing is left to test with"}
    F_stat = ((rss0 - rss1) / q) / (rss1 / dof) if rss1 > 0 else float("inf")
    p_value = float(stats.f.sf(F_stat, q, dof))
    s2 = rss1 / dof
    exps: dict[str, dict[str, Any]] = {}
    # Bonferroni over every exponent and variant pair, so "excludes 0" anywhere in the set errs at
    # most 1 - ci of the time under shared exponents (the marginal intervals would err k (V-1) times as often)
    n_cmp = k * (V - 1)
    z = float(stats.t.ppf(1 - (1 - ci) / (2 * n_cmp), dof))
    for j, th in enumerate(sep.split(x1)):
        J = sep.jacobian(j, th)
        C = s2 * np.linalg.pinv(J.T @ J)
        exps[names[j]] = {e: {"value": float(th[sh.nc + i]), "se": float(np.sqrt(C[sh.nc + i, sh.nc + i]))}
                          for i, e in enumerate(fl.exp_names)}
    diffs: dict[str, dict[str, Any]] = {}
    ref = names[0]
    for v in names[1:]:
        diffs[v] = {}
        for e in fl.exp_names:
            d = exps[v][e]["value"] - exps[ref][e]["value"]
            se = float(np.hypot(exps[v][e]["se"], exps[ref][e]["se"]))
            lo, hi = d - z * se, d + z * se
            diffs[v][e] = {"value": d, "lo": lo, "hi": hi, "se": se, "excludes_zero": bool(lo > 0 or hi < 0)}
    runs = sum(p.n_runs for p in pts)
    if runs < n:
        warn.append(f"{n} points from {runs} runs: points of one run are correlated, which the F-test's "
                    f"degrees of freedom ignore, so it rejects too often")
    shared = dict(zip(fl.exp_names, map(float, x0[V * sh.nc:])))
    rejected = bool(p_value < level)
    return {"test": TEST_NAME, "law": fl.formula, "statistic": float(F_stat), "df": [q, dof], "p_value": p_value,
            "level": level, "rejected": rejected,
            "verdict": "rejected" if rejected else "consistent",
            "rss_shared": rss0, "rss_separate": rss1, "n_points": n, "shared_exponents": shared,
            "exponents": exps,
            "differences": {"reference": ref, "interval": f"Wald interval (Gauss-Newton covariance of the per-variant "
                                                          f"fits, pooled residual variance, t with {dof} df), "
                                                          f"{100 * ci:g}% jointly: Bonferroni over {n_cmp} "
                                                          f"differences", "variants": diffs},
            "warnings": warn}


