"""What a fit returns: per-variant results with intervals, the whole result, its JSON.

Intervals are percentile intervals of the bootstrap draws. The spread reported beside them, ``se``,
is a robust scale: 1.4826 x the median absolute deviation of the draws (the standard deviation for
normal draws), so a few runaway resamples (a coefficient that shoots off when the resample lacks
the points that pin it) do not inflate it; the raw standard deviation is not reported.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import derived as dv
from .laws import Law
from .objective import Objective
from .points import Points

SE_METHOD = ("1.4826 x the median absolute deviation of the bootstrap draws (a robust standard error: "
             "runaway resamples do not inflate it)")
UNIVERSAL = {"tau": 1 / 3, "D": 1 / 3, "m": 1.0, "l": 1.0}  # the universality class's exponents


def interval(value: float, samples: np.ndarray, ci: float) -> dict[str, Any]:
    """Percentile interval: {value, lo, hi, se (robust, module docstring), n}. Undefined (NaN) draws
    are dropped and counted."""
    s = np.asarray(samples, float)
    s_ok = s[~np.isnan(s)]
    q = (1 - ci) / 2
    out: dict[str, Any] = {"value": float(value)}
    if len(s_ok) >= 2:
        out["lo"] = float(np.quantile(s_ok, q, method="lower"))
        out["hi"] = float(np.quantile(s_ok, 1 - q, method="higher"))
        fin = s_ok[np.isfinite(s_ok)]
        out["se"] = float(1.4826 * np.median(np.abs(fin - np.median(fin)))) if len(fin) >= 2 else float("nan")
    else:
        out["lo"] = out["hi"] = out["se"] = float("nan")
    out["n"] = int(len(s_ok))
    if len(s_ok) < len(s):
        out["n_undefined"] = int(len(s) - len(s_ok))
    return out


@dataclass
class VariantFit:
    """The fit of one variant: parameters, bootstrap samples, derived quantities, checks."""
    variant: str
    law: Law
    points: Points
    theta: np.ndarray
    info: dict[str, Any]
    samples: np.ndarray
    n_boot_invalid: int
    ctx: dv.Context
    derived: dict[str, np.ndarray]            # name -> (1,): the fit's value (derived.derived)
    frontier: dict[str, np.ndarray]           # name -> (1, nC)
    derived_samples: dict[str, np.ndarray]    # name -> (B,): bootstrap
    frontier_samples: dict[str, np.ndarray]   # name -> (B, nC)
    residuals: np.ndarray                     # relative: (L - Lhat) / L
    holdout: list[dict[str, Any]] = field(default_factory=list)
    scan: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ci: float = 0.95
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)  # parameter -> {"flag", "meaning"} (parameter_flags)
    objective: Objective | None = None
    n_boot_not_converged: int = 0
    heldout: dict[str, Any] | None = None     # fit --holdout: predictions of the held-out points (predict.py)
    seed_noise: dict[str, Any] | None = None  # seeds.seed_noise: None without seed replicates

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(self.law.param_names, map(float, self.theta)))

    def param_interval(self, name: str) -> dict[str, Any]:
        i = self.law.param_names.index(name)
        out = interval(self.theta[i], self.samples[:, i], self.ci)
        if name in self.flags:  # travels with the interval into the JSON and the tables
            out["flag"] = self.flags[name]["flag"]
            out["flag_meaning"] = self.flags[name]["meaning"]
        return out

    def derived_interval(self, name: str) -> dict[str, Any]:
        return interval(self.derived[name][0], self.derived_samples[name], self.ci)

    def predict(self, V: dict[str, np.ndarray]) -> np.ndarray:
        return self.law.predict(self.theta, V)

    @property
    def rms_rel_error(self) -> float:
        return float(np.sqrt(np.mean(self.residuals ** 2)))

    def to_dict(self) -> dict[str, Any]:
        law = self.law
        out: dict[str, Any] = {"n_points": len(self.points), "n_runs": self.points.n_runs,
                               "n_boot": int(len(self.samples)), "n_boot_discarded": self.n_boot_invalid,
                               "n_boot_not_converged": self.n_boot_not_converged,
                               "params": {n: self.param_interval(n) for n in law.coef_names + [law.constant]}}
        if law.exp_names:
            out["exponents"] = {n: self.param_interval(n) for n in law.exp_names}
            ut = universality_test(self)
            if ut:  # only where the law's variables are the universality class's (not chinchilla's N)
                out["universality_test"] = ut
        out["derived"] = {k: self.derived_interval(k) for k in self.derived}
        if self.ctx.conversion:
            out["derived"]["tau_to_tokens"] = self.ctx.conversion
        if self.ctx.N_ref is not None and "m_over_l_star" in self.derived:
            out["derived"]["N_ref"] = self.ctx.N_ref
        if "m_over_l_star" in self.derived and law.terms and all(
                t.exponent == 1 for t in law.terms if t.var in ("m", "l")):
            lo, hi = dv.penalty_band(0.05)
            out["derived"]["shape_penalty"] = {
                "formula": "S(x)/S* = (2 x^(-1/3) + x^(2/3)) / 3, x = (m/l)/(m/l)*",
                "band_5pct": [lo, hi]}
            if self.ctx.aspect is not None:
                x = self.ctx.aspect / self.derived["m_over_l_star"][0]
                with np.errstate(all="ignore"):
                    out["derived"]["shape_penalty"].update(
                        {"data_x_range": [float(np.min(x)), float(np.max(x))],
                         "data_max_penalty": float(np.max(dv.shape_penalty(x)))})
        if self.frontier:
            C, C_data = self.ctx.C_ref, self.ctx.C_data
            assert C is not None and C_data is not None  # a frontier needs them (derived.derived)
            factor = [float(c / C_data[1]) for c in C]
            out["frontier"] = {"C": [float(c) for c in C], "C_data_range": list(self.ctx.C_data or ()),
                               "extrapolation_factor": factor,
                               "extrapolated": [f > 1 + 1e-9 for f in factor],
                               "extrapolation": "C / the largest compute of the runs; above 1 the frontier "
                                                "is the fitted law extrapolated beyond every measurement",
                               "closed_form_assumes": "C = 6 N D, N = 12 m^2 l",
                               "quantities": {k: [interval(self.frontier[k][0, i], self.frontier_samples[k][:, i],
                                                           self.ci) for i in range(len(C))]
                                              for k in self.frontier}}
            if self.ctx.flops is not None:
                out["frontier"]["flops_model"] = self.ctx.flops.describe()
        if self.points.envelope is not None:   # best-lr: which lr won for each shape and budget
            out["lr_envelope"] = {
                "selection": "for each (variant, shape, budget, seed) the run with the lowest final loss over the "
                             "swept lrs; the bootstrap redoes the selection inside every draw",
                "edge": "low/high: the best lr is the smallest/largest swept (the optimum may lie outside); "
                        "single: one lr was swept",
                "shapes": self.points.envelope.shapes()}
        out["fit"] = dict(self.info)
        r = self.residuals
        out["fit"].update({"rms_rel_error": self.rms_rel_error, "mean_rel_error": float(np.mean(r)),
                           "max_abs_rel_error": float(np.max(np.abs(r)))})
        by_cell: dict[str, dict[str, Any]] = {}
        for c in dict.fromkeys(self.points.cell.tolist()):
            m = self.points.cell == c
            by_cell[c] = {"n": int(m.sum()), "rms_rel": float(np.sqrt(np.mean(r[m] ** 2))),
                          "mean_rel": float(np.mean(r[m]))}
        # the values themselves: `predict --interval run` adds a resampled residual to each draw
        out["residuals"] = {"definition": "(L - Lhat) / L", "by_cell": by_cell, "values": r}
        if self.seed_noise is not None:   # beside the residual rms: the noise alone, from seed replicates
            out["seed_noise"] = {**self.seed_noise, "residual_rms": self.rms_rel_error}
        out["holdout"] = self.holdout
        out["exclusion_scan"] = self.scan
        if self.heldout is not None:
            out["holdout_predictions"] = self.heldout
        out["warnings"] = self.warnings + self.ctx.warnings
        # what reproduces every interval and prediction: the draws themselves (B x P, law.params order)
        out["bootstrap"] = {"params": law.param_names, "draws": self.samples}
        return out


def universality_targets(law: Law) -> dict[str, float]:
    """{exponent name: the universality class's value} for the law's fitted exponents; empty when
    the comparison means nothing for the law (a variable outside tau/D, m, l, such as Chinchilla's N;
    or an exponent tied across variables whose universal values differ)."""
    if not law.exp_names or any(t.var not in UNIVERSAL for t in law.terms):
        return {}
    out = {}
    for name in law.exp_names:
        vals = {UNIVERSAL[t.var] for t in law.terms if t.exp_name == name}
        if len(vals) == 1:
            out[name] = vals.pop()
    return out


def universality_test(vf: VariantFit) -> dict[str, Any]:
    """Whether the universality exponents (time 1/3, width 1, depth 1) lie inside the intervals; {}
    where the test means nothing for the law (:func:`universality_targets`)."""
    targets = universality_targets(vf.law)
    if not targets:
        return {}
    res: dict[str, Any] = {}
    found: list[bool | None] = []
    for name, target in targets.items():
        iv = vf.param_interval(name)
        # an unidentified exponent, or no interval (n_boot = 0), cannot confirm or reject the value
        inside = None if name in vf.flags or not np.isfinite(iv["lo"]) else bool(iv["lo"] <= target <= iv["hi"])
        res[name] = {"universal": target, "inside_interval": inside, "value": iv["value"], "lo": iv["lo"],
                     "hi": iv["hi"]}
        found.append(inside)
    if False in found:
        res["all_inside"], res["verdict"] = False, "not consistent"
    elif None in found:
        res["all_inside"], res["verdict"] = None, "undetermined"
    else:
        res["all_inside"], res["verdict"] = True, "consistent"
    return res


@dataclass
class FitResult:
    """Fits of one law to every variant of a table. ``to_json()`` for scripts, ``coefficient_table(result, fmt)``
    for people."""
    law: Law
    options: dict[str, Any]
    notes: list[str]
    exclusions: list[dict[str, Any]]
    variants: dict[str, VariantFit]
    objective: Objective = field(default_factory=Objective)
    columns: dict[str, str] = field(default_factory=dict)   # loss and each variable: the file's column
    comparison: dict[str, Any] = field(default_factory=dict)  # compare.compare_variants; {} for one variant
    universality_across: dict[str, Any] = field(default_factory=dict)  # compare.universality_across

    def to_dict(self) -> dict[str, Any]:
        law = self.law
        return {
            "schema": "scaling-grid/fit/2",
            "law": {"name": law.name, "formula": law.formula, "params": law.param_names, "tied": law.tied,
                    "terms": [{"coef": t.coef, "var": t.var, "exponent": t.exponent if t.exp_name is None
                               else t.exp_name} for t in law.terms],
                    "description": law.description},
            "objective": {"residual": self.objective.residual, "huber_delta": self.objective.delta,
                          "definition": self.objective.describe()},
            "columns": self.columns,
            "options": self.options,
            "selection": {"notes": self.notes, "exclusions": self.exclusions},
            "interval": f"{100 * self.options['ci']:g}% percentile bootstrap over runs; se = {SE_METHOD}",
            "variants": {v: f.to_dict() for v, f in self.variants.items()},
            **({"comparison": self.comparison} if self.comparison else {}),
            **({"universality_across_variants": self.universality_across} if self.universality_across else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        text = json.dumps(_jsonable(self.to_dict()), indent=indent, allow_nan=False)
        # one line per innermost list of numbers (a draw, a residual vector), not one per number
        return _FLAT.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) \
            if indent else text


_FLAT = re.compile(r"\[\s*((?:-?[0-9.eE+-]+|null|\"-?inf\")(?:,\s*(?:-?[0-9.eE+-]+|null|\"-?inf\"))*)\s*\]")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if np.isnan(x):
            return None
        if np.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    return x
