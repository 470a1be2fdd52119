"""The coefficient table: one row per variant; the law's parameters with their intervals, the fit
error, and the headline derived quantities ((m/l)*, D*/N*). Markdown, CSV and LaTeX, and a narrow
form for terminals (one row per quantity, one column per variant). Numbers are printed at their
intervals' precision (:mod:`formatting`); CSV keeps full precision.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .csvfile import csv_text
from .formatting import FLAG_TEXT, interval_text, tex_cell, tex_escape, wrap
from .laws import LATEX, PRETTY

if TYPE_CHECKING:  # annotations only: the renderer knows the result type, never the reverse
    from .results import FitResult, VariantFit

DERIVED_COLUMNS = {  # key: (markdown header, LaTeX header)
    "m_over_l_star": ("(m/ℓ)*", r"$(m/\ell)^*$"),
    "D_over_N_star": ("D*/N*", r"$D^*/N^*$"),
    "N_star_exponent": ("N* ∝ C^a: a", r"$a$ in $N^*\propto C^a$"),
}


def _columns(result: FitResult) -> list[tuple[str, str, str, str]]:
    """(key, kind, markdown header, latex header) for the result's law."""
    law = result.law
    cols = [(n, "param", PRETTY.get(n, n), LATEX.get(n, n.replace("_", r"\_")))
            for n in law.coef_names + [law.constant] + law.exp_names]
    cols.append(("fit_error", "fit", "fit err (rms %)", r"fit err (\%)"))
    present: set[str] = set()
    for vf in result.variants.values():
        present |= set(vf.derived)
    for key, (md, tex) in DERIVED_COLUMNS.items():
        if key in present and not (key == "N_star_exponent" and law.fixed):
            cols.append((key, "derived", md, tex))
    return cols


def _cell(vf: VariantFit, key: str, kind: str) -> dict[str, Any] | None:
    if kind == "param":
        return vf.param_interval(key)
    if kind == "fit":
        return {"value": 100 * vf.rms_rel_error}
    if key in vf.derived:
        return vf.derived_interval(key)
    return None


def rows(result: FitResult) -> tuple[list[tuple[str, str, str, str]], list[dict[str, Any]]]:
    """Columns and, per variant, {key: interval dict} plus n_points / n_runs."""
    cols = _columns(result)
    out = []
    for v, vf in result.variants.items():
        r: dict[str, Any] = {"variant": v, "n_points": len(vf.points), "n_runs": vf.points.n_runs}
        for key, kind, _, _ in cols:
            r[key] = _cell(vf, key, kind)
        out.append(r)
    return cols, out


def _notes(result: FitResult) -> list[str]:
    law = result.law
    o = result.options
    notes = [f"{law.display_name}; fitted on {o['loss_column']}"
             + (f" against {o['time_column']}" if o.get("time_column") else "")
             + (f"; tied: {', '.join(law.tied)}" if law.tied else ""),
             f"objective: {result.objective.describe()}"
             + (" (the default for this law)" if result.objective == type(result.objective).for_law(law)
                else "") + "; --residual log|relative|absolute, --huber-delta none|D",
             f"estimate [{100 * o['ci']:g}% interval]: percentile bootstrap over whole runs "
             f"(B = {o['n_boot']}); fit err = rms of (L - Lhat)/L"]
    if o.get("where"):
        notes.append(f"rows: only where {o['where']}")
    present: set[str] = set().union(*(vf.derived for vf in result.variants.values())) if result.variants else set()
    if "m_over_l_star" in present:
        notes.append("(m/ℓ)* = c_m/(2 c_ℓ) at every N" if law.fixed else
                     "(m/ℓ)* at the largest N of the data (it drifts with N when exponents differ)")
    if "D_over_N_star" in present:
        notes.append("D*/N* at the largest compute of the data, C = 6 N D, tokens from the fit's time "
                     "variable as stated in the JSON (tau_to_tokens)")
    flagged = {f["flag"] for vf in result.variants.values() for f in vf.flags.values()}
    notes += [f"({FLAG_TEXT[k][0]}): {FLAG_TEXT[k][1]}" for k in FLAG_TEXT if k in flagged]
    return notes


