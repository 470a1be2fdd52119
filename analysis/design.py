"""Choosing the cells to train: an optimal design for the goals under a FLOP budget (docs/design.md).

The criterion is the goals' predicted variance at the prior, from the law's Fisher information: each
cell contributes its final point (the fit's default ``points="final"``: a separate run's endpoint or
a wsd branch's post-cooldown endpoint), ``log L = log f(m, l, tau; theta) + noise`` with relative
noise sigma. The branches of one wsd trunk share the trunk's trajectory (seed and data order), so
their noise is correlated (``trunk_corr``), and the fit's bootstrap resamples them together. A goal
g(theta) has the delta-method variance grad g' I^-1 grad g; the design minimises the sum over goals
of variance / g^2 (each goal's squared relative standard error: an L-optimal criterion on the goal
gradients, normalised per goal), by greedy additions ranked by gain per FLOP, then exchanges.

Cost: a cell's FLOPs are its own training (a separate run: all of it; a wsd branch: its cooldown);
a wsd trunk is paid once, to the longest stable phase any chosen branch starts from (``stable``).
Cells already measured (``spent``) add their information and cost nothing; a trunk already trained
to some length is only extended.

Public API (for ``scaling-grid design`` and ``design --from STORE``)::

    Candidate(width, depth, tokens, tau, flops, lr=None, seed=None, trunk=None, stable=0.0, row=None)
    Prior.default() / Prior.from_fit(path, goals) / Prior(law, theta, noise, t_per_token, source)
    choose(candidates, budget, prior, goals, noise=None, spent=(), trunk_corr=None) -> Design
    design_cost(cells, spent=()) -> float
    predicted(cells, prior, goals, noise=None, trunk_corr=None) -> {goal: relative sd}
    factorial(candidates, budget) -> list[int]   (the largest evenly spaced sub-factorial within budget)
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import derived as dv
from . import laws as LW
from .errors import AnalysisError
from .laws import Law

# The default prior: UNIVERSALITY_TRUTH of synthetic.py (byte-level small models, L ~ 1-2 nats/byte,
# tau = sum of lr of order 1-20), with the class's exponents. docs/design.md lists it.
DEFAULT_PRIOR = {"c_tau": 0.6, "c_m": 20.0, "c_l": 0.4, "L0": 0.8,
                 "alpha_tau": 1 / 3, "alpha_m": 1.0, "alpha_l": 1.0}
DEFAULT_NOISE = 0.01        # relative: about the demo grid's seed-to-seed spread (docs/design.md)
WSD_TRUNK_CORR = 0.5        # correlation of two branches' noise when they share a trunk (assumed)
RIDGE_REL = 10.0            # a weak prior (sd 10 x |theta|) so that the first picks are defined
EXPONENT_GOALS = ("alpha_tau", "alpha_m", "alpha_l")
COEF_GOALS = ("c_tau", "c_m", "c_l", "L0")
GOAL_WORDS = "m/l*, c_l, c_m, c_tau, L0, alpha_tau, alpha_m, alpha_l, L*(C=<FLOPs>)"
_LSTAR = re.compile(r"^L\*\(C=([0-9.eE+\-]+)\)$")


@dataclass(frozen=True)
class Candidate:
    """One cell that could be trained. ``flops``: what training it costs beyond its trunk (a wsd
    branch: its cooldown); ``trunk``: the key shared by the branches of one wsd trunk (None for a
    separate run); ``stable``: FLOPs of the trunk's stable phase up to where this branch starts."""
    width: float
    depth: float
    tokens: float
    tau: float
    flops: float
    lr: float | None = None
    seed: int | None = None
    trunk: str | None = None
    stable: float = 0.0
    row: int | None = None


