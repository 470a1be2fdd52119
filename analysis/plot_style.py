"""What the plots share: axis labels, colours, ticks, colour bars, terms as text, and the style."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from .laws import PRETTY  # noqa: E402
from .report_doc import PNG_DPI  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.colorbar import Colorbar
    from matplotlib.colorizer import ColorizingArtist
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .laws import Law
    from .results import VariantFit

# Fixed sizes: every figure is at most FIG_W inches wide (plus an outside legend) and the HTML shows it
# at its own width (report_doc), so an 8.5 pt tick label is >= 10 px on an 800 px page and in print.
FIG_W = 7.2
TICK_PT = 8.5
plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9,
                     "xtick.labelsize": TICK_PT, "ytick.labelsize": TICK_PT, "legend.fontsize": 8,
                     "legend.title_fontsize": 8.5, "figure.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3})
# A sequential map dark enough at both ends to read on white and in greyscale print (grey level
# 0.07 to 0.59; viridis ends in a pale yellow of 0.9): plasma from dark blue to orange, without its
# yellow end. Series also differ by marker and line style, not by colour alone.
CMAP = ListedColormap(plt.get_cmap("plasma")(np.linspace(0.0, 0.7, 256)), name="plasma_dark")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
LINES = ("-", "--", "-.", ":")

VAR_LABEL = {"tau": "τ", "D": "D (tokens)", "m": "width m", "l": "depth ℓ", "N": "N (parameters)"}
TIME_LABEL = {"tau_lr": "τ = Σ lr", "tokens": "tokens D", "steps": "steps"}


def loss_units(column: str) -> str:
    """The unit of a loss column: a store export's losses are mean cross-entropy in nats per token;
    a file's own column is whatever the file holds."""
    return "nats/token" if column in ("eval_loss", "train_loss") else ""


def loss_label(column: str) -> str:
    u = loss_units(column)
    return f"loss ({column}, {u})" if u else f"loss ({column})"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)) or "_"


def time_label(vf: VariantFit) -> str:
    tv = vf.law.time_var or ""  # (callers plot a time variable)
    return TIME_LABEL.get(vf.points.time or "", VAR_LABEL.get(tv, tv))


def shape_vars(vf: VariantFit) -> list[str]:
    return list(dict.fromkeys(t.var for t in vf.law.terms if t.var not in ("tau", "D")))


def var_label(var: str) -> str:
    """An axis label; a formula's own variable (a column of the table) is labelled by its name."""
    return VAR_LABEL.get(var, var)


def depth_of(vf: VariantFit, l_eff: float) -> float:
    return l_eff + vf.points.depth_offset


def colours(values: np.ndarray) -> tuple[dict[Any, Any], np.ndarray]:
    """A colour per distinct value (log-spaced on :data:`CMAP`) and the distinct values."""
    u = np.unique(values)
    if len(u) == 1:
        return {u[0]: CMAP(0.3)}, u
    z = (np.log(u) - np.log(u[0])) / (np.log(u[-1]) - np.log(u[0]))
    return {v: CMAP(zi) for v, zi in zip(u, z)}, u


def panel_size(n_panels: int, height: float = 2.6, max_cols: int = 3) -> tuple[int, int, tuple[float, float]]:
    """(rows, cols, figsize) of a grid of panels that is FIG_W wide, whatever the number of panels."""
    nc = max(1, min(max_cols, n_panels))
    nr = int(np.ceil(n_panels / nc))
    return nr, nc, (FIG_W, height * nr + 0.5)


def marker(values: np.ndarray, v: Any) -> str:
    """The marker of value ``v`` among the distinct ``values`` (a series reads in greyscale too)."""
    return MARKERS[int(np.searchsorted(np.unique(values), v)) % len(MARKERS)]


def line_style(values: np.ndarray, v: Any) -> str:
    return LINES[int(np.searchsorted(np.unique(values), v)) % len(LINES)]


def legend_or_bar(fig: Figure, ax: Axes, u: np.ndarray, cmap_of: dict[Any, Any], label: str,
                   handles: list[Line2D] | None = None) -> None:
    if len(u) <= 10:
        ax.legend(handles=handles, title=label, loc="best", frameon=True)
    else:
        sm = plt.cm.ScalarMappable(norm=LogNorm(u[0], u[-1]), cmap=CMAP)
        fig.colorbar(sm, ax=ax, label=label)


def plain_ticks(ax: Axes, which: str = "x", values: np.ndarray | None = None) -> None:
    """Plain numbers (64, 0.5) instead of 6x10^1 on a log axis: ticks at the data's values when
    there are few of them, else at 1-2-5 (or finer, on a short range) steps."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = (ax.get_xlim() if which == "x" else ax.get_ylim())
    if not (lo > 1e-3 and hi < 1e4):
        return  # powers of ten read better there
    u = np.unique(values) if values is not None else np.array([])
    if 1 < len(u) <= 8:
        axis.set_ticks(u)
    else:
        decades = np.log10(hi / lo)
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if decades < 1.2 else (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def colorbar(fig: Figure, mappable: ScalarMappable | ColorizingArtist, ax: Axes, label: str, values: np.ndarray
              ) -> Colorbar:
    u = np.unique(values)
    cb = fig.colorbar(mappable, ax=ax, label=label)
    if len(u) <= 8:
        cb.set_ticks(u.tolist())
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    cb.ax.yaxis.set_minor_formatter(NullFormatter())
    return cb


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """The figure as <name>.png (PNG_DPI) and <name>.pdf in out_dir; closes it. Returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=PNG_DPI, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def exponent_text(a: float) -> str:
    for num, den in ((1, 3), (1, 2), (2, 3), (1, 1), (2, 1)):
        if abs(a - num / den) < 1e-9:
            return f"{num}/{den}" if den != 1 else f"{num}"
    return f"{a:.3g}"


def term_label(law: Law, theta: np.ndarray, j: int) -> str:
    """A term as text: c_τ τ^(−1/3), c_m/m, A/N^0.34."""
    t = law.terms[j]
    a = float(law.exponents(theta)[j])
    c, v = PRETTY.get(t.coef, t.coef), {"tau": "τ", "l": "ℓ"}.get(t.var, t.var)
    return f"{c}/{v}" if a == 1 else f"{c} {v}^(−{exponent_text(a)})"


def value_label(v: float) -> str:
    return f"{v:g}" if v < 1e5 else f"{v:.3g}"
