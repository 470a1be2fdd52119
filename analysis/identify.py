"""What the points can and cannot determine: identifiability before a fit, flags after it.

- :func:`check_identifiable` raises AnalysisError naming the coefficient the points cannot constrain
  (too few points or distinct values, a flat loss, variables that move together) and returns
  warnings about weakly constrained ones.
- :func:`parameter_flags` marks parameters whose value is not an estimate: on their bound 0
  (``at_bound``) or not moved by the data (``unidentified``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import AnalysisError
from .laws import Law, Term
from .points import Points

VAR_WORDS = {"tau": "time values", "D": "token counts", "m": "widths", "l": "depths", "N": "model sizes"}
BOUND_REL = 1e-6     # a term below this fraction of the loss at every point is at its bound 0


def too_few_distinct(law: Law, V: dict[str, np.ndarray], used: np.ndarray | None = None
                     ) -> tuple[Term, int, int] | None:
    """The first term whose variable has too few distinct values among the ``used`` points, as
    (term, distinct, needed); None when there are enough. A term needs 2 (else it is a constant); a
    fitted exponent needs 3 in at least one of its terms (a tied exponent is pinned by any of them)."""
    def nd(t: Term) -> int:
        x = V[t.var] if used is None else V[t.var][used]
        return len(np.unique(x))
    counts = [nd(t) for t in law.terms]
    for t, c in zip(law.terms, counts):
        if c < 2:
            return t, c, 2
    for name in law.exp_names:
        mine = [(t, c) for t, c in zip(law.terms, counts) if t.exp_name == name]
        if max(c for _, c in mine) < 3:
            return mine[0][0], mine[0][1], 3
    return None


def check_identifiable(law: Law, pts: Points, label: str = "") -> list[str]:
    """Raise AnalysisError naming the coefficient the points cannot constrain, and why. Returns
    warnings about weakly constrained coefficients."""
    warns: list[str] = []
    where = f" (variant {label})" if label else ""
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
    short = too_few_distinct(law, pts.V)
    if short is not None:
        t, nd, need = short
        x = pts.V[t.var]
        why = (f"{t.coef}/{t.var} is indistinguishable from the constant {law.constant}"
               if nd < 2 else f"the exponent {t.exp_name} and {t.coef} cannot both be fitted")
        vals = ", ".join(f"{v:g}" for v in np.unique(x)[:5])
        raise AnalysisError(f"{t.coef} cannot be identified{where}: only {nd} distinct "
                            f"{VAR_WORDS.get(t.var, t.var)} ({t.var} = {vals}); {why}. Need at least "
                            f"{need} distinct values of {t.var}")
    # variables that move together (a log-linear relation) cannot be separated with free exponents
    vars_ = list(dict.fromkeys(t.var for t in law.terms))
    why = "their columns are linearly dependent over these points"
    if len(vars_) >= 2:
        Z = np.column_stack([np.ones(n)] + [np.log(pts.V[v]) for v in vars_])
        Z = np.unique(Z, axis=0)
        Zc = Z[:, 1:] - Z[:, 1:].mean(0)
        sd = Zc.std(0)
        sd[sd == 0] = 1
        _, s, vt = np.linalg.svd(Zc / sd, full_matrices=False)
        if len(s) == len(vars_) and s[-1] / s[0] < 1e-6:
            null = np.abs(vt[-1]) > 1e-3
            involved = [t for i in np.flatnonzero(null) for t in law.terms if t.var == vars_[i]]
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


def term_text(t: Term) -> str:
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
    shares = []
    for j, t in enumerate(law.terms):
        with np.errstate(all="ignore"):
            shares.append(np.max(law.term_value(theta, j, pts.V[t.var]) / pts.loss))
    gone = {t.coef for t in law.terms} - {t.coef for t, sh in zip(law.terms, shares) if sh >= BOUND_REL}
    for j, t in enumerate(law.terms):
        # a tied coefficient is at its bound only when every term it serves is; likewise its exponent
        if t.coef in gone and t.coef not in flags:
            flags[t.coef] = {"flag": "at_bound", "meaning": (
                f"{t.coef} = {theta[law.coef_index[j]]:.3g} sits on its lower bound 0: its term "
                f"{term_text(t)} is below {BOUND_REL:g} of the loss at every point, so the data show "
                f"no measurable {t.var} term; its value is the bound, not an estimate (read the interval's "
                f"upper end as an upper limit), and quantities that divide by it are unbounded")}
        if t.exp_name is not None and t.exp_name not in flags and all(
                u.coef in gone for u in law.terms if u.exp_name == t.exp_name):
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
