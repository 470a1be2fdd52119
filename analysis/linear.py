"""The linear solver: every exponent fixed and the residual relative or absolute, so the residual is
linear in the coefficients and the problem convex. Each IRLS step is a non-negative least-squares
problem (scipy's nnls for the fit; for the bootstrap, an exact batched solver over the active sets
of the small normal equations)."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy.optimize import nnls

from .errors import AnalysisError
from .laws import Law
from .objective import Objective, huber, huber_weights
from .points import Points

_OMEGA = 1.6

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
        w = w0 * (huber_weights(r, delta) if it > 1 else 1.0)
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
