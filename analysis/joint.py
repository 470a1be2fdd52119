"""The joint least-squares problem of the cross-variant universality test (:mod:`compare`): the law
with free exponents fitted to several variants at once, its exponents shared or per variant, and
the F-test between the two. :mod:`power` refits it on synthetic tables.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from scipy.optimize import minimize

from .laws import Law, parse
from .nonlinear import LogSumExpProblem
from .objective import Objective
from .points import Points


def free_law(law: Law) -> Law | None:
    """``law`` with every fixed exponent made a fitted one (``alpha_<var>``); tied exponents stay
    tied. None where two terms share a variable (the per-variable exponent would be ambiguous)."""
    if len({t.var for t in law.terms}) < len(law.terms) or not law.terms:
        return None
    parts = [law.constant]
    for t in law.terms:
        parts.append(f"{t.coef}/{t.var}^{t.exp_name or 'alpha_' + t.var}")
    return parse(f"{law.name}-free-exponents", " + ".join(parts))


def term_of(law: Law, exp_name: str) -> int:
    """The index of the first term whose exponent is ``exp_name``."""
    return next(j for j, t in enumerate(law.terms) if t.exp_name == exp_name)


class Joint:
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
        return [np.concatenate([x[..., v * nc:(v + 1) * nc], x[..., base:base + ne] if self.shared
                                else x[..., base + v * ne:base + (v + 1) * ne]], axis=-1) for v in range(self.V)]

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

    def log_pred(self, v: int, th: np.ndarray) -> np.ndarray:
        """log Lhat of variant v at its internal parameters (log c..., log K, exponents): (..., n_v)
        for parameters (..., P)."""
        Z = self._z(v, th)
        zmax = Z.max(-2)
        return np.asarray(zmax + np.log(np.exp(Z - zmax[..., None, :]).sum(-2)))

    def _z(self, v: int, th: np.ndarray) -> np.ndarray:
        """The log-sum-exp's terms (..., k + 1, n_v): log K, then log c_j - alpha_j log x_j."""
        F = self.F[v]
        n = F.lx.shape[1]
        const = np.broadcast_to(th[..., F.kc, None, None], th.shape[:-1] + (1, n))
        return np.concatenate([const, th[..., F.ci, None] - F._alpha(th)[..., :, None] * F.lx], axis=-2)

    def fit_near(self, X0: np.ndarray, ys: list[np.ndarray], max_iter: int = 100) -> np.ndarray:
        """The objective's minimum (sum r^2 / 2) for each of D synthetic tables (``ys``: per variant,
        log losses (D, n_v)) from its start (``X0``: (D, P)), by Levenberg-Marquardt steps with the
        analytic Jacobian, batched over the tables: the same least squares as :meth:`fit`, for the
        power simulation's many refits started near the optimum (L-BFGS-B one table at a time costs
        about 100x more). A table stops when an accepted step gains less than 1e-8 of its objective
        (the F statistic needs it to far better than q/n)."""
        X = np.array(X0, float)
        R = self.residuals(X, ys)
        f = 0.5 * np.sum(R ** 2, axis=-1)
        lam = np.full(len(X), 1e-3)
        live = np.ones(len(X), bool)
        J = self.residual_jacobian(X)
        eye = np.arange(X.shape[-1])
        for _ in range(max_iter):
            if not live.any():
                break
            Jt = np.swapaxes(J, -1, -2)
            A = Jt @ J
            g = Jt @ R[..., None]
            dg = A[:, eye, eye]   # Marquardt's scaling (damp each parameter by its curvature), floored: a dead column
            A[:, eye, eye] = dg * (1 + lam[:, None]) + lam[:, None] * 1e-9 * dg.max(-1, keepdims=True) + 1e-300
            step = -np.linalg.solve(A, g)[..., 0]
            with np.errstate(over="ignore", invalid="ignore"):   # a wild trial step: rejected below
                R_new = self.residuals(X + step, ys)
                f_new = np.nan_to_num(0.5 * np.sum(R_new ** 2, axis=-1), nan=np.inf)
            ok = live & (f_new <= f)
            gain = np.where(ok, f - f_new, 0.0)
            X[ok] += step[ok]
            R[ok], f[ok] = R_new[ok], f_new[ok]
            lam = np.where(ok, lam / 3, lam * 4)
            live &= ~(ok & (gain <= 1e-8 * f)) & (lam < 1e12)
            if ok.any():
                J[ok] = self.residual_jacobian(X[ok])
        return f

    def residuals(self, x: np.ndarray, ys: list[np.ndarray] | None = None) -> np.ndarray:
        """log L - log Lhat at every point, variant after variant: (..., n) for parameters (..., P);
        ``ys`` replaces the variants' log losses."""
        ys = [F.y for F in self.F] if ys is None else ys
        return np.concatenate([y - self.log_pred(v, th) for v, (y, th) in enumerate(zip(ys, self.split(x)))],
                              axis=-1)

    def residual_jacobian(self, x: np.ndarray) -> np.ndarray:
        """d residuals / d x, (..., n, P) for parameters (..., P) (their layout: class docstring)."""
        nc, ne, base = self.nc, self.ne, self.V * self.nc
        parts = [self.jacobian(v, th) for v, th in enumerate(self.split(x))]
        J = np.zeros(x.shape[:-1] + (sum(p.shape[-2] for p in parts), x.shape[-1]))
        off = 0
        for v, Jv in enumerate(parts):
            rows = slice(off, off + Jv.shape[-2])
            J[..., rows, v * nc:(v + 1) * nc] = -Jv[..., :nc]
            e0 = base if self.shared else base + v * ne
            J[..., rows, e0:e0 + ne] = -Jv[..., nc:]
            off += Jv.shape[-2]
        return J

    def jacobian(self, v: int, th: np.ndarray) -> np.ndarray:
        """d log Lhat / d (log c..., log K, exponents) of variant v at its internal parameters:
        (..., n_v, P) for parameters (..., P)."""
        F = self.F[v]
        Z = self._z(v, th)
        W = np.exp(Z - Z.max(-2, keepdims=True))
        W /= W.sum(-2, keepdims=True)
        J = np.zeros(th.shape[:-1] + (F.lx.shape[1], th.shape[-1]))
        J[..., F.kc] = W[..., 0, :]
        for j in range(F.k):
            J[..., F.ci[j]] += W[..., 1 + j, :]
        for j, e in zip(F.free, F.free_idx):
            J[..., e] -= W[..., 1 + j, :] * F.lx[j]
        return J


def f_test(rss_shared: float, rss_separate: float, q: int, dof: int) -> tuple[float, float]:
    """(F, p) of the extra-sum-of-squares test (module docstring)."""
    F_stat = ((rss_shared - rss_separate) / q) / (rss_separate / dof) if rss_separate > 0 else float("inf")
    return float(F_stat), float(stats.f.sf(F_stat, q, dof))
