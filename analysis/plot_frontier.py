"""The compute-frontier plot of every variant: L*(C) and N*(C) with bootstrap bands and the runs, in
ONE FLOP convention for the curve and the dots (:func:`convention`): the grid's real FLOPs per token
(the fitted FLOPs model, numerical frontier) when every variant has them, else C = 6ND with
N = 12 m²ℓ (closed form). Grey: where the optimum is an extrapolation, i.e. its N* or D* lies outside
the sizes and token budgets of the runs, or C beyond the largest run's.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import derived as dv  # noqa: E402
from .plot_style import FIG_W, loss_label, save  # noqa: E402

if TYPE_CHECKING:
    from .results import VariantFit


def convention(fits: dict[str, VariantFit]) -> tuple[bool, str]:
    """(real FLOPs?, the sentence that says which convention the plot uses)."""
    real = bool(fits) and all(np.any(np.isfinite(vf.frontier.get("numerical_L_star", np.nan)))
                              for vf in fits.values() if vf.frontier)
    if real:
        return True, ("C = real FLOPs per token × D, both for the curves (the numerical optimum over "
                      "width and depth) and for the runs' dots, from the same fitted FLOPs model")
    return False, "C = 6ND with N = 12 m²ℓ, both for the curves (closed form) and for the runs' dots"


def run_compute(vf: VariantFit, real: bool) -> dict[str, np.ndarray] | None:
    """Each fitted point's compute C (in the plot's convention), N and tokens D; None without tokens."""
    X = vf.points.extra
    if "tokens" not in X or not (("m" in X and "l" in X) or "N" in X):
        return None
    N = 12 * X["m"] ** 2 * X["l"] if "m" in X and "l" in X else X["N"]
    if real and vf.ctx.flops is not None and "m" in X and "l" in X:
        C = vf.ctx.flops(X["m"], X["l"]) * X["tokens"]
    else:
        C = 6 * N * X["tokens"]
    return {"C": C, "N": N, "D": X["tokens"], "loss": vf.points.loss}


def frontier_curves(vf: VariantFit, real: bool, n_c: int = 25, n_samples: int = 200) -> dict[str, Any] | None:
    """The frontier of ``vf`` on a compute grid from its smallest run to 1000x its largest: L*, N*, D*
    with bootstrap bands, and where the optimum leaves the runs' ranges (``outside``)."""
    runs = run_compute(vf, real)
    if vf.ctx.C_ref is None or not vf.frontier or runs is None:
        return None
    c_max = float(np.max(runs["C"]))
    C = np.geomspace(float(np.min(runs["C"])), 1000 * c_max, n_c)
    ctx2 = dataclasses.replace(vf.ctx, C_ref=C)
    pre = "numerical_" if real else ""
    _, fr = dv.derived(vf.law, vf.theta, ctx2)
    value = {k: fr[pre + k][0] for k in ("L_star", "N_star", "D_star") if pre + k in fr}
    if "L_star" not in value or not np.any(np.isfinite(value["L_star"])):
        return None
    band = {}
    samples = vf.samples[:n_samples]
    if len(samples) >= 10:
        _, frb = dv.derived(vf.law, samples, ctx2)
        q = (1 - vf.ci) / 2
        for k in value:
            with warnings.catch_warnings():  # a compute where no sample has a frontier: no band there
                warnings.simplefilter("ignore", RuntimeWarning)
                band[k] = (np.nanquantile(frb[pre + k], q, axis=0), np.nanquantile(frb[pre + k], 1 - q, axis=0))
    outside = C > c_max * (1 + 1e-9)
    for k, col in (("N_star", "N"), ("D_star", "D")):
        if k in value:
            lo, hi = float(np.min(runs[col])), float(np.max(runs[col]))
            with np.errstate(invalid="ignore"):
                outside |= ~((value[k] >= lo * (1 - 1e-9)) & (value[k] <= hi * (1 + 1e-9)))
    return {"C": C, "value": value, "band": band, "runs": runs, "C_max_data": c_max,
            "extrapolation_factor": C / c_max, "outside": outside}


def outside_spans(C: np.ndarray, outside: np.ndarray) -> list[tuple[float, float]]:
    """The compute intervals to shade: each run of ``outside`` grid points, widened to the geometric
    midpoints with its neighbours (to the grid's ends at its ends)."""
    edges = np.concatenate([[C[0]], np.sqrt(C[1:] * C[:-1]), [C[-1]]])
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(outside):
        if spans and spans[-1][1] == edges[i]:
            spans[-1] = (spans[-1][0], float(edges[i + 1]))
        else:
            spans.append((float(edges[i]), float(edges[i + 1])))
    return spans


def why_no_frontier(fits: dict[str, VariantFit]) -> str:
    """The sentence the report shows instead of an empty frontier plot."""
    if not any(vf.frontier for vf in fits.values()):
        return ("No compute frontier is drawn: the law has no size and time terms to trade against each "
                "other, or the table has no tokens column to turn the time variable into tokens.")
    return ("No compute frontier is drawn: the fitted law has no finite compute-optimal model at any "
            "compute (a coefficient at its bound, or the optimum on the edge of the searched shapes).")


def plot_frontier(fits: dict[str, VariantFit], out_dir: Path) -> list[Path]:
    """L*(C) and N*(C) of every variant in one figure; [] when no variant has a frontier to draw."""
    real, _ = convention(fits)
    found = {v: frontier_curves(vf, real) for v, vf in fits.items()}
    curves = {v: c for v, c in found.items() if c is not None}
    if not curves:
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(FIG_W, 3.6))
    for i, (v, c) in enumerate(curves.items()):
        col, C = f"C{i % 10}", c["C"]
        for key, ax in (("L_star", a1), ("N_star", a2)):
            if key in c["value"]:
                ax.plot(C, c["value"][key], ("-", "--", "-.", ":")[i % 4], color=col, lw=1.6, label=f"{v}: optimum")
            if key in c["band"]:
                ax.fill_between(C, *c["band"][key], color=col, alpha=0.2, lw=0)
        r = c["runs"]
        a1.scatter(r["C"], r["loss"], s=10, color=col, marker="os^D"[i % 4], alpha=0.6, edgecolor="none",
                   label=f"{v}: runs")
        a2.scatter(r["C"], r["N"], s=10, color=col, marker="os^D"[i % 4], alpha=0.6, edgecolor="none")
    c_max = min(c["C_max_data"] for c in curves.values())
    factor = max(c["extrapolation_factor"][-1] for c in curves.values())
    first = next(iter(curves.values()))
    outside = np.any([c["outside"] for c in curves.values()], axis=0)
    label = f"extrapolated (up to x{factor:.4g} the largest run's C): N* or D* outside the runs' ranges"
    for ax in (a1, a2):
        for j, (x0, x1) in enumerate(outside_spans(first["C"], outside)):
            ax.axvspan(x0, x1, color="0.55", alpha=0.18, lw=0, zorder=0, label=label if j == 0 else None)
        ax.axvline(c_max, color="0.3", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("training compute C (real FLOPs)" if real else "training compute C = 6ND")
    a1.set_ylabel(loss_label(next(iter(fits.values())).points.loss_name))
    a1.set_title("compute-optimal loss L*(C)")
    a2.set_yscale("log")
    a2.set_ylabel("N* (non-embedding params)")
    a2.set_title("compute-optimal model size N*(C)")
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=min(3, len(labels)),
               frameon=False)
    fig.tight_layout(rect=(0, 0.12 + 0.04 * (len(labels) // 3), 1, 1))
    return save(fig, out_dir, "frontier")
