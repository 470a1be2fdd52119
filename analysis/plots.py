"""Plots of a fit (matplotlib, Agg backend), each written as PNG and PDF.

Per variant:
- ``loss_vs_time``: loss against the time variable per cell (panels by depth, colour by width) with
  the fitted curves;
- ``collapse``: L minus every non-time term against time, log-log: if the law holds the points of
  every shape fall on one line of slope -alpha_time (-1/3);
- ``width_depth``: L minus the time term against width (colour: depth) and against depth (colour:
  width), with the fitted curves;
- ``residuals``: relative residuals (L - Lhat)/L against time and against the fitted loss.
- ``eval_curves``: every cell's whole eval-loss curve against time, one line per cell (panels by
  depth, colour by width), when the table has per-step rows (a store export); dots mark the runs'
  final points.
For all variants together (plot_frontier.py):
- ``frontier``: the compute-optimal loss L*(C) and model size N*(C) with bootstrap bands, and the
  runs, in one FLOP convention.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .columns import truthy  # noqa: E402
from .laws import PRETTY  # noqa: E402
from .plot_frontier import plot_frontier  # noqa: E402
from .plot_style import (  # noqa: E402
    CMAP,
    FIG_W,
    TIME_LABEL,
    colorbar,
    colours,
    depth_of,
    exponent_text,
    legend_or_bar,
    line_style,
    loss_label,
    marker,
    panel_size,
    plain_ticks,
    save,
    shape_vars,
    slug,
    term_label,
    time_label,
    value_label,
    var_label,
)

if TYPE_CHECKING:

    from .results import FitResult, VariantFit


# ------------------------------------------------------------------------------ per variant
def plot_loss_vs_time(vf: VariantFit, out_dir: Path) -> list[Path]:
    law, pts = vf.law, vf.points
    tv = law.time_var
    if tv is None:
        return []
    sv = shape_vars(vf)
    t = pts.V[tv]
    panel_var = "l" if ("l" in sv and "m" in sv) else None
    colour_var = "m" if panel_var else (sv[0] if sv else None)
    panels = np.unique(pts.V[panel_var]) if panel_var else [None]
    nr, nc, size = panel_size(len(panels))
    fig, axes = plt.subplots(nr, nc, figsize=size, squeeze=False, sharex=True, sharey=True)
    cu: Any  # the colour variable's distinct values, or [None]: one colour
    cols, cu = colours(pts.V[colour_var]) if colour_var else ({None: "C0"}, [None])
    tg = np.geomspace(t.min() / 1.3, t.max() * 1.3, 100)
    for ax, pv in zip(axes.flat, panels):
        sel = np.ones(len(pts), bool) if pv is None or panel_var is None else pts.V[panel_var] == pv
        shapes: np.ndarray | list[list[float]] = (np.unique(np.column_stack([pts.V[v][sel] for v in sv]), axis=0)
                                                  if sv else [[]])
        for shp in shapes:
            s2 = sel.copy()
            for v, x in zip(sv, shp):
                s2 &= pts.V[v] == x
            cval = pts.V[colour_var][s2][0] if colour_var else None
            c = cols[cval] if colour_var else "C0"
            mk = marker(pts.V[colour_var], cval) if colour_var else "o"
            ax.scatter(t[s2], pts.loss[s2], s=16, color=c, marker=mk, zorder=3, edgecolor="k", linewidth=0.3)
            V = {tv: tg, **{v: np.full_like(tg, x) for v, x in zip(sv, shp)}}
            ax.plot(tg, vf.predict(V), color=c, lw=1.1,
                    ls=line_style(pts.V[colour_var], cval) if colour_var else "-")
        ax.set_xscale("log")
        plain_ticks(ax, "x", t)
        if pv is not None:
            ax.set_title(f"depth ℓ = {value_label(depth_of(vf, pv))}")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(time_label(vf))
    for ax in axes[:, 0]:
        ax.set_ylabel(loss_label(pts.loss_name))
    if colour_var:
        handles = [plt.Line2D([], [], color=cols[u], marker=marker(cu, u), ls=line_style(cu, u), lw=1.1,
                              label=value_label(u)) for u in cu]
        if len(cu) <= 10:
            fig.legend(handles=handles, title=var_label(colour_var), loc="center left",
                       bbox_to_anchor=(1.0, 0.5), frameon=False)
        else:
            sm = plt.cm.ScalarMappable(norm=LogNorm(cu[0], cu[-1]), cmap=CMAP)
            fig.colorbar(sm, ax=axes, label=var_label(colour_var))
    fig.suptitle(f"{vf.variant}: loss against {time_label(vf)}, points and fitted law ({law.name})")
    fig.tight_layout()
    return save(fig, out_dir, f"loss_vs_time_{slug(vf.variant)}")


def plot_collapse(vf: VariantFit, out_dir: Path) -> list[Path]:
    law, pts, th = vf.law, vf.points, vf.theta
    tv = law.time_var
    if tv is None:
        return []
    j_t = [i for i, t in enumerate(law.terms) if t.var == tv][0]
    y = pts.loss - th[law.const_index]
    for j, term in enumerate(law.terms):
        if j != j_t:
            y = y - law.term_value(th, j, pts.V[term.var])
    t = pts.V[tv]
    pos = y > 0
    sv = shape_vars(vf)
    cv = "m" if "m" in sv else (sv[0] if sv else None)
    if not np.any(pos):  # nothing for a log axis: the report says so instead of an empty plot
        return []
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    if cv:
        sc = ax.scatter(t[pos], y[pos], c=pts.V[cv][pos], cmap=CMAP, norm=LogNorm(), s=14,
                        edgecolor="k", linewidth=0.3, zorder=3)
        colorbar(fig, sc, ax, var_label(cv), pts.V[cv])
    else:
        ax.scatter(t[pos], y[pos], s=14, zorder=3)
    tg = np.geomspace(t.min() / 1.3, t.max() * 1.3, 50)
    a = float(law.exponents(th)[j_t])
    ax.plot(tg, law.term_value(th, j_t, tg), "k-", lw=1.5,
            label=f"{term_label(law, th, j_t)}  (slope −{exponent_text(a)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_ticks(ax, "y")
    plain_ticks(ax, "x", t)
    ax.set_xlabel(time_label(vf))
    others = " − ".join(term_label(law, th, j) for j in range(len(law.terms)) if j != j_t)
    const = PRETTY.get(law.constant, law.constant)
    ax.set_ylabel(f"L − {others} − {const}" if others else f"L − {const}")
    note = f"; {int((~pos).sum())} point(s) ≤ 0 not shown" if np.any(~pos) else ""
    ax.set_title(f"{vf.variant}: collapse onto the time term{note}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return save(fig, out_dir, f"collapse_{slug(vf.variant)}")


def plot_width_depth(vf: VariantFit, out_dir: Path) -> list[Path]:
    law, pts, th = vf.law, vf.points, vf.theta
    sv = shape_vars(vf)
    if not sv:
        return []
    tv = law.time_var
    y = pts.loss.copy()
    if tv is not None:
        j_t = [i for i, t in enumerate(law.terms) if t.var == tv][0]
        y = y - law.term_value(th, j_t, pts.V[tv])
    fig, axes = plt.subplots(1, len(sv), figsize=(FIG_W if len(sv) > 1 else 4.4, 3.4), squeeze=False)
    for ax, xv in zip(axes[0], sv):
        other = [v for v in sv if v != xv]
        x = pts.V[xv]
        xg = np.geomspace(x.min() / 1.2, x.max() * 1.2, 80)
        if other:
            ov = other[0]
            cols, u = colours(pts.V[ov])
            handles = []
            for val in u:
                s = pts.V[ov] == val
                ax.scatter(x[s], y[s], s=16, color=cols[val], marker=marker(u, val), edgecolor="k", linewidth=0.3,
                           zorder=3)
                V = {xv: xg, ov: np.full_like(xg, val)}
                if tv is not None:
                    V[tv] = np.full_like(xg, np.inf)
                lbl = value_label(depth_of(vf, val) if ov == "l" else val)
                ax.plot(xg, _no_time(vf, V), color=cols[val], lw=1.1, ls=line_style(u, val))
                handles.append(plt.Line2D([], [], color=cols[val], marker=marker(u, val), ls=line_style(u, val),
                                          lw=1.1, label=lbl))
            legend_or_bar(fig, ax, u, cols, var_label(ov), handles)
            ax.set_title(f"against {var_label(xv)} at fixed {var_label(ov)}")
        else:
            ax.scatter(x, y, s=14, zorder=3, edgecolor="k", linewidth=0.3)
            V = {xv: xg}
            if tv is not None:
                V[tv] = np.full_like(xg, np.inf)
            ax.plot(xg, _no_time(vf, V), "k-", lw=1.1)
            ax.set_title(f"against {var_label(xv)}")
        ax.set_xscale("log")
        plain_ticks(ax, "x", x)
        if xv == "l" and vf.points.depth_offset:
            ax.set_xlabel(f"effective depth ℓ − {vf.points.depth_offset:g}")
        else:
            ax.set_xlabel(var_label(xv))
    if tv:
        j_t = [i for i, t in enumerate(law.terms) if t.var == tv][0]
        axes[0, 0].set_ylabel(f"L − {term_label(law, th, j_t)}  (time term removed)")
    else:
        axes[0, 0].set_ylabel("L")
    fig.suptitle(f"{vf.variant}: loss with the time term removed; lines: fitted law")
    fig.tight_layout()
    return save(fig, out_dir, f"width_depth_{slug(vf.variant)}")


def _no_time(vf: VariantFit, V: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return vf.predict(V)


def plot_residuals(vf: VariantFit, out_dir: Path) -> list[Path]:
    law, pts = vf.law, vf.points
    r = 100 * vf.residuals
    pred = pts.loss * (1 - vf.residuals)
    tv = law.time_var
    sv = shape_vars(vf)
    cv = "m" if "m" in sv else (sv[0] if sv else None)
    xs = [(pts.V[tv], time_label(vf), True)] if tv else []
    if "l" in sv:
        xs.append((pts.V["l"] + pts.depth_offset, var_label("l"), True))
    xs.append((pred, "fitted loss", False))
    fig, axes = plt.subplots(1, len(xs), figsize=(FIG_W, 3.0), squeeze=False, sharey=True)
    rms = 100 * vf.rms_rel_error
    for ax, (x, lab, logx) in zip(axes[0], xs):
        if cv:
            sc = ax.scatter(x, r, c=pts.V[cv], cmap=CMAP, norm=LogNorm(), s=12, edgecolor="k",
                            linewidth=0.3, zorder=3)
        else:
            ax.scatter(x, r, s=12)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(-rms, rms, color="C1", alpha=0.15, label=f"± rms = {rms:.2g}%")
        if logx:
            ax.set_xscale("log")
            plain_ticks(ax, "x", x)
        ax.set_xlabel(lab)
    axes[0, 0].set_ylabel("residual (L − fit)/L  [%]")
    axes[0, 0].legend(loc="upper right")
    if cv:
        colorbar(fig, sc, axes[0, -1], var_label(cv), pts.V[cv])
    fig.suptitle(f"{vf.variant}: relative residuals of the {law.name} fit")
    fig.tight_layout()
    return save(fig, out_dir, f"residuals_{slug(vf.variant)}")


def plot_eval_curves(table: Mapping[str, Any], out_dir: Path, time: str | None = None) -> dict[str, list[Path]]:
    """Every cell's eval-loss curve, one figure per variant: {"eval_curves_<variant>": [png, pdf]}.
    Empty unless the table has per-step rows (some cell with two or more eval points): a table of
    final points only has nothing the other plots do not show."""
    tcol = next((c for c in (time, "tau_lr", "tokens", "step") if c and c in table), None)
    if tcol is None or not {"cell", "eval_loss"} <= set(table):
        return {}
    cell = np.asarray(table["cell"]).astype(str)
    y, t = np.asarray(table["eval_loss"], float), np.asarray(table[tcol], float)
    ok = np.isfinite(y) & np.isfinite(t) & (t > 0)  # step 0 (t = 0) has no place on a log axis
    if not ok.any() or np.unique(cell[ok], return_counts=True)[1].max() < 2:
        return {}
    variant = np.asarray(table["variant"]).astype(str) if "variant" in table else np.full(len(y), "all")
    m = np.asarray(table["m"], float) if "m" in table else None
    l = np.asarray(table["l"], float) if "l" in table else None
    final = truthy(table["is_final"]) if "is_final" in table else np.zeros(len(y), bool)
    made = {}
    for v in np.unique(variant[ok]):
        sel = ok & (variant == v)
        panels = np.unique(l[sel]) if l is not None else [None]
        nr, nc, size = panel_size(len(panels))
        fig, axes = plt.subplots(nr, nc, figsize=size, squeeze=False, sharex=True, sharey=True)
        cu: Any
        cols, cu = colours(m[sel]) if m is not None else ({None: "C0"}, [None])
        for ax, pv in zip(axes.flat, panels):
            sp = sel if pv is None else sel & (l == pv)
            for c in np.unique(cell[sp]):
                s = np.flatnonzero(sp & (cell == c))
                s = s[np.argsort(t[s])]
                colour = cols[m[s[0]]] if m is not None else "C0"
                ax.plot(t[s], y[s], color=colour, lw=0.9, alpha=0.9,
                        ls=line_style(m[sel], m[s[0]]) if m is not None else "-")
                f = s[final[s]]
                ax.scatter(t[f], y[f], s=12, color=colour, edgecolor="k", linewidth=0.3, zorder=3)
            ax.set_xscale("log")
            plain_ticks(ax, "x")
            if pv is not None:
                ax.set_title(f"depth ℓ = {value_label(pv)}")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel(TIME_LABEL.get(tcol, tcol))
        for ax in axes[:, 0]:
            ax.set_ylabel("eval loss (nats/token)")
        if m is not None:
            handles = [plt.Line2D([], [], color=cols[u], lw=1.2, ls=line_style(cu, u), label=value_label(u))
                       for u in cu]
            fig.legend(handles=handles, title=var_label("m"), loc="center left", bbox_to_anchor=(1.0, 0.5),
                       frameon=False)
        n_cells = len(np.unique(cell[sel]))
        fig.suptitle(f"{v}: eval loss of every cell ({n_cells} cells), whole curves; dots: final points")
        fig.tight_layout()
        made[f"eval_curves_{slug(v)}"] = save(fig, out_dir, f"eval_curves_{slug(v)}")
    return made


# ------------------------------------------------------------------------------ all variants
def plot_all(result: FitResult, out_dir: str | Path) -> dict[str, list[Path]]:
    """Every plot of ``result`` into out_dir: {name: [png, pdf]}."""
    out = Path(out_dir)
    made: dict[str, list[Path]] = {}
    for v, vf in result.variants.items():
        for name, f in (("loss_vs_time", plot_loss_vs_time), ("collapse", plot_collapse),
                        ("width_depth", plot_width_depth), ("residuals", plot_residuals)):
            p = f(vf, out)
            if p:
                made[f"{name}_{slug(v)}"] = p
    p = plot_frontier(result.variants, out)  # (plot_frontier.py)
    if p:
        made["frontier"] = p
    return made
