"""The nonlinear solver (a fitted exponent, or the log residual), and the two entry points that pick the
solver a problem needs: :func:`fit_law` and :func:`bootstrap` (a linear problem goes to :mod:`linear`).

L-BFGS-B on the log-sum-exp parameterisation ``log Lhat = LSE(log K, log c_j - a_j log x_j)``
(positivity and conditioning) from the best starts of a grid, restarted from the best solution until
it no longer moves. An abnormal stop (a failed line search, the iteration limit) counts as converged
only where a Newton step predicts no further decrease worth having (the Newton decrement below 1e-9
of the objective: with the tight tolerances used, a line search often fails at the optimum itself);
otherwise it is retried from where it stopped with a fresh memory, and if it stops abnormally again
with a decrease still predicted, it is reported as not converged.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, TypeVar

import numpy as np
from scipy.optimize import minimize

from .errors import AnalysisError
from .identify import too_few_distinct
from .laws import Law
from .linear import bootstrap_fixed, fit_fixed
from .objective import Objective
from .points import Points
from .resampling import Draws, envelope_counts, run_counts

_P = ParamSpec("_P")
_R = TypeVar("_R")


def single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """A context in which BLAS/LAPACK use one thread. The fits make many tiny BLAS calls (L-BFGS-B,
    4x4 solves, thin products); on a shared CPU, OpenBLAS's threads made them up to 20x slower.
    Needs threadpoolctl; without it, a no-op."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def one_thread(f: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with single_threaded_blas():
            return f(*args, **kwargs)
    return wrapper


class Stop(NamedTuple):
    """Where a nonlinear solve ended: internal parameters, objective, L-BFGS-B's last message,
    restarts, whether it stopped normally, whether it was retried, and whether it converged."""
    th: np.ndarray
    fun: float
    message: str
    restarts: int
    normal: bool
    retried: bool
    converged: bool
    decrement: float | None = None


