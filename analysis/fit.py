"""Fitting a law to points, with uncertainty (SCIENCE.md section 3).

- Fixed exponents: the law is linear in (c_1, ..., c_k, L0). Rows are weighted by 1/L (relative
  error, r = (L - Lhat)/L); Huber (delta = 1e-3 by default) by iteratively reweighted least squares;
  each IRLS step is a non-negative least-squares problem (scipy.optimize.nnls for the fit; for the
  bootstrap, an exact batched solver that enumerates the active sets of the small normal equations).
  Convex, one optimum, no starting points.
- Free exponents: Huber (delta = 1e-3) on r = log Lhat - log L with the log-sum-exp
  parameterisation ``log Lhat = LSE(log K, log c_j - a_j log x_j)``; the objective is summed, not
  averaged; L-BFGS-B with tight tolerances from the best starts of a grid, then restarted from the
  best solution until it no longer moves.
- Bootstrap over runs: whole runs are resampled (a run's points move together); percentile intervals
  for every parameter and every derived quantity. Resamples that leave a coefficient unidentified
  (e.g. a single width) are discarded and counted.
- Held-out validation: fit without the largest models / the longest times / one fold of runs,
  predict what was left out, report the relative error.
- Exclusion scan: how the coefficients and derived quantities move as the highest-loss points, or
  the earliest times, are dropped.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
from scipy.optimize import minimize, nnls

from . import derived as dv
from .errors import AnalysisError
from .laws import Law, Term
from .points import Points

HUBER_DELTA = 1e-3
_OMEGA = 1.6
VAR_WORDS = {"tau": "time values", "D": "token counts", "m": "widths", "l": "depths", "N": "model sizes"}


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


def _one_thread(f: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with single_threaded_blas():
            return f(*args, **kwargs)
    return wrapper


# ------------------------------------------------------------------------------ identifiability
def check_identifiable(law: Law, pts: Points, label: str = "") -> list[str]:
    """Raise AnalysisError naming the coefficient the points cannot constrain, and why. Returns
    warnings about weakly constrained coefficients."""
    warns: list[str] = []
    where = f" (variant {label})" if label else ""
    k = len(law.terms)
    n_par = len(law.param_names)
    n = len(pts)
    if n <= n_par:
        raise AnalysisError(f"too few points{where}: {n} point(s) for the {n_par} parameters of law "
                            f"{law.name!r} ({', '.join(law.param_names)}); need at least {n_par + 1}")
    if np.ptp(np.log(pts.loss)) <= 1e-9:
        # a flat loss fits any law exactly: the optimiser stops wherever it starts and the bootstrap,
        # resampling identical values, returns zero-width intervals that look confident
        raise AnalysisError(f"the loss is the same at every point{where} ({pts.loss_name} = {pts.loss[0]:g} "
                            f"at all {n} points): it does not vary with {', '.join(law.variables)}, so "
                            f"{', '.join(p for p in law.param_names if p != law.constant)} cannot be "
                            f"determined; check the loss column")
    for t in law.terms:
        x = pts.V[t.var]
        nd = len(np.unique(x))
        need = 2 if t.exponent is not None else 3
        if nd < need:
            why = (f"{t.coef}/{t.var} is indistinguishable from the constant {law.constant}"
                   if nd < 2 else f"the exponent {t.exp_name} and {t.coef} cannot both be fitted")
            vals = ", ".join(f"{v:g}" for v in np.unique(x)[:5])
            raise AnalysisError(f"{t.coef} cannot be identified{where}: only {nd} distinct "
                                f"{VAR_WORDS.get(t.var, t.var)} ({t.var} = {vals}); {why}. Need at least "
                                f"{need} distinct values of {t.var}")
    # variables that move together (a log-linear relation) cannot be separated with free exponents
    vars_ = [t.var for t in law.terms]
    why = "their columns are linearly dependent over these points"
    if k >= 2:
        Z = np.column_stack([np.ones(n)] + [np.log(pts.V[v]) for v in vars_])
        Z = np.unique(Z, axis=0)
        Zc = Z[:, 1:] - Z[:, 1:].mean(0)
        sd = Zc.std(0)
        sd[sd == 0] = 1
        _, s, vt = np.linalg.svd(Zc / sd, full_matrices=False)
        if len(s) == k and s[-1] / s[0] < 1e-6:
            null = np.abs(vt[-1]) > 1e-3
            involved = [law.terms[i] for i in np.flatnonzero(null)]
            msg = (f"{' and '.join(t.coef for t in involved)} cannot be separated{where}: "
                   f"{', '.join(t.var for t in involved)} vary together (log-linearly related across "
                   f"all points, e.g. a fixed aspect ratio or tokens-per-parameter)")
            if not law.fixed or any(t.exponent is None for t in involved):
                raise AnalysisError(msg + "; vary them independently")
            why = (f"{', '.join(t.var for t in involved)} vary together (log-linearly related across all "
                   f"points, e.g. a fixed aspect ratio or tokens-per-parameter)")
            warns.append(msg + ": they are separated only through the assumed exponents")
    if law.fixed:
        X = law.design(pts.V) / pts.loss[:, None]
        Xs = X / np.linalg.norm(X, axis=0)
        _, s, vt = np.linalg.svd(Xs, full_matrices=False)
        if s[-1] / s[0] < 1e-9:
            names = law.coef_names + [law.constant]
            inv_names = [names[i] for i in np.flatnonzero(np.abs(vt[-1]) > 1e-3)]
            raise AnalysisError(f"{' and '.join(inv_names)} cannot be separated{where}: {why}")
        if s[-1] / s[0] < 1e-4:
            warns.append(f"the design is ill-conditioned (condition number {s[0] / s[-1]:.3g}): "
                         f"expect wide intervals")
    return warns


BOUND_REL = 1e-6     # a term below this fraction of the loss at every point is at its bound 0


def _term_text(t: Term) -> str:
    """c_m/m, c_tau/tau^0.333, A/N^alpha."""
    if t.exponent == 1:
        return f"{t.coef}/{t.var}"
    return f"{t.coef}/{t.var}^{t.exp_name or format(t.exponent, '.3g')}"


def parameter_flags(law: Law, theta: np.ndarray, pts: Points, samples: np.ndarray) -> dict[str, dict[str, Any]]:
    """Parameters whose value is not an estimate: {name: {"flag", "meaning"}}.

    - ``at_bound``: a coefficient (or the constant) whose term is below BOUND_REL of the loss at every
      point. NNLS puts it at exactly 0; the free fit's log-parameterisation drives it towards 0
      (L0 = 1e-12) without reaching it. Its interval is the bound, not an uncertainty.
    - ``unidentified``: the exponent of a term at its bound (it no longer changes the fit), or a
      parameter whose bootstrap interval has zero width (the fit does not move with the data:
      the optimiser stops where it starts, which is not an exact value)."""
    flags: dict[str, dict[str, Any]] = {}
    Lmin = float(np.min(pts.loss))
    const = float(theta[law.param_names.index(law.constant)])
    if const < BOUND_REL * Lmin:
        flags[law.constant] = {"flag": "at_bound", "meaning": (
            f"{law.constant} = {const:.3g} sits on its lower bound 0: the data show no measurable constant; "
            f"its value is the bound, not an estimate (read the interval's upper end as an upper limit)")}
    for j, t in enumerate(law.terms):
        with np.errstate(all="ignore"):
            share = np.max(law.term_value(theta, j, pts.V[t.var]) / pts.loss)
        if not share >= BOUND_REL:
            flags[t.coef] = {"flag": "at_bound", "meaning": (
                f"{t.coef} = {theta[law.param_names.index(t.coef)]:.3g} sits on its lower bound 0: its term "
                f"{_term_text(t)} is below {BOUND_REL:g} of the loss at every point, so the data show "
                f"no measurable {t.var} term; its value is the bound, not an estimate (read the interval's "
                f"upper end as an upper limit), and quantities that divide by it are unbounded")}
            if t.exp_name is not None:
                flags[t.exp_name] = {"flag": "unidentified", "meaning": (
                    f"{t.exp_name} is not determined: its term's coefficient {t.coef} is at its bound 0, "
                    f"so {t.exp_name} has no effect on the fit")}
    if len(samples) >= 10:
        for i, name in enumerate(law.param_names):
            s = samples[:, i]
            s = s[np.isfinite(s)]
            if name not in flags and len(s) >= 10 and np.ptp(s) <= 1e-9 * max(abs(theta[i]), 1e-300):
                flags[name] = {"flag": "unidentified", "meaning": (
                    f"{name} is not determined by the data: every bootstrap resample returned "
                    f"{theta[i]:.4g} (an interval of zero width), i.e. the fit does not move with the "
                    f"data; the value is where the optimiser stopped, not an exact estimate")}
    return flags


# ------------------------------------------------------------------------------ fixed exponents
def _huber_w(r: np.ndarray, delta: float | None) -> np.ndarray:
    if delta is None:
        return np.ones_like(r)
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))


def huber(r: np.ndarray, delta: float | None) -> np.ndarray:
    if delta is None:
        return 0.5 * r * r
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


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


def _fixed_arrays(law: Law, pts: Points) -> tuple[np.ndarray, np.ndarray]:
    X = law.design(pts.V) / pts.loss[:, None]        # rows weighted by 1/L; target is then 1
    scale = np.linalg.norm(X, axis=0) / np.sqrt(len(X))
    return X / scale, scale


def fit_fixed(law: Law, pts: Points, delta: float | None = HUBER_DELTA, weights: np.ndarray | None = None,
              max_iter: int = 500, tol: float = 1e-12) -> tuple[np.ndarray, dict[str, Any]]:
    """NNLS in relative error, Huber by IRLS. Returns (params, info)."""
    Xs, scale = _fixed_arrays(law, pts)
    n = len(Xs)
    w0 = np.ones(n) if weights is None else np.asarray(weights, float)
    c = np.zeros(Xs.shape[1])
    it = 0
    for it in range(1, max_iter + 1):
        r = 1 - Xs @ c
        w = w0 * (_huber_w(r, delta) if it > 1 else 1.0)
        sw = np.sqrt(w)
        c_new, _ = nnls(Xs * sw[:, None], sw, maxiter=50 * Xs.shape[1])
        done = np.max(np.abs(c_new - c)) <= tol * (1 + np.max(np.abs(c_new)))
        c = c_new
        if done or delta is None:
            break
    r = 1 - Xs @ c
    info = {"method": "NNLS on rows weighted by 1/L" + (f", Huber delta={delta:g} by IRLS" if delta else ""),
            "iterations": it, "converged": bool(delta is None or it < max_iter),
            "objective": float(np.sum(w0 * huber(r, delta)))}
    return c / scale, info


def _normal_eq(W: np.ndarray, M: np.ndarray, iu: tuple[np.ndarray, np.ndarray], p: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """A (B, p, p) and b (B, p) of the weighted problems from one product W @ M, where M holds the
    upper-triangle products x_i x_j of every row, then x."""
    G = W @ M
    A = np.empty((len(W), p, p))
    A[:, iu[0], iu[1]] = G[:, :len(iu[0])]
    A[:, iu[1], iu[0]] = G[:, :len(iu[0])]
    return A, G[:, len(iu[0]):]


def bootstrap_fixed(law: Law, pts: Points, theta: np.ndarray, counts: np.ndarray, delta: float | None,
                    max_iter: int = 500, tol: float = 1e-8, chunk: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """Refit for each row of point weights ``counts`` (B, n), batched.

    Each IRLS step forms the small normal equations of every resample with one matrix product and
    solves them exactly (:func:`nnls_normal_batch`); a resample leaves the batch once its
    coefficients move by less than ``tol`` (relative). Starts from the full-data fit. The IRLS map
    is over-relaxed (step x1.6; its fixed point, the Huber optimum, is unchanged; an MM map's
    eigenvalues lie in [0, 1), so any factor below 2 still converges), then plain for the last half
    of ``max_iter``.
    Returns (params (B, P), valid)."""
    Xs, scale = _fixed_arrays(law, pts)
    n, p = Xs.shape
    iu = np.triu_indices(p)
    M = np.column_stack([Xs[:, iu[0]] * Xs[:, iu[1]], Xs])
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
                np.subtract(1.0, W, out=W)
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


# ------------------------------------------------------------------------------ free exponents
class _Free:
    """Huber on log L with the log-sum-exp parameterisation. Internal parameters:
    [log c_1..log c_k, log K, free exponents]."""

    def __init__(self, law: Law, pts: Points, delta: float | None):
        self.law, self.delta = law, delta
        self.k = len(law.terms)
        self.lx = np.stack([np.log(pts.V[t.var]) for t in law.terms])       # (k, n)
        self.y = np.log(pts.loss)
        self.free = [j for j, t in enumerate(law.terms) if t.exponent is None]
        self.fixed_exp = np.array([t.exponent if t.exponent is not None else 0.0 for t in law.terms])

    def _alpha(self, th: np.ndarray) -> np.ndarray:
        a = np.broadcast_to(self.fixed_exp, th.shape[:-1] + (self.k,)).copy()
        a[..., self.free] = th[..., self.k + 1:]
        return a

    def objective(self, th: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
        k = self.k
        alpha = self._alpha(th)
        Z = np.empty((k + 1, self.lx.shape[1]))
        Z[0] = th[k]
        Z[1:] = th[:k, None] - alpha[:, None] * self.lx
        zmax = Z.max(0)
        Ez = np.exp(Z - zmax)
        S = Ez.sum(0)
        r = zmax + np.log(S) - self.y
        Pz = Ez / S
        if self.delta is None:
            rho, psi = 0.5 * r * r, r
        else:
            a = np.abs(r)
            rho = np.where(a <= self.delta, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))
            psi = np.clip(r, -self.delta, self.delta)
        gz = (w * psi) * Pz
        g = np.empty_like(th)
        g[k] = gz[0].sum()
        g[:k] = gz[1:].sum(1)
        for i, j in enumerate(self.free):
            g[k + 1 + i] = -(gz[1 + j] * self.lx[j]).sum()
        return float(np.sum(w * rho)), g

    def objective_many(self, TH: np.ndarray, w: np.ndarray, chunk: int = 512) -> np.ndarray:
        k = self.k
        out = np.empty(len(TH))
        for s in range(0, len(TH), chunk):
            th = TH[s:s + chunk]
            alpha = self._alpha(th)
            Z = np.concatenate([np.broadcast_to(th[:, k, None, None], (len(th), 1, self.lx.shape[1])),
                                th[:, :k, None] - alpha[:, :, None] * self.lx[None]], axis=1)
            zmax = Z.max(1)
            r = zmax + np.log(np.exp(Z - zmax[:, None]).sum(1)) - self.y
            out[s:s + chunk] = (w * huber(r, self.delta)).sum(1)
        return out

    def grid(self, pts: Points) -> np.ndarray:
        """Starting points: log K at 10-90% of the smallest loss; per term, exponents 0.25-1.5 and
        coefficients that make the term 5-60% of the smallest loss at the term's typical x."""
        Lmin = float(np.min(pts.loss))
        logK = np.log(Lmin * np.array([0.1, 0.4, 0.7, 0.9]))
        gm = self.lx.mean(1)
        per_term = []
        for j, t in enumerate(self.law.terms):
            alphas = [t.exponent] if t.exponent is not None else [0.25, 0.5, 1.0, 1.5]
            per_term.append([(np.log(sz * Lmin) + a * gm[j], a) for a in alphas for sz in (0.05, 0.2, 0.6)])
        rows = []
        for K in logK:
            for combo in itertools.product(*per_term):
                rows.append([c for c, _ in combo] + [K] + [a for (c, a), t in zip(combo, self.law.terms)
                                                           if t.exponent is None])
        return np.array(rows)

    def to_params(self, th: np.ndarray) -> np.ndarray:
        k = self.k
        return np.concatenate([np.exp(th[..., :k + 1]), th[..., k + 1:]], axis=-1)

    def from_params(self, theta: np.ndarray) -> np.ndarray:
        k = self.k
        with np.errstate(divide="ignore"):
            return np.concatenate([np.log(np.maximum(theta[..., :k + 1], 1e-300)), theta[..., k + 1:]], axis=-1)

    def minimize(self, th0: np.ndarray, w: np.ndarray, max_restarts: int = 4) -> tuple[np.ndarray, float, str, int]:
        th, f_prev, msg, n_restart = np.asarray(th0, float), np.inf, "", 0
        for n_restart in range(max_restarts + 1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = minimize(self.objective, th, args=(w,), jac=True, method="L-BFGS-B",
                               options={"maxiter": 20000, "maxfun": 50000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 30})
            moved = f_prev - res.fun
            th, msg = res.x, str(res.message)
            if n_restart > 0 and moved <= 1e-12 * max(1.0, abs(res.fun)):
                f_prev = res.fun
                break
            f_prev = res.fun
        return th, float(f_prev), msg, n_restart


def fit_free(law: Law, pts: Points, delta: float | None = HUBER_DELTA, weights: np.ndarray | None = None,
             n_starts: int = 12, start: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Free-exponent fit. With ``start`` (params), only that start is used (warm start)."""
    F = _Free(law, pts, delta)
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, float)
    if start is not None:
        starts = [F.from_params(np.asarray(start, float))]
        n_grid = 0
    else:
        G = F.grid(pts)
        n_grid = len(G)
        f = F.objective_many(G, w)
        order = np.argsort(f)[:n_starts]
        starts = list(G[order])
    best: tuple[np.ndarray, float, str] | None = None
    for th0 in starts:
        th, fval, msg, nr = F.minimize(th0, w, max_restarts=1)
        if best is None or fval < best[1]:
            best = (th, fval, msg)
    assert best is not None  # starts is never empty
    th, fval, msg, nr = F.minimize(best[0], w)   # restart from the best until it no longer moves
    info = {"method": f"Huber delta={delta:g} on log L, log-sum-exp parameterisation, summed objective, "
                      f"L-BFGS-B (ftol 1e-15, gtol 1e-12)" if delta else "least squares on log L, L-BFGS-B",
            "grid_starts": n_grid, "lbfgs_starts": len(starts), "objective": fval,
            "restart_improvement": float(best[1] - fval), "restarts": nr, "message": msg,
            "converged": bool(best[1] - fval <= 1e-9 * max(1.0, abs(fval)) or nr < 4)}
    return F.to_params(th), info


@_one_thread
def fit_law(law: Law, pts: Points, delta: float | None = HUBER_DELTA, weights: np.ndarray | None = None,
            start: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    if law.fixed:
        return fit_fixed(law, pts, delta, weights)
    return fit_free(law, pts, delta, weights, start=start)


# ------------------------------------------------------------------------------ bootstrap
def run_counts(pts: Points, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights per point (B, n): whole runs drawn with replacement."""
    runs, inv = np.unique(pts.run, return_inverse=True)
    R = len(runs)
    counts = rng.multinomial(R, np.full(R, 1.0 / R), size=n_boot)
    return counts[:, inv]


@_one_thread
def bootstrap(law: Law, pts: Points, theta: np.ndarray, n_boot: int, rng: np.random.Generator,
              delta: float | None = HUBER_DELTA) -> tuple[np.ndarray, int]:
    """Bootstrap parameter samples (B_valid, P) over runs, and the number of discarded resamples."""
    counts = run_counts(pts, n_boot, rng)
    if law.fixed:
        samples, valid = bootstrap_fixed(law, pts, theta, counts, delta)
    else:
        samples = np.full((n_boot, len(theta)), np.nan)
        valid = np.ones(n_boot, bool)
        F = _Free(law, pts, delta)
        th0 = F.from_params(theta)
        for b in range(n_boot):
            w = counts[b].astype(float)
            used = w > 0
            ok = all(len(np.unique(pts.V[t.var][used])) >= (2 if t.exponent is not None else 3)
                     for t in law.terms)
            if not ok:
                valid[b] = False
                continue
            th, _, _, _ = F.minimize(th0, w, max_restarts=1)
            samples[b] = F.to_params(th)
    return samples[valid], int((~valid).sum())


# ------------------------------------------------------------------------------ results
def interval(value: float, samples: np.ndarray, ci: float) -> dict[str, Any]:
    """Percentile interval: {value, lo, hi, se, n}. Non-finite samples are dropped and counted."""
    s = np.asarray(samples, float)
    s_ok = s[~np.isnan(s)]
    q = (1 - ci) / 2
    out: dict[str, Any] = {"value": float(value)}
    if len(s_ok) >= 2:
        out["lo"] = float(np.quantile(s_ok, q, method="lower"))
        out["hi"] = float(np.quantile(s_ok, 1 - q, method="higher"))
        fin = s_ok[np.isfinite(s_ok)]
        out["se"] = float(np.std(fin, ddof=1)) if len(fin) >= 2 else float("nan")
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
                               "params": {n: self.param_interval(n) for n in law.coef_names + [law.constant]}}
        if law.exp_names:
            out["exponents"] = {n: self.param_interval(n) for n in law.exp_names}
            out["universality_test"] = universality_test(self)
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
        out["fit"] = dict(self.info)
        r = self.residuals
        out["fit"].update({"rms_rel_error": self.rms_rel_error, "mean_rel_error": float(np.mean(r)),
                           "max_abs_rel_error": float(np.max(np.abs(r)))})
        by_cell: dict[str, dict[str, Any]] = {}
        for c in dict.fromkeys(self.points.cell.tolist()):
            m = self.points.cell == c
            by_cell[c] = {"n": int(m.sum()), "rms_rel": float(np.sqrt(np.mean(r[m] ** 2))),
                          "mean_rel": float(np.mean(r[m]))}
        out["residuals"] = {"definition": "(L - Lhat) / L", "by_cell": by_cell}
        out["holdout"] = self.holdout
        out["exclusion_scan"] = self.scan
        out["warnings"] = self.warnings + self.ctx.warnings
        return out


def universality_test(vf: VariantFit) -> dict[str, Any]:
    """Whether the universality exponents (time 1/3, width 1, depth 1) lie inside the intervals."""
    target = {"tau": 1 / 3, "D": 1 / 3, "m": 1.0, "l": 1.0}
    res: dict[str, Any] = {}
    found: list[bool | None] = []
    for t in vf.law.terms:
        if t.exp_name is None or t.var not in target:
            continue
        iv = vf.param_interval(t.exp_name)
        # an unidentified exponent, or no interval (n_boot = 0), cannot confirm or reject the value
        inside = None if t.exp_name in vf.flags or not np.isfinite(iv["lo"]) else bool(
            iv["lo"] <= target[t.var] <= iv["hi"])
        res[t.exp_name] = {"universal": target[t.var], "inside_interval": inside,
                           "value": iv["value"], "lo": iv["lo"], "hi": iv["hi"]}
        found.append(inside)
    if not found:
        res["all_inside"] = res["verdict"] = None
    elif False in found:
        res["all_inside"], res["verdict"] = False, "not consistent"
    elif None in found:
        res["all_inside"], res["verdict"] = None, "undetermined"
    else:
        res["all_inside"], res["verdict"] = True, "consistent"
    return res


def _derive(law: Law, theta: np.ndarray, ctx: dv.Context) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sc, fr = dv.derived(law, theta, ctx)
    return sc, fr


def rel_residuals(law: Law, theta: np.ndarray, pts: Points) -> np.ndarray:
    return (pts.loss - law.predict(theta, pts.V)) / pts.loss


def holdout_checks(law: Law, pts: Points, theta: np.ndarray, delta: float | None, rng: np.random.Generator,
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
        out.append(_holdout_one(law, pts, theta, delta, ~test, test, name))
    runs = np.unique(pts.run)
    if len(runs) >= 2 * k_folds:
        fold = rng.permutation(len(runs)) % k_folds
        fold_of = dict(zip(runs, fold))
        f = np.array([fold_of[r] for r in pts.run])
        errs, n_ok, reasons = [], 0, []
        for i in range(k_folds):
            r = _holdout_one(law, pts, theta, delta, f != i, f == i, "")
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


def _holdout_one(law: Law, pts: Points, theta: np.ndarray, delta: float | None, train: np.ndarray, test: np.ndarray,
                 name: str) -> dict[str, Any]:
    if not np.any(test) or not np.any(train):
        return {"name": name, "skipped": "nothing to hold out"}
    tr = pts.subset(train)
    try:
        check_identifiable(law, tr)
        th, _ = fit_law(law, tr, delta, start=None if law.fixed else theta)
    except AnalysisError as e:
        return {"name": name, "skipped": f"the remaining points cannot constrain the law: {e}"}
    te = pts.subset(test)
    err = rel_residuals(law, th, te)
    return {"name": name, "n_train": int(train.sum()), "n_test": int(test.sum()),
            "mean_abs_rel_error": float(np.mean(np.abs(err))), "rms_rel_error": float(np.sqrt(np.mean(err ** 2))),
            "max_abs_rel_error": float(np.max(np.abs(err))), "mean_rel_error": float(np.mean(err)), "_err": err}


def exclusion_scan(law: Law, pts: Points, theta: np.ndarray, delta: float | None, ctx: dv.Context,
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
            th, _ = fit_law(law, sub, delta, start=None if law.fixed else theta)
        except AnalysisError as e:
            row["skipped"] = str(e)
            out.append(row)
            continue
        row["params"] = dict(zip(law.param_names, map(float, th)))
        sc, _ = _derive(law, th, ctx)
        for k in keys:
            if k in sc:
                row[k] = float(sc[k][0])
        out.append(row)
    return out


def fit_variant(law: Law, pts: Points, label: str, n_boot: int, rng: np.random.Generator,
                delta: float | None = HUBER_DELTA, ci: float = 0.95, checks: bool = True) -> VariantFit:
    warn = check_identifiable(law, pts, label)
    theta, info = fit_law(law, pts, delta)
    # nothing but the constant measurable: every other parameter would be reported from where the
    # optimiser stopped, so this is an error rather than a table of flags
    at_start = parameter_flags(law, theta, pts, np.empty((0, len(theta))))
    if all(at_start.get(t.coef, {}).get("flag") == "at_bound" for t in law.terms):
        raise AnalysisError(f"every term of law {law.name!r} is at its bound 0"
                            f"{' (variant ' + label + ')' if label else ''}: "
                            f"{', '.join(map(_term_text, law.terms))} stay below {BOUND_REL:g} of the loss at "
                            f"every point, so the loss does not vary measurably with {', '.join(law.variables)} "
                            f"and {', '.join(p for p in law.param_names if p != law.constant)} cannot be "
                            f"determined")
    if not info.get("converged", True):
        warn.append("the optimiser did not converge: " + str(info.get("message", "")))
    ctx = dv.make_context(law, pts, pts.time or "tau_lr")
    n_runs = pts.n_runs
    if n_runs < 2 and n_boot > 0:
        raise AnalysisError(f"too few runs{' (variant ' + label + ')' if label else ''}: the bootstrap "
                            f"resamples whole runs and there is only {n_runs}")
    if n_runs < 10 and n_boot > 0:
        warn.append(f"only {n_runs} runs to resample: bootstrap intervals are rough")
    if n_boot > 0:
        samples, n_bad = bootstrap(law, pts, theta, n_boot, rng, delta)
        if n_bad > 0.05 * n_boot:
            warn.append(f"{n_bad} of {n_boot} bootstrap resamples could not identify every coefficient "
                        f"(too few distinct widths/depths/times among the drawn runs) and were discarded: "
                        f"the intervals are conditional on identifiable resamples")
    else:
        samples, n_bad = np.empty((0, len(theta))), 0
    if n_boot == 0:
        warn.append("n_boot = 0: no bootstrap, so no intervals (lo/hi are null)")
    for t in law.terms:
        if t.exp_name is not None and len(samples) >= 10:
            i = law.param_names.index(t.exp_name)
            lo, hi = np.quantile(samples[:, i], [(1 - ci) / 2, (1 + ci) / 2])
            if hi - lo > abs(theta[i]):
                warn.append(f"{t.exp_name} is poorly constrained by these points: {theta[i]:.3g} with interval "
                            f"[{lo:.3g}, {hi:.3g}], wider than the value itself")
    vars_ = set(law.variables)
    if {"m", "l"} <= vars_:
        nm, nl = len(np.unique(pts.V["m"])), len(np.unique(pts.V["l"]))
        if nm < 3 or nl < 3:
            warn.append(f"grid design: {nm} widths and {nl} depths; at least 3 of each (varied independently, "
                        f"m/l spanning about x8) are needed to pin c_m against c_l")
    sc, fr = _derive(law, theta, ctx)
    if "m_over_l_star" in sc and ctx.aspect is not None and law.fixed and np.isfinite(sc["m_over_l_star"][0]):
        x = ctx.aspect / sc["m_over_l_star"][0]
        lo5, hi5 = dv.penalty_band(0.05)
        if np.min(x) > lo5 and np.max(x) < hi5:
            warn.append("every shape lies within the 5% penalty band around the optimal aspect ratio: "
                        "such shapes carry little information about c_l against c_m")
    if len(samples):
        sc_b, fr_b = _derive(law, samples, ctx)
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
                    frontier_samples=fr_b, residuals=res, warnings=warn, ci=ci, flags=flags)
    if checks:
        vf.holdout = holdout_checks(law, pts, theta, delta, rng)
        vf.scan = exclusion_scan(law, pts, theta, delta, ctx)
    return vf


# ------------------------------------------------------------------------------ entry point
@dataclass
class FitResult:
    """Fits of one law to every variant of a table. ``to_json()`` for scripts, ``table_markdown()``
    for people."""
    law: Law
    options: dict[str, Any]
    notes: list[str]
    exclusions: list[dict[str, Any]]
    variants: dict[str, VariantFit]

    def to_dict(self) -> dict[str, Any]:
        law = self.law
        return {
            "schema": "scaling-grid/fit/1",
            "law": {"name": law.name, "formula": law.formula, "params": law.param_names,
                    "fixed_exponents": {t.var: t.exponent for t in law.terms if t.exponent is not None},
                    "description": law.description},
            "options": self.options,
            "selection": {"notes": self.notes, "exclusions": self.exclusions},
            "interval": f"{100 * self.options['ci']:g}% percentile bootstrap over runs",
            "variants": {v: f.to_dict() for v, f in self.variants.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        import json
        return json.dumps(_jsonable(self.to_dict()), indent=indent, allow_nan=False)

    def table_markdown(self) -> str:
        from .tables import coefficient_table
        return coefficient_table(self, "markdown")

    def table_csv(self) -> str:
        from .tables import coefficient_table
        return coefficient_table(self, "csv")

    def table_latex(self) -> str:
        from .tables import coefficient_table
        return coefficient_table(self, "latex")


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


@_one_thread
def run_fit(table: Mapping[str, Iterable[Any]], law: str | Law = "universality", loss: str = "eval",
            time: str | None = None, *, points: str = "final", min_tau: float | None = None, drop_highest: int = 0,
            exclude_variants: Iterable[str] = (), exclude_cells: Iterable[str] = (),
            variants: Iterable[str] | None = None, depth_offset: float = 0.0,
            nan_policy: str = "raise", huber_delta: float | None = HUBER_DELTA, n_boot: int = 1000,
            ci: float = 0.95, seed: int = 0, checks: bool = True) -> FitResult:
    """Fit ``law`` to every variant of ``table`` (see ``analysis/__init__.py`` for the options)."""
    from . import laws as L
    from .points import select_points
    lw = L.get(law) if isinstance(law, str) else law
    if not 0 < ci < 1:
        raise AnalysisError(f"ci={ci!r}: must be in (0, 1), e.g. 0.95")
    if n_boot < 0:
        raise AnalysisError(f"n_boot={n_boot!r}: must be >= 0")
    if huber_delta is not None and not huber_delta > 0:
        raise AnalysisError(f"huber_delta={huber_delta!r}: must be > 0 (or None for least squares)")
    pts = select_points(table, lw, loss=loss, time=time, points=points, min_tau=min_tau,
                        drop_highest=drop_highest, exclude_variants=exclude_variants,
                        exclude_cells=exclude_cells, variants=variants, depth_offset=depth_offset,
                        nan_policy=nan_policy)
    rng = np.random.default_rng(seed)
    fits = {}
    for v in pts.variants:
        sub = pts.subset(pts.variant == v)
        fits[v] = fit_variant(lw, sub, v, n_boot, np.random.default_rng(rng.integers(2 ** 63)),
                              huber_delta, ci, checks)
    options = {"law": lw.name, "loss": loss, "loss_column": pts.loss_name, "time": pts.time,
               "time_column": pts.time_name, "points": points, "min_tau": min_tau,
               "drop_highest": int(drop_highest), "exclude_variants": sorted(map(str, exclude_variants)),
               "exclude_cells": sorted(map(str, exclude_cells)),
               "variants": None if variants is None else sorted(map(str, variants)),
               "depth_offset": depth_offset, "nan_policy": nan_policy, "huber_delta": huber_delta,
               "n_boot": n_boot, "ci": ci, "seed": seed}
    return FitResult(lw, options, pts.notes, pts.exclusions, fits)
