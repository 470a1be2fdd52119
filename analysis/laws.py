"""Scaling laws, each defined by a short formula.

A law is a constant plus power-law terms, ``L = K + c_1/x_1^a_1 + ... + c_k/x_k^a_k``, written as a
string and parsed here::

    universality       L0 + c_tau/tau^(1/3) + c_m/m + c_l/l
    universality-free  L0 + c_tau/tau^alpha_tau + c_m/m^alpha_m + c_l/l^alpha_l
    chinchilla         E + A/N^alpha + B/D^beta

An exponent that is a number (``1/3``, ``1``, ``(1/3)``) is fixed; one that is a name is fitted.
Variables: ``tau`` and ``D`` are the time variable (tau_lr, tokens or steps, chosen at selection),
``m`` the width, ``l`` the depth (minus an optional depth offset), ``N`` non-embedding parameters.
Register a new law with :func:`register`.

Parameter vectors are laid out as ``[c_1, ..., c_k, K, free exponents in term order]``; a law with
every exponent fixed is linear in its parameters (``Law.design``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import numpy as np

from .errors import AnalysisError

VARIABLES = {
    "tau": "time variable (tau_lr = sum of lr by default; tokens or steps on request)",
    "D": "time variable in tokens (tokens by default)",
    "m": "width (d_model)",
    "l": "depth (number of blocks, minus the depth offset)",
    "N": "non-embedding parameters (12 m^2 l when not given)",
}
TIME_VARS = ("tau", "D")

# How parameter names print (Markdown/console and LaTeX).
PRETTY = {"c_tau": "c_τ", "c_m": "c_m", "c_l": "c_ℓ", "L0": "L0", "alpha_tau": "α_τ", "alpha_m": "α_m",
          "alpha_l": "α_ℓ", "alpha": "α", "beta": "β", "E": "E", "A": "A", "B": "B"}
LATEX = {"c_tau": r"$c_\tau$", "c_m": r"$c_m$", "c_l": r"$c_\ell$", "L0": r"$L_0$",
         "alpha_tau": r"$\alpha_\tau$", "alpha_m": r"$\alpha_m$", "alpha_l": r"$\alpha_\ell$",
         "alpha": r"$\alpha$", "beta": r"$\beta$", "E": r"$E$", "A": r"$A$", "B": r"$B$"}


@dataclass(frozen=True)
class Term:
    coef: str                  # coefficient name, e.g. c_m
    var: str                   # variable name, one of VARIABLES
    exponent: float | None     # the fixed exponent, or None when fitted
    exp_name: str | None       # the fitted exponent's name (None when fixed)


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    constant: str
    terms: tuple[Term, ...]
    description: str = ""

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(t.var for t in self.terms)

    @property
    def time_var(self) -> str | None:
        for t in self.terms:
            if t.var in TIME_VARS:
                return t.var
        return None

    @property
    def fixed(self) -> bool:
        """True when every exponent is fixed: the law is then linear in its parameters."""
        return all(t.exponent is not None for t in self.terms)

    @property
    def coef_names(self) -> list[str]:
        return [t.coef for t in self.terms]

    @property
    def exp_names(self) -> list[str]:
        return [t.exp_name for t in self.terms if t.exp_name is not None]

    @property
    def param_names(self) -> list[str]:
        return self.coef_names + [self.constant] + self.exp_names

    def exponents(self, theta: np.ndarray) -> list[np.ndarray]:
        """The exponent of every term (fixed ones broadcast), given parameters (..., P)."""
        theta = np.asarray(theta, dtype=float)
        k, out, j = len(self.terms), [], 0
        for t in self.terms:
            if t.exponent is not None:
                out.append(np.full(theta.shape[:-1], t.exponent))
            else:
                out.append(theta[..., k + 1 + j])
                j += 1
        return out

    def design(self, V: dict[str, np.ndarray]) -> np.ndarray:
        """The design matrix (n, k+1) of a fixed-exponent law: columns x_j^(-a_j), then ones."""
        if not self.fixed:
            raise AnalysisError(f"law {self.name!r} has free exponents; it has no linear design matrix")
        cols = [np.asarray(V[t.var], float) ** (-cast(float, t.exponent)) for t in self.terms]  # fixed: none is None
        return np.column_stack(cols + [np.ones_like(cols[0])])

    def predict(self, theta: np.ndarray, V: dict[str, np.ndarray], outer: bool = True) -> np.ndarray:
        """Predicted loss. With ``outer`` (default) theta (..., P) and variables (n,) give (..., n);
        otherwise theta[..., j] broadcasts against the variables as they are (caller aligns)."""
        theta = np.asarray(theta, dtype=float)
        k = len(self.terms)
        extra = (None,) * np.ndim(V[self.terms[0].var]) if outer else ()
        idx = (Ellipsis,) + extra
        out = theta[..., k][idx] + 0.0
        for j, (t, a) in enumerate(zip(self.terms, self.exponents(theta))):
            out = out + theta[..., j][idx] * np.asarray(V[t.var], float) ** (-np.asarray(a)[idx])
        return out

    def term_value(self, theta: np.ndarray, j: int, x: np.ndarray) -> np.ndarray:
        """c_j x^(-a_j) for one term (theta of shape (P,))."""
        a = self.exponents(theta)[j]
        return theta[j] * np.asarray(x, float) ** (-float(a))


_REGISTRY: dict[str, Law] = {}
_IDENT = r"[A-Za-z_][A-Za-z_0-9]*"
_TERM = re.compile(rf"^({_IDENT})\s*/\s*({_IDENT})\s*(?:\^\s*(.+))?$")


def _parse_exponent(text: str, formula: str) -> tuple[float | None, str | None]:
    s = text.strip()
    while s.startswith("(") and s.endswith(")"):
        s = s[1:-1].strip()
    if re.fullmatch(_IDENT, s):
        return None, s
    try:
        return float(Fraction(s)), None
    except (ValueError, ZeroDivisionError):
        raise AnalysisError(f"law formula {formula!r}: exponent {text!r} is neither a number "
                            f"(1/3, 0.5) nor a parameter name") from None


def parse(name: str, formula: str, description: str = "") -> Law:
    """Parse ``"K + c1/x1^a1 + c2/x2"`` into a Law."""
    pieces = [p.strip() for p in formula.split("+")]
    constant, terms = None, []
    for p in pieces:
        if re.fullmatch(_IDENT, p):
            if constant is not None:
                raise AnalysisError(f"law formula {formula!r}: two constants ({constant}, {p})")
            constant = p
            continue
        mt = _TERM.match(p)
        if not mt:
            raise AnalysisError(f"law formula {formula!r}: cannot read term {p!r}; "
                                f"expected coef/var or coef/var^exponent")
        coef, var, exp_text = mt.groups()
        if var not in VARIABLES:
            raise AnalysisError(f"law formula {formula!r}: unknown variable {var!r}; "
                                f"allowed: {sorted(VARIABLES)}")
        exponent, exp_name = (1.0, None) if exp_text is None else _parse_exponent(exp_text, formula)
        terms.append(Term(coef, var, exponent, exp_name))
    if constant is None or not terms:
        raise AnalysisError(f"law formula {formula!r}: needs one constant and at least one term")
    names = [constant] + [t.coef for t in terms] + [t.exp_name for t in terms if t.exp_name]
    if len(set(names)) != len(names):
        raise AnalysisError(f"law formula {formula!r}: a parameter name is used twice")
    if sum(t.var in TIME_VARS for t in terms) > 1:
        raise AnalysisError(f"law formula {formula!r}: at most one time variable (tau or D)")
    return Law(name, formula, constant, tuple(terms), description)


def register(name: str, formula: str, description: str = "") -> Law:
    law = parse(name, formula, description)
    _REGISTRY[name] = law
    return law


def get(name: str) -> Law:
    if name not in _REGISTRY:
        raise AnalysisError(f"unknown law {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


register("universality", "L0 + c_tau/tau^(1/3) + c_m/m + c_l/l",
         "universality class, exponents fixed at (1/3, 1, 1); linear, fitted by NNLS")
register("universality-free", "L0 + c_tau/tau^alpha_tau + c_m/m^alpha_m + c_l/l^alpha_l",
         "free exponents: the test of universality")
register("chinchilla", "E + A/N^alpha + B/D^beta", "Hoffmann et al. 2022")