@dataclass(frozen=True)
class Prior:
    """The law and the parameter values the design is optimal at; noise is relative (sd of log L)."""
    law: Law
    theta: np.ndarray
    noise: float
    t_per_token: float | None = None
    source: str = "the defaults of docs/design.md"

    @classmethod
    def default(cls, free: bool = False) -> Prior:
        law = LW.get("universality-free" if free else "universality")
        return cls(law, np.array([DEFAULT_PRIOR[n] for n in law.param_names]), DEFAULT_NOISE)

    @classmethod
    def from_fit(cls, path: str | Path, free: bool = False) -> Prior:
        """A prior from a ``fit --json`` file (see ``from_fit_json``)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AnalysisError(f"--prior {str(path)!r}: no such file") from None
        except (OSError, ValueError) as e:
            raise AnalysisError(f"--prior {str(path)!r}: not a `scaling-grid fit --json` file ({e})") from None
        return cls.from_fit_json(d, free, str(path))

    @classmethod
    def from_fit_json(cls, d: Any, free: bool = False, source: str = "a fit") -> Prior:
        """A prior from a fit's JSON (``FitResult.to_json``, parsed): the first variant's values; noise
        its residual rms. A fit of the fixed law serves a free-exponent design with the class's exponents."""
        try:
            vd = next(iter(d["variants"].values()))
            vals = {n: float(v["value"]) for n, v in {**vd["params"], **vd.get("exponents", {})}.items()}
            noise = float(vd["fit"]["rms_rel_error"])
            k = vd.get("derived", {}).get("tau_to_tokens", {}).get("k")
        except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as e:
            raise AnalysisError(f"--prior {source!r}: not a `scaling-grid fit --json` file ({e})") from None
        law = LW.get("universality-free" if free or "alpha_m" in vals else "universality")
        missing = [n for n in law.param_names if n not in vals and n not in EXPONENT_GOALS]
        if missing:
            raise AnalysisError(f"--prior {source!r}: the fit has no {', '.join(missing)}; fit the universality "
                                f"law (m, l, tau) first")
        theta = np.array([vals.get(n, DEFAULT_PRIOR[n]) for n in law.param_names])
        return cls(law, theta, noise if noise > 0 else DEFAULT_NOISE, None if k is None else float(k), source)


@dataclass
class Design:
    """The chosen candidates (indices), their cost, and each goal's predicted relative sd."""
    chosen: list[int]
    flops: float
    budget: float
    goals: list[str]
    predicted: dict[str, float]
    criterion: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- goals
def check_goals(goals: Iterable[str]) -> list[str]:
    """The goals normalised ("m/ℓ*" -> "m/l*"); AnalysisError naming an unknown one."""
    out = []
    for g in goals:
        g = g.strip().replace("ℓ", "l").replace("τ", "tau").replace(" ", "")
        if g in ("m/l*", "(m/l)*") or g in COEF_GOALS or g in EXPONENT_GOALS or _LSTAR.match(g):
            out.append("m/l*" if g == "(m/l)*" else g)
        else:
            raise AnalysisError(f"--goal {g!r}: unknown goal; allowed: {GOAL_WORDS}")
    return list(dict.fromkeys(out)) or ["m/l*", "c_l"]


def needs_free(goals: Sequence[str]) -> bool:
    return any(g in EXPONENT_GOALS for g in goals)


def goal_values(law: Law, theta: np.ndarray, goal: str, N_ref: float, t_per_token: float | None) -> np.ndarray:
    """The goal at parameter rows theta (B, P) -> (B,), through derived.py as the fit derives it."""
    theta = np.atleast_2d(theta)
    if goal in law.param_names:
        return theta[:, law.param_names.index(goal)]
    m = _LSTAR.match(goal)
    ctx = dv.Context(t_per_token=t_per_token, N_ref=N_ref,
                     C_ref=np.array([float(m.group(1))]) if m else None)
    sc, fr = dv.derived(law, theta, ctx)
    if goal == "m/l*":
        return sc["m_over_l_star"]
    if m is None or t_per_token is None:
        raise AnalysisError(f"--goal {goal!r} needs the time per token (tau/tokens) of the candidates")
    return fr["L_star"][:, 0]


