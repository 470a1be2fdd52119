"""Predictions of a fitted law at new points, with intervals from the bootstrap draws.

A fit's JSON keeps, per variant, the parameters and the bootstrap draws (``bootstrap.draws``); the
law is re-read from its formula. At each point the prediction is the law at the fitted parameters and
the interval the percentile interval of the law over the draws:

- ``law`` (default): the uncertainty of the fitted law's value at the point (what the fit knows);
- ``run``: that, plus the scatter of one run about the law: each draw is multiplied by a relative
  residual of the fit drawn at random (inflated by sqrt(n / (n - P)) for the parameters fitted),
  ``Lhat / (1 - r)``. Use it to ask whether a single new run's loss is where the fit expects it.

Output columns: the input's, then ``variant``, ``prediction``, ``lo``, ``hi`` and, when the input has
losses, ``actual``, ``rel_error`` = (actual - prediction) / actual and ``inside`` (lo <= actual <= hi).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import laws as LW
from .columns import LOSSES, as_bool, as_str, check_table, law_variables, pick_column
from .errors import AnalysisError
from .laws import Law

if TYPE_CHECKING:
    from .results import FitResult

INTERVALS = ("law", "run")


@dataclass
class VariantModel:
    theta: np.ndarray          # (P,)
    draws: np.ndarray          # (B, P)
    residuals: np.ndarray      # relative residuals (L - Lhat)/L of the fitted points


@dataclass
class Predictor:
    """What predictions need from a fit: the law, how its variables were read, and per variant the
    parameters, the bootstrap draws and the residuals."""
    law: Law
    time: str | None
    depth_offset: float
    loss: str
    ci: float
    variants: dict[str, VariantModel]

    @classmethod
    def from_result(cls, result: FitResult) -> Predictor:
        o = result.options
        return cls(result.law, o.get("time"), float(o.get("depth_offset") or 0.0), o.get("loss", "eval"),
                   float(o["ci"]), {v: VariantModel(vf.theta, vf.samples, vf.residuals)
                                    for v, vf in result.variants.items()})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "the fit") -> Predictor:
        try:
            law_d, o = d["law"], d["options"]
            law = LW.get(law_d["name"]) if law_d["name"] in LW.names() else LW.parse(
                law_d["name"], law_d["formula"], law_d.get("description", ""))
            variants = {}
            for v, vd in d["variants"].items():
                names = vd["bootstrap"]["params"]
                if names != law.param_names:
                    raise AnalysisError(f"{source}: variant {v!r} stores draws of {names}, the law has "
                                        f"{law.param_names}")
                theta = np.array([_num(vd["params"][n]["value"]) if n in vd["params"] else
                                  _num(vd["exponents"][n]["value"]) for n in names])
                draws = np.array([[_num(x) for x in row] for row in vd["bootstrap"]["draws"]], float)
                draws = draws.reshape(-1, len(names))
                res = np.array([_num(x) for x in vd["residuals"].get("values", [])], float)
                variants[v] = VariantModel(theta, draws, res)
            return cls(law, o.get("time"), float(o.get("depth_offset") or 0.0), o.get("loss", "eval"),
                       float(o["ci"]), variants)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, AnalysisError):
                raise
            raise AnalysisError(f"{source} is not a scaling-grid fit JSON with bootstrap draws (missing or "
                                f"malformed {e}); write one with `scaling-grid fit ... --json FILE`") from None

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        p = Path(path)
        if not p.is_file():
            raise AnalysisError(f"fit file {str(p)!r} does not exist")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AnalysisError(f"fit file {str(p)!r} is not JSON ({e})") from None
        if not isinstance(d, dict) or not str(d.get("schema", "")).startswith("scaling-grid/fit/"):
            raise AnalysisError(f"fit file {str(p)!r} is not a scaling-grid fit (no schema "
                                f"'scaling-grid/fit/...'); write one with `scaling-grid fit ... --json FILE`")
        if d["schema"] == "scaling-grid/fit/1":
            raise AnalysisError(f"fit file {str(p)!r} was written before fits kept their bootstrap draws; "
                                f"refit with `scaling-grid fit ... --json FILE` to predict from it")
        return cls.from_dict(d, f"fit file {str(p)!r}")


def _num(x: Any) -> float:
    if x is None:
        return float("nan")
    if isinstance(x, str):
        return float(x)  # "inf" / "-inf", as the JSON writes them
    return float(x)


def law_interval(law: Law, theta: np.ndarray, draws: np.ndarray, V: dict[str, np.ndarray], ci: float,
                 kind: str = "law", residuals: np.ndarray | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, lo, hi) at the points V (n,): the law at theta, and the percentile interval of
    the law over the draws (B, P); ``kind`` "run" adds one run's scatter (module docstring)."""
    if kind not in INTERVALS:
        raise AnalysisError(f"interval={kind!r}: allowed: {', '.join(INTERVALS)}")
    with np.errstate(all="ignore"):
        pred = law.predict(theta, V)
        n = len(pred)
        if len(draws) < 2:
            nan = np.full(n, np.nan)
            return pred, nan, nan.copy()
        D = law.predict(draws, V)                               # (B, n)
        if kind == "run":
            r = np.asarray(residuals if residuals is not None else [], float)
            r = r[np.isfinite(r)]
            if len(r) < 2:
                raise AnalysisError("interval 'run' needs the fit's residuals; the fit has none")
            P = len(law.param_names)
            r = r * np.sqrt(len(r) / max(len(r) - P, 1))
            pick = np.random.default_rng(seed).integers(len(r), size=D.shape)
            D = D / (1 - r[pick])
    D = np.where(np.isfinite(D), D, np.nan)
    q = (1 - ci) / 2
    lo = np.nanquantile(D, q, axis=0, method="lower")
    hi = np.nanquantile(D, 1 - q, axis=0, method="higher")
    return pred, lo, hi


