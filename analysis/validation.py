"""Checks of a fit against data it did not see, and of its sensitivity to exclusions.

- :func:`holdout_checks`: fit without the largest models / the longest times / one fold of runs,
  predict what was left out, report the relative error.
- :func:`exclusion_scan`: how the coefficients and derived quantities move as the highest-loss points,
  or the earliest times, are dropped.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import derived as dv
from .errors import AnalysisError
from .identify import check_identifiable
from .laws import Law
from .nonlinear import fit_law
from .objective import Objective
from .points import Points


def rel_residuals(law: Law, theta: np.ndarray, pts: Points) -> np.ndarray:
    return (pts.loss - law.predict(theta, pts.V)) / pts.loss


def holdout_checks(law: Law, pts: Points, theta: np.ndarray, objective: Objective, rng: np.random.Generator,
                   k_folds: int = 5) -> list[dict[str, Any]]:
    """Fit on part of the runs, predict the rest: largest models, longest times, k folds of runs."""
    out: list[dict[str, Any]] = []
    size = pts.extra.get("N") if "N" in pts.extra else None
    if size is None and "m" in pts.V and "l" in pts.V:
        size = 12 * pts.V["m"] ** 2 * pts.V["l"]
    splits: list[tuple[str, np.ndarray]] = []
    if size is not None:
        splits.append(("largest model (fit the smaller, predict the largest N)", size >= np.max(size) * (1 - 1e-9)))
    tv = law.time_var
    if tv is not None:
        t = pts.V[tv]
        q = np.quantile(t, 0.8)
        splits.append((f"longest times (fit {tv} < {q:.4g}, predict the rest)", t >= q))
    for name, test in splits:
        out.append(_holdout_one(law, pts, theta, objective, ~test, test, name))
    runs = np.unique(pts.run)
    if len(runs) >= 2 * k_folds:
        fold = rng.permutation(len(runs)) % k_folds
        fold_of = dict(zip(runs, fold))
        f = np.array([fold_of[r] for r in pts.run])
        errs, n_ok, reasons = [], 0, []
        for i in range(k_folds):
            r = _holdout_one(law, pts, theta, objective, f != i, f == i, "")
            if "skipped" in r:
                reasons.append(r["skipped"])
            else:
                errs.append(r["_err"])
                n_ok += 1
        if errs:
            e = np.concatenate(errs)
            out.append({"name": f"{k_folds}-fold over runs", "n_folds": n_ok, "n_test": int(len(e)),
                        "mean_abs_rel_error": float(np.mean(np.abs(e))),
                        "rms_rel_error": float(np.sqrt(np.mean(e ** 2))),
                        "max_abs_rel_error": float(np.max(np.abs(e)))})
        else:
            out.append({"name": f"{k_folds}-fold over runs", "skipped": "; ".join(reasons[:2])})
    for r in out:
        r.pop("_err", None)
    return out


def _holdout_one(law: Law, pts: Points, theta: np.ndarray, objective: Objective, train: np.ndarray, test: np.ndarray,
                 name: str) -> dict[str, Any]:
    if not np.any(test) or not np.any(train):
        return {"name": name, "skipped": "nothing to hold out"}
    tr = pts.subset(train)
    try:
        check_identifiable(law, tr)
        th, _ = fit_law(law, tr, objective, start=None if law.fixed else theta)
    except AnalysisError as e:
        return {"name": name, "skipped": f"the remaining points cannot constrain the law: {e}"}
    te = pts.subset(test)
    err = rel_residuals(law, th, te)
    return {"name": name, "n_train": int(train.sum()), "n_test": int(test.sum()),
            "mean_abs_rel_error": float(np.mean(np.abs(err))), "rms_rel_error": float(np.sqrt(np.mean(err ** 2))),
            "max_abs_rel_error": float(np.max(np.abs(err))), "mean_rel_error": float(np.mean(err)), "_err": err}


def exclusion_scan(law: Law, pts: Points, theta: np.ndarray, objective: Objective, ctx: dv.Context,
                   fractions: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)) -> list[dict[str, Any]]:
    """Refit after dropping the K highest-loss points, and after raising the minimum time."""
    out: list[dict[str, Any]] = []
    keys = ("m_over_l_star", "D_over_N_star")
    n = len(pts)
    order = np.argsort(-pts.loss, kind="stable")
    seen = set()
    rules: list[tuple[dict[str, float], np.ndarray]] = []
    for f in fractions:
        K = int(round(f * n))
        if K not in seen:
            seen.add(K)
            mask = np.ones(n, bool)
            mask[order[:K]] = False
            rules.append(({"drop_highest": K}, mask))
    tv = law.time_var
    if tv is not None:
        ts = np.unique(pts.V[tv])
        for q in (0.25, 0.5):
            if len(ts) >= 4:
                tmin = float(ts[int(q * len(ts))])
                rules.append(({"min_tau": tmin}, pts.V[tv] >= tmin))
    for rule, mask in rules:
        row: dict[str, Any] = dict(rule)
        row["n_points"] = int(mask.sum())
        sub = pts.subset(mask)
        try:
            check_identifiable(law, sub)
            th, _ = fit_law(law, sub, objective, start=None if law.fixed else theta)
        except AnalysisError as e:
            row["skipped"] = str(e)
            out.append(row)
            continue
        row["params"] = dict(zip(law.param_names, map(float, th)))
        sc, _ = dv.derived(law, th, ctx)
        for k in keys:
            if k in sc:
                row[k] = float(sc[k][0])
        out.append(row)
    return out
