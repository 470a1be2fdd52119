"""The objective of a fit (docs/science.md section 3): ``sum_i w_i rho(r_i)``, r_i the residual of point
i, taken where the user says (:class:`Objective`):

- ``log``: r = log L - log Lhat (relative error, symmetric; the default for free exponents);
- ``relative``: r = (L - Lhat) / L (rows weighted by 1/L; the default for fixed exponents);
- ``absolute``: r = L - Lhat (plain residuals, in the loss's units);

and rho Huber's loss with threshold ``delta`` (1e-3 by default), or plain squares (``delta=None``).
The objective is summed, not averaged. Which solver runs follows from the problem (:meth:`Objective.linear`):
:mod:`linear` or :mod:`nonlinear`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AnalysisError
from .laws import Law

HUBER_DELTA = 1e-3
RESIDUALS = {"log": "log L - log Lhat", "relative": "(L - Lhat)/L", "absolute": "L - Lhat"}


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


def huber_weights(r: np.ndarray, delta: float | None) -> np.ndarray:
    if delta is None:
        return np.ones_like(r)
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300))