def score(actual: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, ci: float) -> dict[str, Any]:
    """Errors and interval coverage of predictions against actual losses (rows with a loss)."""
    ok = np.isfinite(actual)
    a, p = actual[ok], pred[ok]
    if not len(a):
        return {"n": 0}
    e = (a - p) / a
    inside = (lo[ok] <= a) & (a <= hi[ok])
    return {"n": int(len(a)), "mean_abs_rel_error": float(np.mean(np.abs(e))),
            "rms_rel_error": float(np.sqrt(np.mean(e ** 2))), "max_abs_rel_error": float(np.max(np.abs(e))),
            "mean_rel_error": float(np.mean(e)), "n_inside": int(inside.sum()),
            "fraction_inside": float(inside.mean()), "nominal": ci}


def _rows_to_predict(T: Mapping[str, np.ndarray], predictor: Predictor, points: str, where: str | None,
                     source_columns: Mapping[str, str] | None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, str], list[str]]:
    """The rows :func:`predict_table` predicts at (final points, ``where``, positive variables), the law's
    variables, {variable: column}, and notes on every row skipped."""
    n = len(next(iter(T.values())))
    keep = np.ones(n, bool)
    notes: list[str] = []
    if points not in ("final", "all"):
        raise AnalysisError(f"points={points!r}: allowed: final, all")
    if points == "final" and "is_final" in T:
        fin = as_bool(T["is_final"], "is_final")
        if not fin.all():
            notes.append(f"{int((~fin).sum())} row(s) that are not a run's final point skipped (--points all "
                         f"keeps them)")
        keep &= fin
    if where is not None:
        from .expr import evaluate
        m = evaluate(where, T, "--where")
        notes.append(f"--where {where}: {int((keep & ~m).sum())} row(s) removed")
        keep &= m
    V, cols, _, _, var_notes = law_variables(T, predictor.law, predictor.time, predictor.depth_offset, source_columns)
    notes += var_notes
    okv = np.ones(n, bool)
    for v, a in V.items():
        bad = keep & ~(np.isfinite(a) & (a > 0))
        if bad.any():
            notes.append(f"{int(bad.sum())} row(s) skipped: {v} (column {cols.get(v, v)!r}) is missing or not "
                         f"positive")
        okv &= np.isfinite(a) & (a > 0)
    keep &= okv
    rows = np.flatnonzero(keep)
    if not len(rows):
        raise AnalysisError("no row to predict: " + ("; ".join(notes) or "the table has no rows"))
    return rows, V, cols, notes


