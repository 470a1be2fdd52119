"""What a fitted law implies: optimal shape, off-optimal penalty, compute-optimal frontier.

Formulas (docs/science.md section 2), for ``L = L0 + c_tau tau^-a_tau + c_m m^-a + c_l l^-b`` with
N = 12 m^2 l:

- optimal shape at fixed N: ``a c_m m^-a = 2 b c_l l^-b``, i.e.
  ``m*^(a+2b) = a c_m (N/12)^b / (2 b c_l)``; with a = b = 1, ``(m/l)* = c_m / (2 c_l)`` at every N
  and the shape term at the optimum is ``c_N N^(-1/3)``, ``c_N = 3 (3 c_m^2 c_l)^(1/3)``; in general
  the shape term is ``c_N N^-s`` with ``s = ab/(a+2b)``.
- off-optimal penalty (a = b = 1): with x = (m/l)/(m/l)*, ``S(x)/S* = (2 x^(-1/3) + x^(2/3)) / 3``.
- time -> tokens: the fit's time variable t is converted with ``t = k D`` (k = t per token, from the
  table: for tau_lr and one schedule shape ``k = eta_max f / B_tok``), so ``c_D = c_tau k^(-a_tau)``.
- closed-form frontier for ``L = E + A N^-alpha + B D^-beta`` and C = 6 N D (Chinchilla's form; the
  universality law reduces to it with A = c_N, alpha = s, B = c_D, beta = a_tau):
  ``G = (alpha A / (beta B))^(1/(alpha+beta))``, ``N* = G (C/6)^(beta/(alpha+beta))``,
  ``D* = (C/6)^(alpha/(alpha+beta)) / G``; for exponents (1/3, 1/3): ``N* = (c_N/c_D)^(3/2) (C/6)^(1/2)``,
  ``D*/N* = (c_D/c_N)^3``, ``L* = L0 + 2 (c_N c_D)^(1/2) (C/6)^(-1/6)``.
- numerical frontier: minimise the fitted loss over (m, l) at fixed compute with the grid's real
  FLOPs per token (head and attention included), ``D = C / flops_per_token(m, l)``.

Every function here is vectorised over bootstrap samples: parameters are arrays of shape (B,).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq, nnls

from .laws import Law

if TYPE_CHECKING:
    from .points import Points


# ------------------------------------------------------------------------------- shape (a, b free)
def shape_penalty(x: ArrayLike) -> np.ndarray:
    """S(x)/S* for exponents (1, 1): the loss of the shape term at aspect ratio x times the optimum,
    relative to the optimum, at fixed N. The same for every coefficient set."""
    x = np.asarray(x, float)
    return (2 * x ** (-1 / 3) + x ** (2 / 3)) / 3


def penalty_band(level: float = 0.05) -> tuple[float, float]:
    """The aspect-ratio range (relative to the optimum) inside which the shape term is within
    ``level`` of its optimum: (0.50, 1.91) for 5%."""
    def f(x: float) -> float:
        return float(shape_penalty(x)) - (1 + level)
    return brentq(f, 1e-6, 1.0), brentq(f, 1.0, 1e6)


def optimal_shape(c_m: ArrayLike, c_l: ArrayLike, a: ArrayLike, b: ArrayLike, N: ArrayLike
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """m*, l*, and the shape term S* at fixed N (vectorised). N = 12 m^2 l."""
    c_m, c_l, a, b, N = (np.asarray(v, float) for v in (c_m, c_l, a, b, N))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_m = (np.log(a * c_m / (2 * b * c_l)) + b * np.log(N / 12)) / (a + 2 * b)
        m = np.exp(log_m)
        l = N / (12 * m * m)
        S = c_m * m ** (-a) + c_l * l ** (-b)
    return m, l, S


def closed_frontier(E: ArrayLike, A: ArrayLike, alpha: ArrayLike, B: ArrayLike, beta: ArrayLike, C: ArrayLike
                    ) -> dict[str, np.ndarray]:
    """Chinchilla-form frontier at compute C (C = 6 N D): dict of N*, D*, L*, D*/N*.
    Parameters have shape (B,), C (nC,): results (B, nC)."""
    E, A, alpha, B, beta = (np.asarray(v, float)[..., None] for v in (E, A, alpha, B, beta))
    C6 = np.asarray(C, float) / 6
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        N = G * C6 ** (beta / (alpha + beta))
        D = C6 ** (alpha / (alpha + beta)) / G
        L = E + A * N ** (-alpha) + B * D ** (-beta)
    return {"N_star": N, "D_star": D, "L_star": L, "D_over_N_star": D / N}


# ------------------------------------------------------------------------------- FLOPs and context
@dataclass
class FlopsModel:
    """flops_per_token(m, l) = a m^2 l + b m l + c m, fitted to the grid's real FLOP counts
    (the m^2 l term is the 72 m^2 l of C = 6 N D; b m l attention; c m the head)."""
    coef: np.ndarray
    max_rel_error: float
    n_cells: int

    def __call__(self, m: np.ndarray, l: np.ndarray) -> np.ndarray:
        a, b, c = self.coef
        return a * m * m * l + b * m * l + c * m

    def describe(self) -> str:
        a, b, c = self.coef
        return (f"flops_per_token = {a:.4g} m^2 l + {b:.4g} m l + {c:.4g} m  (fitted to {self.n_cells} "
                f"cells, max relative error {100 * self.max_rel_error:.2g}%)")


def six_n_flops() -> FlopsModel:
    """C = 6 N D with N = 12 m^2 l: 72 m^2 l FLOPs per token."""
    return FlopsModel(np.array([72.0, 0.0, 0.0]), 0.0, 0)


def fit_flops(m: np.ndarray, l: np.ndarray, fpt: np.ndarray) -> FlopsModel | None:
    """Fit the FLOPs model to distinct (m, l, flops_per_token) rows; None if not identifiable."""
    ok = np.isfinite(m) & np.isfinite(l) & np.isfinite(fpt) & (fpt > 0)
    if not np.any(ok):
        return None
    rows = np.unique(np.column_stack([m[ok], l[ok], fpt[ok]]), axis=0)
    if len(rows) < 3 or len(np.unique(rows[:, 0])) < 2 or len(np.unique(rows[:, 1])) < 2:
        return None
    mm, ll, f = rows.T
    X = np.column_stack([mm * mm * ll, mm * ll, mm]) / f[:, None]
    s = np.linalg.norm(X, axis=0)
    coef, _ = nnls(X / s, np.ones(len(f)))
    coef = coef / s
    model = FlopsModel(coef, 0.0, len(rows))
    model.max_rel_error = float(np.max(np.abs(model(mm, ll) / f - 1)))
    return model


@dataclass
class Context:
    """What the derived quantities need besides the fitted parameters, taken from the points."""
    t_per_token: float | None = None       # k: time variable per token (t = k D)
    conversion: dict[str, Any] = field(default_factory=dict)
    N_ref: float | None = None             # reference N for the optimal shape (largest N in the data)
    C_ref: np.ndarray | None = None        # reference computes for the frontier
    C_data: tuple[float, float] | None = None
    flops: FlopsModel | None = None
    depth_offset: float = 0.0
    aspect: np.ndarray | None = None       # m / l_eff of the data's shapes
    warnings: list[str] = field(default_factory=list)


def make_context(law: Law, pts: Points, time: str) -> Context:
    ctx = Context(depth_offset=pts.depth_offset)
    X = pts.extra
    tv = law.time_var
    tokens = X.get("tokens")
    if tv is not None:
        if time == "tokens":
            ctx.t_per_token = 1.0
            ctx.conversion = {"statement": "the fit's time variable is tokens: c_D = c_time", "k": 1.0}
        elif tokens is not None and np.any(tokens > 0):
            ok = tokens > 0
            r = pts.V[tv][ok] / tokens[ok]
            k = float(np.median(r))
            spread = float(np.max(r) / np.min(r))
            ctx.t_per_token = k
            name = {"tau_lr": "tau_lr", "steps": "steps"}.get(time, time)
            conv: dict[str, Any] = {
                "k": k, "k_min": float(np.min(r)), "k_max": float(np.max(r)), "n_points": int(ok.sum()),
                "statement": (f"c_D = c_{tv} * k^(-alpha_{tv}) with k = {name}/tokens = {k:.6g} per token "
                              f"(median over {int(ok.sum())} points; spread x{spread:.3g})")}
            if time == "tau_lr" and "step" in X and "peak_lr" in X:
                st = X["step"][ok]
                good = st > 0
                if np.any(good):
                    B_tok = float(np.median(tokens[ok][good] / st[good]))
                    eta = float(np.median(X["peak_lr"][ok][good]))
                    fbar = k * B_tok / eta if eta > 0 else float("nan")
                    conv.update({"B_tok": B_tok, "eta_max": eta, "f_bar": fbar})
                    conv["statement"] += (f"; for one schedule k = eta_max f_bar / B_tok with B_tok = "
                                          f"{B_tok:.6g} tokens/step, eta_max = {eta:.6g}, f_bar = {fbar:.4g}, "
                                          f"so c_D = c_tau (B_tok/(eta_max f_bar))^(1/3)")
            ctx.conversion = conv
            if spread > 1.05:
                ctx.warnings.append(f"{name}/tokens differs across points by x{spread:.3g} (batch size, "
                                    f"schedule or peak lr differ between runs): the conversion to tokens "
                                    f"uses the median and the frontier inherits that approximation")
        else:
            ctx.conversion = {"statement": f"no tokens column: the fit's time variable ({time}) cannot be "
                                           f"converted to tokens, so the compute frontier is not given"}
    if "m" in X and "l" in X:
        m, l = X["m"], X["l"]
        N_shape = 12 * m * m * l
        ctx.N_ref = float(np.max(N_shape))
        ctx.aspect = np.unique(m / np.maximum(l - pts.depth_offset, 1e-12))
        if "flops_per_token" in X:
            ctx.flops = fit_flops(m, l, X["flops_per_token"])
            if ctx.flops is not None and ctx.flops.max_rel_error > 0.02:
                ctx.warnings.append("the FLOPs model " + ctx.flops.describe() + " misses some cells by "
                                    "more than 2%")
    elif "N" in X:
        N_shape = X["N"]
        ctx.N_ref = float(np.max(N_shape))
    else:
        N_shape = None
    if tokens is not None and N_shape is not None and ctx.t_per_token is not None:
        ok = tokens > 0
        if np.any(ok):
            if "flops_per_token" in X and np.all(np.isfinite(X["flops_per_token"][ok])):
                C = X["flops_per_token"][ok] * tokens[ok]
            else:
                C = 6 * N_shape[ok] * tokens[ok]
            ctx.C_data = (float(np.min(C)), float(np.max(C)))
            ctx.C_ref = float(np.max(C)) * 10.0 ** np.arange(4)
    return ctx


# ---------------------------------------------------------------------------------- per law
def _P(law: Law, theta: np.ndarray) -> dict[str, np.ndarray]:
    theta = np.atleast_2d(theta)
    out = {n: theta[:, i] for i, n in enumerate(law.param_names)}
    for t, a in zip(law.terms, law.exponents(theta)):
        out.setdefault(f"__exp_{t.var}", a)
    return out


def derived(law: Law, theta: np.ndarray, ctx: Context) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Derived quantities for parameter rows theta (B, P): (scalars name -> (B,), frontier name ->
    (B, nC)). Quantities the law or the data cannot give are absent."""
    P = _P(law, theta)
    terms = {t.var: t for t in law.terms}
    if len(terms) < len(law.terms):  # two terms in one variable: the closed forms below do not apply
        return {}, {}
    sc: dict[str, np.ndarray] = {}
    fr: dict[str, np.ndarray] = {}
    E = P[law.constant]
    A: np.ndarray | None = None
    alpha: np.ndarray | None = None
    if "m" in terms and "l" in terms:
        c_m, c_l = P[terms["m"].coef], P[terms["l"].coef]
        a, b = P["__exp_m"], P["__exp_l"]
        fixed11 = terms["m"].exponent == 1 and terms["l"].exponent == 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if fixed11:
                sc["m_over_l_star"] = c_m / (2 * c_l)
                sc["c_N"] = 3 * (3 * c_m ** 2 * c_l) ** (1 / 3)
                A, alpha = sc["c_N"], np.full_like(c_m, 1 / 3)
            elif ctx.N_ref is not None:
                m, l, S = optimal_shape(c_m, c_l, a, b, ctx.N_ref)
                s = a * b / (a + 2 * b)
                sc["m_over_l_star"] = m / l                  # at N_ref
                sc["shape_exponent"] = (b - a) / (a + 2 * b)  # (m/l)* ∝ N^this
                sc["shape_loss_exponent"] = s               # S* ∝ N^-s
                sc["c_N"] = S * ctx.N_ref ** s
                A, alpha = sc["c_N"], s
    elif "N" in terms:
        A, alpha = P[terms["N"].coef], P["__exp_N"]
    tv = law.time_var
    if tv is not None and ctx.t_per_token is not None:
        c_t, beta = P[terms[tv].coef], P[f"__exp_{tv}"]
        Bc = c_t * ctx.t_per_token ** (-beta)
        sc["c_D"] = Bc
        if A is not None and alpha is not None and ctx.C_ref is not None:  # (A and alpha are set together)
            f = closed_frontier(E, A, alpha, Bc, beta, ctx.C_ref)
            fr.update(f)
            sc["D_over_N_star"] = f["D_over_N_star"][:, 0]  # at the largest compute of the data
            tied = terms[tv].exp_name is not None and terms[tv].exp_name in {
                t.exp_name for t in law.terms if t.var != tv}
            # for fixed exponents (or the time exponent tied to the size one) these are constants
            if not law.fixed and not tied:
                with np.errstate(divide="ignore", invalid="ignore"):
                    sc["N_star_exponent"] = beta / (alpha + beta)
                    sc["L_star_exponent"] = alpha * beta / (alpha + beta)
            if ctx.flops is not None and "m" in terms and "l" in terms:
                num = numerical_frontier(law, np.atleast_2d(theta), ctx.C_ref, ctx.t_per_token, ctx.flops,
                                         ctx.depth_offset)
                fr.update({f"numerical_{k}": v for k, v in num.items()})
    return sc, fr