def coefficient_table(result: FitResult, fmt_: str = "markdown", label: str = "tab:coefficients") -> str:
    """The table as ``markdown``, ``csv`` or ``latex`` text (``label``: the LaTeX table's \\label)."""
    cols, rs = rows(result)
    if fmt_ == "markdown":
        head = ["variant", "points (runs)"] + [c[2] for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rs:
            cells = [r["variant"], f"{r['n_points']} ({r['n_runs']})"] + [interval_text(r[c[0]]) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines + [""] + [f"- {n}" for n in _notes(result)]) + "\n"
    if fmt_ == "csv":
        head = ["variant", "n_points", "n_runs"]
        for key, kind, _, _ in cols:
            head += [key] if kind == "fit" else [key, f"{key}_lo", f"{key}_hi"]
        body = []
        for r in rs:
            row = [r["variant"], r["n_points"], r["n_runs"]]
            for key, kind, _, _ in cols:
                iv = r[key] or {}
                vals = [iv.get("value")] if kind == "fit" else [iv.get("value"), iv.get("lo"), iv.get("hi")]
                row += [None if v is None else float(v) for v in vals]
            flags = [f"{key}={r[key]['flag']}" for key, kind, _, _ in cols if r[key] and "flag" in r[key]]
            body.append(row + [";".join(flags)])
        return csv_text(head + ["flags"], body, lineterminator="\n")
    if fmt_ == "latex":
        # a float with caption and label, booktabs rules (\usepackage{booktabs}); every number in math mode
        o = result.options
        caption = (f"Coefficients of {result.law.display_name}, fitted on {o['loss_column']}: estimates with "
                   f"{100 * o['ci']:g}% percentile-bootstrap intervals over whole runs (B = {o['n_boot']}); "
                   "points (runs) fitted per variant; fit err is the rms relative error.")
        head = ["variant", "points (runs)"] + [c[3] for c in cols]
        lines = [r"\begin{table}[htbp]", r"\centering", r"\caption{" + tex_escape(caption) + "}",
                 r"\label{" + label + "}", r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
                 " & ".join(head) + r" \\", r"\midrule"]
        for r in rs:
            cells = [tex_escape(r["variant"]), f"{r['n_points']} ({r['n_runs']})"] + [tex_cell(r[c[0]]) for c in cols]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        notes = ["needs \\usepackage{booktabs}", *_notes(result)]
        return "% " + "\n% ".join(notes) + "\n" + "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt_!r}: markdown, csv or latex")


def terminal_table(result: FitResult, width: int = 100) -> str:
    """The coefficient table for a terminal ``width`` columns wide: one row per quantity, one column
    per variant (in blocks of variants that fit), numbers at their intervals' precision, then the
    notes, wrapped. Still Markdown, so it pastes into an issue."""
    cols, rs = rows(result)
    labels = ["points (runs)"] + [c[2] for c in cols]
    columns = [[r["variant"], f"{r['n_points']} ({r['n_runs']})"] + [interval_text(r[c[0]]) for c in cols] for r in rs]
    first = ["variant"] + labels
    w0 = max(map(len, first))
    blocks: list[list[list[str]]] = []
    used = width  # forces a new block for the first variant
    for col in columns:
        w = max(map(len, col))
        if used + w + 3 > width and (not blocks or blocks[-1]):
            blocks.append([])
            used = 4 + w0  # "| " + label + " |"
        blocks[-1].append(col)
        used += w + 3
    out = []
    for block in blocks:
        table = [first] + block
        widths = [max(map(len, c)) for c in table]
        for i in range(len(first)):
            out.append("| " + " | ".join(c[i].ljust(w) for c, w in zip(table, widths)) + " |")
            if i == 0:
                out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.append("")
    out += wrap([f"- {n}" for n in _notes(result)], width)
    return "\n".join(out) + "\n"
