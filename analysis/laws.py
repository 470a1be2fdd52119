"""Scaling laws, each defined by a short formula.

A law is a constant plus power-law terms, ``L = K + c_1/x_1^a_1 + ... + c_k/x_k^a_k``, written as a
string and parsed here (the registered laws are shortcuts; :func:`get` also takes a formula)::

    universality       L0 + c_tau/tau^(1/3) + c_m/m + c_l/l
    universality-free  L0 + c_tau/tau^alpha_tau + c_m/m^alpha_m + c_l/l^alpha_l
    chinchilla         E + A/N^alpha + B/D^beta

An exponent that is a number (``1/3``, ``1``, ``(1/3)``) is fixed; one that is a name is fitted.
A name used more than once is one tied parameter: ``E + A/N^a + B/D^a`` has one exponent ``a``
(4 parameters), ``L0 + c/m + c/l`` one coefficient.
Variables: ``tau`` and ``D`` are the time variable (tau_lr, tokens or steps, chosen at selection),
``m`` the width, ``l`` the depth (minus an optional depth offset), ``N`` non-embedding parameters;
any other name is read from the table's column of that name (no derived quantities use it).
Register a new law with :func:`register`.

Parameter vectors are laid out as ``[coefficients, K, fitted exponents]``, each name once, in order
of first appearance; a law with every exponent fixed is linear in its parameters (``Law.design``).
"""
from __future__ import annotations

import functools
import math
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
        """The coefficients, each name once (a tied coefficient serves several terms)."""
        return list(dict.fromkeys(t.coef for t in self.terms))

    @property
    def exp_names(self) -> list[str]:
        """The fitted exponents, each name once (a tied exponent serves several terms)."""
        return list(dict.fromkeys(t.exp_name for t in self.terms if t.exp_name is not None))

    @property
    def param_names(self) -> list[str]:
        return self.coef_names + [self.constant] + self.exp_names

    @property
    def tied(self) -> list[str]:
        """Parameters shared by two or more terms."""
        names = [t.coef for t in self.terms] + [t.exp_name for t in self.terms if t.exp_name]
        return [n for n in dict.fromkeys(names) if names.count(n) > 1]

    @functools.cached_property  # the fits read it in every objective evaluation
    def const_index(self) -> int:
        return len(self.coef_names)

    @functools.cached_property  # the fits read it in every objective evaluation
    def coef_index(self) -> tuple[int, ...]:
        """Each term's coefficient: its index in the parameter vector."""
        names = self.coef_names
        return tuple(names.index(t.coef) for t in self.terms)

    @functools.cached_property  # the fits read it in every objective evaluation
    def exp_index(self) -> tuple[int | None, ...]:
        """Each term's fitted exponent: its index in the parameter vector (None when fixed)."""
        k, names = self.const_index + 1, self.exp_names
        return tuple(None if t.exp_name is None else k + names.index(t.exp_name) for t in self.terms)

    @property
    def display_name(self) -> str:
        """``law chinchilla: L = E + ...`` for a registered law, ``law L = ...`` for a formula."""
        return f"law L = {self.formula}" if self.name == self.formula else f"law {self.name}: L = {self.formula}"

    def exponents(self, theta: np.ndarray) -> list[np.ndarray]:
        """The exponent of every term (fixed ones broadcast), given parameters (..., P)."""
        theta = np.asarray(theta, dtype=float)
        return [np.full(theta.shape[:-1], t.exponent) if e is None else theta[..., e]
                for t, e in zip(self.terms, self.exp_index)]

    def design(self, V: dict[str, np.ndarray]) -> np.ndarray:
        """The design matrix (n, C+1) of a fixed-exponent law: per coefficient the sum of its terms'
        x_j^(-a_j), then ones."""
        if not self.fixed:
            raise AnalysisError(f"law {self.name!r} has free exponents; it has no linear design matrix")
        cols: dict[str, np.ndarray] = {}
        for t in self.terms:
            x = np.asarray(V[t.var], float) ** (-cast(float, t.exponent))  # fixed: none is None
            cols[t.coef] = cols[t.coef] + x if t.coef in cols else x
        first = next(iter(cols.values()))
        return np.column_stack(list(cols.values()) + [np.ones_like(first)])

    def predict(self, theta: np.ndarray, V: dict[str, np.ndarray], outer: bool = True) -> np.ndarray:
        """Predicted loss. With ``outer`` (default) theta (..., P) and variables (n,) give (..., n);
        otherwise theta[..., j] broadcasts against the variables as they are (caller aligns)."""
        theta = np.asarray(theta, dtype=float)
        extra = (None,) * np.ndim(V[self.terms[0].var]) if outer else ()
        idx = (Ellipsis,) + extra
        out = theta[..., self.const_index][idx] + 0.0
        for t, c, a in zip(self.terms, self.coef_index, self.exponents(theta)):
            out = out + theta[..., c][idx] * np.asarray(V[t.var], float) ** (-np.asarray(a)[idx])
        return out

    def term_value(self, theta: np.ndarray, j: int, x: np.ndarray) -> np.ndarray:
        """c_j x^(-a_j) for one term (theta of shape (P,))."""
        a = self.exponents(theta)[j]
        return theta[self.coef_index[j]] * np.asarray(x, float) ** (-float(a))