class LogSumExpProblem:
    """The objective on the log-sum-exp parameterisation. Internal parameters: the law's layout with
    the coefficients and the constant as logs: [log c..., log K, fitted exponents]."""

    def __init__(self, law: Law, pts: Points, objective: Objective):
        self.law, self.obj = law, objective
        self.k = len(law.terms)
        self.kc = law.const_index
        self.P = len(law.param_names)
        self.ci = np.array(law.coef_index)
        self.lx = np.stack([np.log(pts.V[t.var]) for t in law.terms])       # (k, n)
        self.L = np.asarray(pts.loss, float)
        self.free = [j for j, e in enumerate(law.exp_index) if e is not None]
        self.free_idx = np.array([law.exp_index[j] for j in self.free], dtype=int)
        self.fixed_exp = np.array([t.exponent if t.exponent is not None else 0.0 for t in law.terms])
        self.log = objective.residual == "log"
        self.y = np.log(self.L)
        self.untied = bool(np.array_equal(self.ci, np.arange(self.k)))

    def _alpha(self, th: np.ndarray) -> np.ndarray:
        a = np.broadcast_to(self.fixed_exp, th.shape[:-1] + (self.k,)).copy()
        if self.free:
            a[..., self.free] = th[..., self.free_idx]
        return a

    def objective(self, th: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
        alpha = self._alpha(th)
        Z = np.empty((self.k + 1, self.lx.shape[1]))
        Z[0] = th[self.kc]
        Z[1:] = th[self.ci, None] - alpha[:, None] * self.lx
        zmax = Z.max(0)
        Ez = np.exp(Z - zmax)
        S = Ez.sum(0)
        z = zmax + np.log(S)                       # log Lhat
        drdz: float | np.ndarray
        if self.log:  # the default: no exp, so no overflow guard (this runs tens of thousands of times)
            r, drdz = self.y - z, -1.0
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                r, drdz = self.obj.residual_of(self.L, z)
        gz = (w * self.obj.psi(r) * drdz) * (Ez / S)
        g = np.empty_like(th)
        g[self.kc] = gz[0].sum()
        per_term = gz[1:].sum(1)
        g[:self.kc] = per_term if self.untied else np.bincount(self.ci, per_term, self.kc)
        g[self.free_idx] = 0.0   # then summed into: a tied exponent collects every term it serves
        for j, e in zip(self.free, self.free_idx):
            g[e] -= (gz[1 + j] * self.lx[j]).sum()
        f = float(np.sum(w * self.obj.rho(r)))
        if not np.isfinite(f):   # overflow far from the data (absolute residual): L-BFGS-B steps back
            return 1e300, np.zeros_like(th)
        return f, g

    def objective_many(self, TH: np.ndarray, w: np.ndarray, chunk: int = 512) -> np.ndarray:
        out = np.empty(len(TH))
        for s in range(0, len(TH), chunk):
            th = TH[s:s + chunk]
            alpha = self._alpha(th)
            Z = np.concatenate([np.broadcast_to(th[:, self.kc, None, None], (len(th), 1, self.lx.shape[1])),
                                th[:, self.ci, None] - alpha[:, :, None] * self.lx[None]], axis=1)
            zmax = Z.max(1)
            z = zmax + np.log(np.exp(Z - zmax[:, None]).sum(1))
            with np.errstate(over="ignore", invalid="ignore"):
                r, _ = self.obj.residual_of(self.L, z)
                out[s:s + chunk] = (w * self.obj.rho(r)).sum(1)
        return np.where(np.isfinite(out), out, np.inf)

    def grid(self, pts: Points) -> np.ndarray:
        """Starting points: log K at 10-90% of the smallest loss; each fitted exponent 0.25-1.5; each
        coefficient making its (first) term 5-60% of the smallest loss at the term's typical x."""
        law = self.law
        Lmin = float(np.min(pts.loss))
        logK = np.log(Lmin * np.array([0.1, 0.4, 0.7, 0.9]))
        gm = self.lx.mean(1)
        first = [law.coef_index.index(i) for i in range(self.kc)]   # each coefficient's first term
        rows = []
        for K in logK:
            for alphas in itertools.product(*([(0.25, 0.5, 1.0, 1.5)] * len(law.exp_names))):
                th = np.zeros(self.P)
                th[self.kc] = K
                th[self.kc + 1:] = alphas
                a = self._alpha(th)
                for sizes in itertools.product(*([(0.05, 0.2, 0.6)] * self.kc)):
                    th = th.copy()
                    th[:self.kc] = [np.log(sz * Lmin) + a[j] * gm[j] for sz, j in zip(sizes, first)]
                    rows.append(th)
        return np.array(rows)

    def to_params(self, th: np.ndarray) -> np.ndarray:
        return np.concatenate([np.exp(th[..., :self.kc + 1]), th[..., self.kc + 1:]], axis=-1)

    def from_params(self, theta: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(np.maximum(theta[..., :self.kc + 1], 1e-300)), theta[..., self.kc + 1:]],
                                  axis=-1)

    def _lbfgs(self, th: np.ndarray, w: np.ndarray) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return minimize(self.objective, th, args=(w,), jac=True, method="L-BFGS-B",
                            options={"maxiter": 20000, "maxfun": 50000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 30})

    def minimize(self, th0: np.ndarray, w: np.ndarray, max_restarts: int = 4) -> Stop:
        """L-BFGS-B, restarted from its solution until it no longer moves (at most ``max_restarts``
        times). An abnormal last stop counts as converged where the Newton decrement shows no decrease
        left; otherwise it is retried once from where it stopped, and judged again (module docstring)."""
        th, f_prev, res, n_restart, settled = np.asarray(th0, float), np.inf, None, 0, max_restarts == 0
        for n_restart in range(max_restarts + 1):
            res = self._lbfgs(th, w)
            moved = f_prev - res.fun
            th = res.x
            f_prev = res.fun
            if n_restart > 0 and moved <= 1e-12 * max(1.0, abs(res.fun)):
                settled = True
                break
        assert res is not None
        if res.success and settled:  # a normal stop that a restart no longer moves
            return Stop(th, float(f_prev), str(res.message), n_restart, True, False, True)
        # with ftol 1e-15 a line search often fails at the optimum itself (no decrease left to find):
        # there a Newton step predicts no gain and nothing needs retrying; elsewhere it predicts one
        def at_optimum(th: np.ndarray, f: float) -> tuple[bool, float]:
            dec = self.newton_decrement(th, w)
            return dec <= 1e-9 * max(abs(f), 1e-12 * len(w)), dec
        ok, dec = at_optimum(th, float(f_prev))
        if ok:
            return Stop(th, float(f_prev), str(res.message), n_restart, bool(res.success), False, True, dec)
        res2 = self._lbfgs(th, w)  # a fresh L-BFGS memory from where it stopped: the usual cure of a failed line search
        if res2.fun <= f_prev:
            th, f_prev = res2.x, float(res2.fun)
        if res2.success:
            return Stop(th, float(f_prev), str(res2.message), n_restart, True, True, True)
        ok, dec = at_optimum(th, float(f_prev))
        return Stop(th, float(f_prev), str(res2.message), n_restart, False, True, ok, dec)

    def newton_decrement(self, th: np.ndarray, w: np.ndarray) -> float:
        """g' H^+ g / 2, the decrease a Newton step predicts (Hessian by central differences of the
        gradient). Infinite when the Hessian has a clearly negative direction (not a minimum)."""
        f, g = self.objective(th, w)
        P = len(th)
        H = np.empty((P, P))
        for i in range(P):
            h = 1e-5 * max(1.0, abs(th[i]))
            e = np.zeros(P)
            e[i] = h
            H[:, i] = (self.objective(th + e, w)[1] - self.objective(th - e, w)[1]) / (2 * h)
        H = (H + H.T) / 2
        ev, V = np.linalg.eigh(H)
        top = max(float(np.max(np.abs(ev))), 1e-300)
        # Huber's kinks make the difference Hessian slightly indefinite at a true optimum (points whose
        # residual crosses delta within the step): directions of curvature below 1e-4 of the largest
        # are flat, not descent; clearly negative curvature is a saddle, not a minimum
        if ev[0] < -1e-2 * top:
            return float("inf")
        keep = ev > 1e-4 * top
        return float(0.5 * np.sum((V[:, keep].T @ g) ** 2 / ev[keep]))