def gradients(prior: Prior, goals: Sequence[str], N_ref: float, t_per_token: float | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(values (G,), gradients (G, P)) of the goals at the prior, by central differences."""
    th = prior.theta
    P = len(th)
    h = 1e-5 * np.maximum(np.abs(th), 1e-3)
    rows = np.vstack([th, th + np.diag(h), th - np.diag(h)])
    vals, grads = [], []
    for g in goals:
        v = goal_values(prior.law, rows, g, N_ref, t_per_token)
        vals.append(v[0])
        grads.append((v[1:P + 1] - v[P + 1:]) / (2 * h))
    return np.array(vals), np.array(grads)


# -------------------------------------------------------------------------------- information
def jacobian(law: Law, theta: np.ndarray, cells: Sequence[Candidate]) -> np.ndarray:
    """d log f / d theta at every cell (n, P), by central differences (any law)."""
    V = {"tau": np.array([c.tau for c in cells], float), "m": np.array([c.width for c in cells], float),
         "l": np.array([c.depth for c in cells], float)}
    h = 1e-6 * np.maximum(np.abs(theta), 1e-3)
    up = np.log(law.predict(theta + np.diag(h), V))
    dn = np.log(law.predict(theta - np.diag(h), V))
    return ((up - dn) / (2 * h[:, None])).T


def group_info(J: np.ndarray, rho: float) -> np.ndarray:
    """Information (x sigma^2) of n rows with equicorrelated noise: J' [(1-rho) I + rho 11']^-1 J."""
    n = len(J)
    s = J.sum(axis=0)
    return (J.T @ J - rho / (1 - rho + n * rho) * np.outer(s, s)) / (1 - rho)


class Info:
    """The information of a set of cells, kept per trunk group so that one cell can be added or
    removed cheaply."""

    def __init__(self, J: np.ndarray, groups: Sequence[str], rho: float, ridge: np.ndarray):
        self.J, self.groups, self.rho, self.ridge = J, list(groups), rho, ridge

    def total(self, members: Iterable[int]) -> np.ndarray:
        by: dict[str, list[int]] = {}
        for i in members:
            by.setdefault(self.groups[i], []).append(i)
        out = self.ridge.copy()
        for idx in by.values():
            out += group_info(self.J[idx], self.rho)
        return out


def score(I: np.ndarray, vals: np.ndarray, grads: np.ndarray, sigma: float) -> tuple[float, np.ndarray]:
    """(criterion, relative sd per goal) for information I (in units of 1/sigma^2)."""
    var = np.einsum("gi,ij,gj->g", grads, np.linalg.pinv(I) * sigma ** 2, grads)
    rel = np.sqrt(np.maximum(var, 0)) / np.maximum(np.abs(vals), 1e-300)
    return float(np.sum(rel ** 2)), rel


def score_batch(I: np.ndarray, vals: np.ndarray, grads: np.ndarray, sigma: float) -> np.ndarray:
    """The criterion (sum of squared relative sds) for a stack of informations (K, P, P)."""
    X = np.linalg.solve(I, np.broadcast_to(grads.T, (len(I),) + grads.T.shape))   # (K, P, G)
    var = np.einsum("gi,kig->kg", grads, X) * sigma ** 2
    return np.sum(np.maximum(var, 0) / np.maximum(np.abs(vals), 1e-300) ** 2, axis=1)


# ------------------------------------------------------------------------------------------ cost
def design_cost(cells: Sequence[Candidate], spent: Sequence[Candidate] = ()) -> float:
    """FLOPs still to pay for ``cells``: their own FLOPs, plus each wsd trunk extended from what
    ``spent`` already trained to the longest stable phase a chosen branch starts from."""
    done: dict[str, float] = {}
    for c in spent:
        if c.trunk is not None:
            done[c.trunk] = max(done.get(c.trunk, 0.0), c.stable)
    need = dict(done)
    total = 0.0
    for c in cells:
        total += c.flops
        if c.trunk is not None:
            need[c.trunk] = max(need.get(c.trunk, 0.0), c.stable)
    return total + sum(v - done.get(k, 0.0) for k, v in need.items())


def levels(cells: Sequence[Candidate]) -> list[int]:
    return [len({c.width for c in cells}), len({c.depth for c in cells}), len({c.tau for c in cells})]