def predict_table(predictor: Predictor, table: Mapping[str, Iterable[Any]], *,
                  source_columns: Mapping[str, str] | None = None, input_columns: Iterable[str] | None = None,
                  ci: float | None = None, interval: str = "law", points: str = "final", where: str | None = None
                  ) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """Predict at every row of ``table`` (read as a fit reads it: schema names, ``--map`` applied).

    Rows: with an ``is_final`` column and ``points="final"``, only final rows; ``where`` filters
    further; rows whose variables are missing or not positive are skipped (and said). A row takes its
    ``variant`` column's fit; without one, a single-variant fit serves every row, and a fit of several
    variants predicts every row once per variant. Returns (output columns, notes, summary)."""
    T = check_table(table)
    law = predictor.law
    ci = predictor.ci if ci is None else float(ci)
    if not 0 < ci < 1:
        raise AnalysisError(f"ci={ci!r}: must be in (0, 1), e.g. 0.95")
    rows, V, cols, notes = _rows_to_predict(T, predictor, points, where, source_columns)
    loss_col = pick_column(T, LOSSES.get(predictor.loss, ("eval_loss", "loss")))
    actual = None
    if loss_col is not None and T[loss_col].dtype.kind in "fiu":
        actual = T[loss_col].astype(float)
    fitted = list(predictor.variants)
    if "variant" in T:
        var = as_str(T["variant"])
        unknown = sorted(set(var[rows].tolist()) - set(fitted))
        if unknown:
            raise AnalysisError(f"variant(s) {unknown} were not fitted; the fit has: {', '.join(fitted)}")
        pairs = [(i, str(var[i])) for i in rows]
    else:
        pairs = [(i, v) for i in rows for v in fitted]
    idx = np.array([i for i, _ in pairs])
    vv = np.array([v for _, v in pairs])
    pred, lo, hi = np.empty(len(idx)), np.empty(len(idx)), np.empty(len(idx))
    for v in dict.fromkeys(vv.tolist()):
        s = vv == v
        vm = predictor.variants[v]
        p, a, b = law_interval(law, vm.theta, vm.draws, {k: x[idx[s]] for k, x in V.items()}, ci, interval,
                               vm.residuals)
        pred[s], lo[s], hi[s] = p, a, b
    names = list(input_columns) if input_columns is not None else list(T)
    out: dict[str, np.ndarray] = {c: T[c][idx] for c in names if c in T and c != "variant"}
    out["variant"] = vv
    out.update(prediction=pred, lo=lo, hi=hi)
    summary: dict[str, Any] = {"n_rows": int(len(idx)), "ci": ci, "interval": interval, "columns": cols,
                               "n_draws": {v: int(len(predictor.variants[v].draws)) for v in set(vv.tolist())}}
    if actual is not None:
        act = actual[idx]
        with np.errstate(all="ignore"):
            out["actual"] = act
            out["rel_error"] = (act - pred) / act
            out["inside"] = np.where(np.isfinite(act), (lo <= act) & (act <= hi), False)
        summary.update(score(act, pred, lo, hi, ci))
        assert loss_col is not None  # actual came from it
        summary["loss_column"] = (source_columns or {}).get(loss_col, loss_col)
    return out, notes, summary


def heldout_predictions(law: Law, theta: np.ndarray, draws: np.ndarray, test_V: dict[str, np.ndarray],
                        actual: np.ndarray, rows_: np.ndarray, cells: np.ndarray, ci: float, condition: str,
                        kind: str = "law", residuals: np.ndarray | None = None) -> dict[str, Any]:
    """``fit --holdout``: the held-out points' predictions and their score, for the JSON. ``rows_``:
    each point's row in the table (0-based), ``cells`` its cell."""
    pred, lo, hi = law_interval(law, theta, draws, test_V, ci, kind, residuals)
    with np.errstate(all="ignore"):
        rel = (actual - pred) / actual
    rows = [{"row": int(rows_[i]), "cell": str(c), **{k: float(v[i]) for k, v in test_V.items()},
             "actual": float(actual[i]),
             "prediction": float(pred[i]), "lo": float(lo[i]), "hi": float(hi[i]), "rel_error": float(rel[i]),
             "inside": bool(lo[i] <= actual[i] <= hi[i])} for i, c in enumerate(cells)]
    return {"condition": condition, "interval": kind, "ci": ci, "rows": rows,
            "summary": score(actual, pred, lo, hi, ci)}