def _stop_info(stop: Stop) -> dict[str, Any]:
    out: dict[str, Any] = {"stop": stop.message, "stopped_normally": stop.normal, "retried": stop.retried,
                           "converged": stop.converged, "restarts": stop.restarts}
    if stop.decrement is not None:
        out["newton_decrement"] = stop.decrement
    return out


def fit_free(law: Law, pts: Points, objective: Objective | None = None, weights: np.ndarray | None = None,
             n_starts: int = 12, start: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The nonlinear solver. With ``start`` (params), only that start is used (warm start)."""
    objective = objective or Objective.for_law(law)
    F = LogSumExpProblem(law, pts, objective)
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, float)
    if start is not None:
        starts = [F.from_params(np.asarray(start, float))]
        n_grid = 0
    else:
        G = F.grid(pts)
        n_grid = len(G)
        if law.fixed:  # the convex relative-error fit is a good start for the same law on log L
            with contextlib.suppress(AnalysisError, ValueError, np.linalg.LinAlgError):
                lin, _ = fit_fixed(law, pts, Objective("relative", objective.delta), weights)
                G = np.vstack([G, F.from_params(lin)])
        f = F.objective_many(G, w)
        order = np.argsort(f)[:n_starts]
        starts = list(G[order])
    best: Stop | None = None
    for th0 in starts:
        s = F.minimize(th0, w, max_restarts=1)
        if best is None or s.fun < best.fun:
            best = s
    assert best is not None  # starts is never empty
    final = F.minimize(best.th, w)   # restart from the best until it no longer moves
    if final.fun > best.fun:
        final = best
    info = {"method": "log-sum-exp parameterisation, L-BFGS-B (ftol 1e-15, gtol 1e-12) from the best "
                      f"{len(starts)} of {n_grid} grid starts, restarted from the best until it no longer moves",
            "grid_starts": n_grid, "lbfgs_starts": len(starts), "objective": final.fun,
            "restart_improvement": float(best.fun - final.fun), **_stop_info(final)}
    return F.to_params(final.th), info


@one_thread
def fit_law(law: Law, pts: Points, objective: Objective | None = None, weights: np.ndarray | None = None,
            start: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``law`` to ``pts`` under ``objective`` (default :meth:`Objective.for_law`)."""
    objective = objective or Objective.for_law(law)
    if objective.linear(law):
        theta, info = fit_fixed(law, pts, objective, weights)
    else:
        theta, info = fit_free(law, pts, objective, weights, start=start)
    return theta, {"objective_definition": objective.describe(), **info}


@one_thread
def bootstrap(law: Law, pts: Points, theta: np.ndarray, n_boot: int, rng: np.random.Generator,
              objective: Objective | None = None, select_in_draw: bool = True) -> Draws:
    """Refit on ``n_boot`` resamples of whole runs (:mod:`resampling`), starting from ``theta``; resamples
    that leave a coefficient unidentified are discarded and counted, resamples whose optimiser did not
    converge are kept and counted. For best-lr points
    (``pts.envelope``), each draw also redoes the lr selection (:func:`envelope_counts`), and the
    fit runs over every candidate with the draw's weights (zero for the runs not picked)."""
    objective = objective or Objective.for_law(law)
    if pts.envelope is not None:
        pts, counts = envelope_counts(law, pts, theta, n_boot, rng, select_in_draw)
    else:
        counts = run_counts(pts, n_boot, rng)
    n_bad_opt = 0
    if objective.linear(law):
        samples, valid = bootstrap_fixed(law, pts, theta, counts, objective)
    else:
        samples = np.full((n_boot, len(theta)), np.nan)
        valid = np.ones(n_boot, bool)
        F = LogSumExpProblem(law, pts, objective)
        th0 = F.from_params(theta)
        for b in range(n_boot):
            w = counts[b].astype(float)
            used = w > 0
            if too_few_distinct(law, pts.V, used) is not None:
                valid[b] = False
                continue
            s = F.minimize(th0, w, max_restarts=1)
            n_bad_opt += not s.converged
            samples[b] = F.to_params(s.th)
    return Draws(samples[valid], int((~valid).sum()), n_bad_opt)