# ------------------------------------------------------------------------------ numerical frontier
def numerical_frontier(law: Law, theta: np.ndarray, C: np.ndarray, t_per_token: float, flops: FlopsModel,
                       depth_offset: float = 0.0, m_range: tuple[float, float] = (4.0, 2.0 ** 20),
                       l_range: tuple[float, float] = (1.0, 2.0 ** 12),
                       chunk: int = 64) -> dict[str, np.ndarray]:
    """Minimise the fitted loss over continuous (m, l) at each compute C, with D = C / flops(m, l)
    and the time variable t = t_per_token * D. Coarse-to-fine grid search in (log m, log l),
    vectorised over parameter rows theta (B, P). Optima on the search boundary are NaN."""
    theta = np.atleast_2d(np.asarray(theta, float))
    C = np.asarray(C, float)
    Bn, nC = len(theta), len(C)
    lo_m, hi_m = np.log(m_range[0]), np.log(m_range[1])
    lo_l, hi_l = np.log(max(l_range[0], depth_offset + 1.0)), np.log(l_range[1])
    tv = law.time_var
    out = {k: np.full((Bn, nC), np.nan) for k in ("m_star", "l_star", "N_star", "D_star", "L_star")}

    # th (b,1,1,1,P); lm (b,nC,Gm,1); ll (b,nC,1,Gl)
    def loss(th: np.ndarray, lm: np.ndarray, ll: np.ndarray) -> np.ndarray:
        m, l = np.exp(lm), np.exp(ll)
        D = C[None, :, None, None] / flops(m, l)
        V = {"m": m, "l": l - depth_offset}
        if tv is not None:
            V[tv] = t_per_token * D
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return law.predict(th, V, outer=False)

    for s in range(0, Bn, chunk):
        th = theta[s:s + chunk][:, None, None, None, :]
        b = len(th)
        gm, gl = 49, 41
        lm = np.broadcast_to(np.linspace(lo_m, hi_m, gm), (b, nC, gm)).copy()
        ll = np.broadcast_to(np.linspace(lo_l, hi_l, gl), (b, nC, gl)).copy()
        dm, dl = (hi_m - lo_m) / (gm - 1), (hi_l - lo_l) / (gl - 1)
        for stage in range(7):
            Lg = loss(th, lm[..., :, None], ll[..., None, :])
            Lg = np.where(np.isfinite(Lg), Lg, np.inf)
            flat = Lg.reshape(b, nC, -1).argmin(-1)
            i, j = np.divmod(flat, ll.shape[-1])
            bm = np.take_along_axis(lm, i[..., None], -1)[..., 0]
            bl = np.take_along_axis(ll, j[..., None], -1)[..., 0]
            if stage == 6:
                break
            if stage == 0:
                edge = (i == 0) | (i == gm - 1) | (j == 0) | (j == gl - 1)
            dm, dl = dm / 4, dl / 4
            off = np.arange(-6, 7)
            lm = np.clip(bm[..., None] + off * dm, lo_m, hi_m)
            ll = np.clip(bl[..., None] + off * dl, lo_l, hi_l)
        m, l = np.exp(bm), np.exp(bl)
        Lbest = loss(th, bm[..., None, None], bl[..., None, None])[..., 0, 0]
        D = C[None, :] / flops(m, l)
        bad = edge | ~np.isfinite(Lbest)
        sl = slice(s, s + b)
        for k, v in (("m_star", m), ("l_star", l), ("N_star", 12 * m * m * l), ("D_star", D), ("L_star", Lbest)):
            out[k][sl] = np.where(bad, np.nan, v)
    return out
