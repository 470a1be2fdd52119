"""The estimator: one objective, two solvers, the bootstrap over runs (docs/science.md section 3).

The objective is ``sum_i w_i rho(r_i)`` with r_i the residual of point i, taken where the user says
(:class:`Objective`):

- ``log``: r = log L - log Lhat (relative error, symmetric; the default for free exponents);
- ``relative``: r = (L - Lhat) / L (rows weighted by 1/L; the default for fixed exponents);
- ``absolute``: r = L - Lhat (plain residuals, in the loss's units);

and rho Huber's loss with threshold ``delta`` (1e-3 by default), or plain squares (``delta=None``).
The objective is summed, not averaged. Which solver runs follows from the problem, not from a
per-combination code path:

- linear (every exponent fixed, residual relative or absolute): r is linear in the coefficients, so
  the problem is convex; each IRLS step is a non-negative least-squares problem (scipy's nnls for the
  fit; for the bootstrap, an exact batched solver over the active sets of the small normal equations);
- nonlinear (a fitted exponent, or the log residual): L-BFGS-B on the log-sum-exp parameterisation
  ``log Lhat = LSE(log K, log c_j - a_j log x_j)`` (positivity and conditioning) from the best starts
  of a grid, restarted from the best solution until it no longer moves. An abnormal stop (a failed line
  search, the iteration limit) counts as converged only where a Newton step predicts no further
  decrease worth having (the Newton decrement below 1e-9 of the objective: with the tight tolerances
  used, a line search often fails at the optimum itself); otherwise it is retried from where it stopped
  with a fresh memory, and if it stops abnormally again with a decrease still predicted, it is
  reported as not converged.

Bootstrap: whole runs are resampled (a run's points move together); resamples that leave a
coefficient unidentified are discarded and counted, resamples whose optimiser did not converge are
kept and counted. For best-lr points the choice of lr is a step of each draw (:func:`envelope_counts`).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, ParamSpec, TypeVar

import numpy as np
from scipy.optimize import minimize, nnls

from .errors import AnalysisError
from .identify import too_few_distinct
from .laws import Law
from .points import Points

HUBER_DELTA = 1e-3
RESIDUALS = {"log": "log L - log Lhat", "relative": "(L - Lhat)/L", "absolute": "L - Lhat"}
_OMEGA = 1.6

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


# ------------------------------------------------------------------------------ the objective
@dataclass(frozen=True)
class Objective:
    """Where residuals are taken (``residual``) and how they are penalised (Huber ``delta``, or
    plain squares when None)."""
    residual: str = "log"
    delta: float | None = HUBER_DELTA

    def __post_init__(self) -> None:
        if self.residual not in RESIDUALS:
            raise AnalysisError(f"residual={self.residual!r}: allowed: {', '.join(RESIDUALS)}")
        if self.delta is not None and not 0 < self.delta < float("inf"):
            raise AnalysisError(f"huber_delta={self.delta!r}: must be > 0 (or None for least squares)")

    @staticmethod
    def default_residual(law: Law) -> str:
        """log L for free exponents, relative error for fixed ones (the fixed law then stays linear)."""
        return "relative" if law.fixed else "log"

    @classmethod
    def for_law(cls, law: Law, residual: str | None = None, delta: float | None = HUBER_DELTA) -> Objective:
        return cls(residual or cls.default_residual(law), delta)

    def describe(self) -> str:
        how = f"Huber (delta = {self.delta:g})" if self.delta is not None else "least squares"
        return f"{how} on the {self.residual} residual {RESIDUALS[self.residual]}, summed over points"

    def linear(self, law: Law) -> bool:
        """Whether the residual is linear in the law's parameters (then the problem is convex)."""
        return law.fixed and self.residual != "log"

    def rho(self, r: np.ndarray) -> np.ndarray:
        return huber(r, self.delta)

    def psi(self, r: np.ndarray) -> np.ndarray:
        """d rho / d r."""
        return r if self.delta is None else np.clip(r, -self.delta, self.delta)

    def residual_of(self, L: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(r, dr/dz) with z = log Lhat, for observed losses L."""
        if self.residual == "log":
            return np.log(L) - z, np.full_like(z, -1.0)
        Lhat = np.exp(z)
        if self.residual == "relative":
            return 1.0 - Lhat / L, -Lhat / L
        return L - Lhat, -Lhat

    def residuals(self, L: np.ndarray, Lhat: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.residual_of(np.asarray(L, float), np.log(np.asarray(Lhat, float)))[0]


def huber(r: np.ndarray, delta: float | None) -> np.ndarray:
    if delta is None:
        return 0.5 * r * r
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _huber_w(r: np.ndarray, delta: float | None) -> np.ndarray:
    if delta is None:
        return np.ones_like(r)
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))


# ------------------------------------------------------------------------------ linear solver
_SUBSETS: dict[int, list[np.ndarray]] = {}


def nnls_normal_batch(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact NNLS for a batch of small problems given their normal equations: minimise
    x'Ax - 2b'x over x >= 0 for A (B, p, p) positive definite, b (B, p). Every active set is solved
    and the best feasible solution kept (2^p - 1 small solves; p <= 8) -- for the problems whose
    unconstrained optimum is not already non-negative."""
    Bn, p = b.shape
    x = np.linalg.solve(A, b[..., None])[..., 0]
    inside = np.all(x >= 0, axis=1)     # the unconstrained optimum is feasible: it is the answer
    if np.all(inside):
        return x
    if np.any(inside):
        out = x.copy()
        out[~inside] = nnls_normal_batch(A[~inside], b[~inside])
        return out
    if p not in _SUBSETS:
        _SUBSETS[p] = [np.array(s) for r in range(1, p + 1) for s in itertools.combinations(range(p), r)]
    best = np.zeros((Bn, p))
    best_f = np.zeros(Bn)
    for S in _SUBSETS[p]:
        xs = np.linalg.solve(A[:, S[:, None], S[None, :]], b[:, S][..., None])[..., 0]
        feas = np.all(xs >= 0, axis=1)
        f = -np.einsum("bi,bi->b", b[:, S], xs)  # at the subset optimum, x'Ax - 2b'x = -b'x
        better = feas & (f < best_f)
        if np.any(better):
            best[better] = 0.0
            best[np.ix_(better, S)] = xs[better]
            best_f[better] = f[better]
    return best


def _linear_arrays(law: Law, pts: Points, objective: Objective) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scaled design Xs, target y, column scale): the residual is y - Xs @ c for c = theta * scale.
    Relative: rows divided by L, so the target is 1; absolute: rows as they are, target L."""
    X = law.design(pts.V)
    if objective.residual == "relative":
        X, y = X / pts.loss[:, None], np.ones(len(pts))
    else:
        y = np.asarray(pts.loss, float).copy()
    scale = np.linalg.norm(X, axis=0) / np.sqrt(len(X))
    return X / scale, y, scale


def fit_fixed(law: Law, pts: Points, objective: Objective | None = None, weights: np.ndarray | None = None,
              max_iter: int = 500, tol: float = 1e-12) -> tuple[np.ndarray, dict[str, Any]]:
    """The linear solver: NNLS, Huber by IRLS. Returns (params, info)."""
    objective = objective or Objective("relative")
    if not objective.linear(law):
        raise AnalysisError(f"{objective.describe()} is not linear in the parameters of law {law.name!r}")
    delta = objective.delta
    Xs, y, scale = _linear_arrays(law, pts, objective)
    n = len(Xs)
    w0 = np.ones(n) if weights is None else np.asarray(weights, float)
    c = np.zeros(Xs.shape[1])
    it = 0
    for it in range(1, max_iter + 1):
        r = y - Xs @ c
        w = w0 * (_huber_w(r, delta) if it > 1 else 1.0)
        sw = np.sqrt(w)
        c_new, _ = nnls(Xs * sw[:, None], y * sw, maxiter=50 * Xs.shape[1])
        done = np.max(np.abs(c_new - c)) <= tol * (1 + np.max(np.abs(c_new)))
        c = c_new
        if done or delta is None:
            break
    r = y - Xs @ c
    converged = bool(delta is None or it < max_iter)
    info = {"method": "non-negative least squares" + (" (rows weighted by 1/L)" if objective.residual == "relative"
                                                      else "") + (", Huber by IRLS" if delta else ""),
            "objective": float(np.sum(w0 * huber(r, delta))), "iterations": it, "converged": converged,
            "stop": "IRLS converged" if converged else f"IRLS stopped at the iteration limit ({max_iter})"}
    return c / scale, info


def _normal_eq(W: np.ndarray, M: np.ndarray, iu: tuple[np.ndarray, np.ndarray], p: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """A (B, p, p) and b (B, p) of the weighted problems from one product W @ M, where M holds the
    upper-triangle products x_i x_j of every row, then y x."""
    G = W @ M
    A = np.empty((len(W), p, p))
    A[:, iu[0], iu[1]] = G[:, :len(iu[0])]
    A[:, iu[1], iu[0]] = G[:, :len(iu[0])]
    return A, G[:, len(iu[0]):]


def bootstrap_fixed(law: Law, pts: Points, theta: np.ndarray, counts: np.ndarray, objective: Objective,
                    max_iter: int = 500, tol: float = 1e-8, chunk: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """The linear solver refitted for each row of point weights ``counts`` (B, n), batched.

    Each IRLS step forms the small normal equations of every resample with one matrix product and
    solves them exactly (:func:`nnls_normal_batch`); a resample leaves the batch once its
    coefficients move by less than ``tol`` (relative). Starts from the full-data fit. The IRLS map
    is over-relaxed (step x1.6; its fixed point, the Huber optimum, is unchanged; an MM map's
    eigenvalues lie in [0, 1), so any factor below 2 still converges), then plain for the last half
    of ``max_iter``.
    Returns (params (B, P), valid)."""
    delta = objective.delta
    Xs, y, scale = _linear_arrays(law, pts, objective)
    n, p = Xs.shape
    iu = np.triu_indices(p)
    M = np.column_stack([Xs[:, iu[0]] * Xs[:, iu[1]], Xs * y[:, None]])
    XT = np.ascontiguousarray(Xs.T)
    c0 = theta * scale
    out = np.full((len(counts), p), np.nan)
    valid = np.ones(len(counts), bool)
    for s in range(0, len(counts), chunk):
        W0 = counts[s:s + chunk].astype(float)
        A, _ = _normal_eq(W0, M, iu, p)
        d = np.sqrt(np.einsum("bii->bi", A))
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.linalg.cond(A / d[:, :, None] / d[:, None, :])
        ok = np.isfinite(cond) & (cond < 1e10)
        valid[s:s + chunk] = ok
        W0 = W0[ok]
        if not len(W0):
            continue
        if delta is None:
            C = nnls_normal_batch(*_normal_eq(W0, M, iu, p))
        else:
            C = np.broadcast_to(c0, (len(W0), p)).copy()
            act = np.arange(len(C))
            for it in range(max_iter):
                # Huber weights min(1, delta/|r|) = delta / max(|r|, delta), in place
                W = np.matmul(C[act], XT)
                np.subtract(y, W, out=W)
                np.abs(W, out=W)
                np.maximum(W, delta, out=W)
                np.divide(delta, W, out=W)
                np.multiply(W, W0[act], out=W)
                C_new = nnls_normal_batch(*_normal_eq(W, M, iu, p))
                if it < max_iter // 2:  # over-relaxed IRLS: same fixed point, about half the steps
                    C_new = np.maximum(C[act] + _OMEGA * (C_new - C[act]), 0.0)
                change = np.max(np.abs(C_new - C[act]), axis=1) / (1 + np.max(np.abs(C_new), axis=1))
                C[act] = C_new
                act = act[change > tol]
                if not len(act):
                    break
        blk = out[s:s + chunk]
        blk[ok] = C
    return out / scale, valid


# ------------------------------------------------------------------------------ nonlinear solver
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


class _Free:
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
    F = _Free(law, pts, objective)
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


# ------------------------------------------------------------------------------ bootstrap
class Draws(NamedTuple):
    """Bootstrap parameter draws (B_valid, P); resamples discarded (unidentified); kept resamples
    whose optimiser did not converge."""
    samples: np.ndarray
    n_discarded: int
    n_not_converged: int


def run_counts(pts: Points, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights per point (B, n): whole runs drawn with replacement."""
    runs, inv = np.unique(pts.run, return_inverse=True)
    R = len(runs)
    counts = rng.multinomial(R, np.full(R, 1.0 / R), size=n_boot)
    return counts[:, inv]