_REGISTRY: dict[str, Law] = {}
MAX_EXPONENT = 100.0  # a fixed exponent outside (0, 100] in size is a typo, not a law
_IDENT = r"[A-Za-z_][A-Za-z_0-9]*"
_TERM = re.compile(rf"^({_IDENT})\s*/\s*({_IDENT})\s*(?:\^\s*(.+))?$")


def _parse_exponent(text: str, formula: str) -> tuple[float | None, str | None]:
    s = text.strip()
    while s.startswith("(") and s.endswith(")"):
        s = s[1:-1].strip()
    if re.fullmatch(_IDENT, s):
        return None, s
    try:
        value = float(Fraction(s))
    except OverflowError:
        value = math.inf  # refused below, by size
    except (ValueError, ZeroDivisionError):
        raise AnalysisError(f"law formula {formula!r}: exponent {text!r} is neither a number "
                            f"(1/3, 0.5) nor a parameter name") from None
    if not 0 < abs(value) <= MAX_EXPONENT:
        why = ("c/x^0 is a constant, which the law's constant already is: the two could not be told apart"
               if value == 0 else f"beyond +-{MAX_EXPONENT:g}, x^a overflows or vanishes for any x in a table")
        raise AnalysisError(f"law formula {formula!r}: exponent {text!r}: {why}")
    return value, None


def parse(name: str, formula: str, description: str = "") -> Law:
    """Parse ``"K + c1/x1^a1 + c2/x2"`` into a Law. A name used twice is one tied parameter."""
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
        exponent, exp_name = (1.0, None) if exp_text is None else _parse_exponent(exp_text, formula)
        terms.append(Term(coef, var, exponent, exp_name))
    if constant is None or not terms:
        raise AnalysisError(f"law formula {formula!r}: needs one constant and at least one term")
    # one name, one role: a tied parameter is the same kind of thing wherever it appears
    roles: dict[str, set[str]] = {constant: {"the constant"}}
    for t in terms:
        roles.setdefault(t.coef, set()).add("a coefficient")
        roles.setdefault(t.var, set()).add("a variable")
        if t.exp_name:
            roles.setdefault(t.exp_name, set()).add("an exponent")
    for n, r in roles.items():
        if len(r) > 1:
            raise AnalysisError(f"law formula {formula!r}: {n!r} is used as {' and as '.join(sorted(r))}; "
                                f"a name used twice is one tied parameter, so it must play one role")
    if len({t.var for t in terms if t.var in TIME_VARS}) > 1:
        raise AnalysisError(f"law formula {formula!r}: at most one time variable (tau or D)")
    if len(set(terms)) != len(terms):
        raise AnalysisError(f"law formula {formula!r}: the same term appears twice")
    return Law(name, formula, constant, tuple(terms), description)


def register(name: str, formula: str, description: str = "") -> Law:
    law = parse(name, formula, description)
    _REGISTRY[name] = law
    return law


def get(name: str) -> Law:
    """A registered law by name, or a law parsed from a formula (``"E + A/N^a + B/D^a"``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    text = " ".join(name.split())
    if "/" in text:  # a formula: the law is named by it
        return parse(text, text, "formula given on the command line")
    raise AnalysisError(f"unknown law {name!r}; registered: {sorted(_REGISTRY)}, or a formula such as "
                        f"'E + A/N^a + B/D^a' (a name used twice is one tied parameter)")


def names() -> list[str]:
    return sorted(_REGISTRY)


register("universality", "L0 + c_tau/tau^(1/3) + c_m/m + c_l/l",
         "universality class, exponents fixed at (1/3, 1, 1); linear, fitted by NNLS")
register("universality-free", "L0 + c_tau/tau^alpha_tau + c_m/m^alpha_m + c_l/l^alpha_l",
         "free exponents: the test of universality")
register("chinchilla", "E + A/N^alpha + B/D^beta", "Hoffmann et al. 2022")