def envelope_counts(law: Law, pts: Points, theta: np.ndarray, n_boot: int, rng: np.random.Generator,
                    select_in_draw: bool = True) -> tuple[Points, np.ndarray]:
    """best-lr: bootstrap weights (B, n_candidates) over every candidate run of ``pts.envelope``, with
    the lr selection redone inside each draw. Returns (the candidates' points, weights).

    One draw: (1) resample units with replacement -- a unit is a shape's lr family at one budget, or
    several when a run spans them (a wsd trunk), so lr siblings travel together as runs do in
    :func:`run_counts`; (2) in every drawn copy of a family, pick the lr with the lowest loss after
    each sibling's log loss is shifted by a relative residual of the envelope fit drawn with
    replacement; (3) the picked run enters the fit with its observed loss (weight +1 per copy).

    Why the shift: a run's final loss is one noisy number, so resampling families alone would pick
    the same winner in every draw and the selection would look free. The residuals of the envelope
    fit are the noise model the run bootstrap already relies on (the scatter of one run about the
    law; it includes misfit, so it errs wide). The shift is used only to choose: the fit sees the
    observed loss, so the loss noise, already carried by resampling runs, is not counted twice.
    Siblings are shifted independently (separate trainings). ``select_in_draw=False`` keeps the
    full-data winners in every draw (selection once, outside): the same resampled units, for
    comparison."""
    env = pts.envelope
    assert env is not None
    cand = env.candidates
    _, fam = np.unique(env.family, return_inverse=True)
    _, unit = np.unique(env.units(), return_inverse=True)
    F, U, n = int(fam.max() + 1), int(unit.max() + 1), len(cand)
    size = np.bincount(fam, minlength=F)
    members = np.full((F, int(size.max())), -1)
    logL = np.full(members.shape, np.inf)         # padding never wins
    order = np.argsort(fam, kind="stable")
    slot = np.arange(n) - np.concatenate([[0], np.cumsum(size)[:-1]])[fam[order]]
    members[fam[order], slot] = order
    logL[fam[order], slot] = np.log(cand.loss[order])
    if not select_in_draw:                         # the full-data winners, in every draw
        logL = np.where(np.isfinite(logL), np.inf, logL)
        win = env.winners()
        logL[fam[win], slot[np.argsort(order)][win]] = 0.0
    unit_of = np.zeros(F, int)
    unit_of[fam] = unit
    r = np.log(pts.loss) - np.log(law.predict(theta, pts.V))
    r = r - np.mean(r)
    copies = rng.multinomial(U, np.full(U, 1.0 / U), size=n_boot)[:, unit_of]   # (B, F) copies of each family
    W = np.zeros((n_boot, n))
    rows = np.arange(n_boot)[:, None]
    for k in range(1, int(copies.max(initial=0)) + 1):   # the k-th copy of every family drawn k times or more
        shift = rng.choice(r, size=(n_boot,) + logL.shape) if select_in_draw and len(r) > 1 else 0.0
        pick = np.broadcast_to(members[np.arange(F), np.argmin(logL[None] + shift, axis=2)], copies.shape)
        np.add.at(W, (np.broadcast_to(rows, pick.shape), pick), copies >= k)   # pick: (B, F) candidate index
    return cand, W


@one_thread
def bootstrap(law: Law, pts: Points, theta: np.ndarray, n_boot: int, rng: np.random.Generator,
              objective: Objective | None = None, select_in_draw: bool = True) -> Draws:
    """Refit on ``n_boot`` resamples of whole runs, starting from ``theta``. For best-lr points
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
        F = _Free(law, pts, objective)
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
