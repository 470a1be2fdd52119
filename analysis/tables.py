"""The coefficient table: one row per variant; the law's parameters with their intervals, the fit
error, and the headline derived quantities ((m/l)*, D*/N*). Markdown, CSV and LaTeX, and a narrow
form for terminals (one row per quantity, one column per variant).

Numbers with an interval are printed to the precision the interval supports (:func:`fmt_interval`):
value and bounds are rounded at the decimal place of the second significant digit of the interval's
width hi - lo, so ``557.8 [266.3, 1004]`` prints as ``560 [270, 1000]``. The rounded bounds always
differ (they keep at least 10 units of the last place between them). A zero width (or one under a
millionth of the bounds: the optimiser's rounding noise) prints 4 significant digits. CSV and JSON
keep full precision.
"""
from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .laws import LATEX, PRETTY

if TYPE_CHECKING:  # fit imports this module (lazily); the names are for annotations only
    from .fit import FitResult, VariantFit
    from .points import Envelope

DERIVED_COLUMNS = {  # key: (markdown header, LaTeX header)
    "m_over_l_star": ("(m/ℓ)*", r"$(m/\ell)^*$"),
    "D_over_N_star": ("D*/N*", r"$D^*/N^*$"),
    "N_star_exponent": ("N* ∝ C^a: a", r"$a$ in $N^*\propto C^a$"),
}


FLAG_TEXT = {  # parameter flags (fit.parameter_flags): cell suffix, and what it means
    "at_bound": ("at bound", "the parameter sits on its lower bound 0: the data show no measurable term; "
                             "its value is the bound, not an estimate (read the interval's upper end as "
                             "an upper limit)"),
    "unidentified": ("unidentified", "the data do not determine the parameter (a bootstrap interval of "
                                     "zero width, or the exponent of a term at its bound): its value is "
                                     "not an estimate"),
}


def fmt(x: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; inf and NaN spelled out."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def interval_place(lo: float, hi: float) -> int | None:
    """The decimal place q (a resolution of 10**q) of the second significant digit of hi - lo; None
    when the width is not finite or zero, where zero includes a width under a millionth of the
    bounds: the optimiser's rounding noise (a parameter pinned at its bound), not an interval."""
    w = hi - lo
    if not (math.isfinite(w) and w > 1e-6 * max(abs(lo), abs(hi))):
        return None
    return math.floor(math.log10(w)) - 1


def fmt_at(x: float | None, q: int | None) -> str:
    """``x`` rounded at the decimal place 10**q: plain digits when 1e-4 <= |x| < 1e6, else
    e-notation with the same resolution. q None: :func:`fmt` (4 significant digits)."""
    if q is None or x is None or not math.isfinite(x):
        return fmt(x)
    r = round(x, -q)
    if r == 0:
        return "0"
    e = math.floor(math.log10(abs(r)))
    if -4 <= e < 6:
        return f"{r:.{max(0, -q)}f}"
    return f"{r:.{max(0, e - q)}e}"


def fmt_interval(value: float, lo: float, hi: float) -> str:
    """``value [lo, hi]`` rounded to the precision the interval supports (module docstring)."""
    q = interval_place(lo, hi) if lo is not None and hi is not None else None

    def at(v: float | None) -> str:  # a wide interval must not round a number away: 5.0 [2.2, 180], not 0 [0, 180]
        if q is None or v is None or not math.isfinite(v) or v == 0:
            return fmt_at(v, q)
        return fmt_at(v, min(q, math.floor(math.log10(abs(v))) - 1))
    return f"{at(value)} [{at(lo)}, {at(hi)}]"


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


def _flag(iv: dict[str, Any] | None) -> str:
    """" (at bound)" for a flagged interval, else ""."""
    return f" ({FLAG_TEXT[iv['flag']][0]})" if iv and "flag" in iv else ""


def _text(iv: dict[str, Any] | None) -> str:
    """A table cell: ``value [lo, hi]`` at the interval's precision (+ flag), or the bare value."""
    if iv is None:
        return "n/a"
    if "lo" in iv:
        return fmt_interval(iv["value"], iv["lo"], iv["hi"]) + _flag(iv)
    return fmt(iv["value"], 3)


def coefficient_table(result: FitResult, fmt_: str = "markdown", label: str = "tab:coefficients") -> str:
    """The table as ``markdown``, ``csv`` or ``latex`` text (``label``: the LaTeX table's \\label)."""
    cols, rs = rows(result)
    if fmt_ == "markdown":
        head = ["variant", "points (runs)"] + [c[2] for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rs:
            cells = [r["variant"], f"{r['n_points']} ({r['n_runs']})"] + [_text(r[c[0]]) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines + [""] + [f"- {n}" for n in _notes(result)]) + "\n"
    if fmt_ == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["variant", "n_points", "n_runs"]
        for key, kind, _, _ in cols:
            head += [key] if kind == "fit" else [key, f"{key}_lo", f"{key}_hi"]
        w.writerow(head + ["flags"])
        for r in rs:
            row = [r["variant"], r["n_points"], r["n_runs"]]
            for key, kind, _, _ in cols:
                iv = r[key] or {}
                vals = [iv.get("value")] if kind == "fit" else [iv.get("value"), iv.get("lo"), iv.get("hi")]
                row += ["" if v is None else repr(float(v)) for v in vals]
            flags = [f"{key}={r[key]['flag']}" for key, kind, _, _ in cols if r[key] and "flag" in r[key]]
            w.writerow(row + [";".join(flags)])
        return buf.getvalue()
    if fmt_ == "latex":
        # a float with caption and label, booktabs rules (\usepackage{booktabs}); every number in math mode
        o = result.options
        caption = (f"Coefficients of {result.law.display_name}, fitted on {o['loss_column']}: estimates with "
                   f"{100 * o['ci']:g}% percentile-bootstrap intervals over whole runs (B = {o['n_boot']}); "
                   "points (runs) fitted per variant; fit err is the rms relative error.")
        head = ["variant", "points (runs)"] + [c[3] for c in cols]
        lines = [r"\begin{table}[htbp]", r"\centering", r"\caption{" + _tex_escape(caption) + "}",
                 r"\label{" + label + "}", r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
                 " & ".join(head) + r" \\", r"\midrule"]
        for r in rs:
            cells = [_tex_escape(r["variant"]), f"{r['n_points']} ({r['n_runs']})"] + [_tex_cell(r[c[0]]) for c in cols]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        notes = ["needs \\usepackage{booktabs}", *_notes(result)]
        return "% " + "\n% ".join(notes) + "\n" + "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt_!r}: markdown, csv or latex")


def _tex_escape(text: str) -> str:
    """Text for a LaTeX table cell: the ten special characters escaped."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(ch, ch) for ch in str(text))


def _tex_fixed(x: float, q: int) -> str:
    """x rounded at 10**q in plain digits (no exponent; the caller scales large and small numbers)."""
    r = round(x, -q)
    return "0" if r == 0 else f"{r:.{max(0, -q)}f}"


def _tex_scale(*xs: float) -> int:
    """The power of ten to factor out so the numbers read as plain digits (0 when they already do)."""
    big = max(abs(x) for x in xs)
    if big == 0 or 1e-3 <= big < 1e6:
        return 0
    return math.floor(math.log10(big))


def _tex_number(x: float, digits: int = 3) -> str:
    """A number for math mode: ``digits`` significant digits, ``\\times 10^{n}`` instead of e-notation."""
    if not math.isfinite(x):
        return r"\mathrm{n/a}" if math.isnan(x) else (r"\infty" if x > 0 else r"-\infty")
    if x == 0:
        return "0"
    e = _tex_scale(x)
    q = math.floor(math.log10(abs(x))) - digits + 1 - e
    body = _tex_fixed(x / 10.0 ** e, q)
    return body if e == 0 else rf"{body}\times 10^{{{e}}}"


def _tex_cell(iv: dict[str, Any] | None) -> str:
    """``$v^{+up}_{-down}$`` at the interval's precision (module docstring), a power of ten factored
    out as ``(...)\\times 10^{n}``; ``$v\\ [lo, hi]$`` when an end is infinite or the value lies
    outside its interval."""
    if iv is None or iv.get("value") is None or not math.isfinite(iv["value"]):
        return "--"
    if "lo" not in iv:
        return f"${_tex_number(iv['value'])}$"
    v = iv["value"]
    lo, hi = (math.nan if x is None else x for x in (iv["lo"], iv["hi"]))
    q = interval_place(lo, hi)
    if q is None or not lo <= v <= hi:
        return rf"${_tex_number(v, 4)}\ [{_tex_number(lo, 4)}, {_tex_number(hi, 4)}]$" + _flag(iv)
    e = _tex_scale(v, lo, hi)
    k = 10.0 ** e
    body = (f"{_tex_fixed(v / k, q - e)}^{{+{_tex_fixed((hi - v) / k, q - e)}}}"
            f"_{{-{_tex_fixed((v - lo) / k, q - e)}}}")
    return (f"${body}$" if e == 0 else rf"$({body})\times 10^{{{e}}}$") + _flag(iv)


def terminal_table(result: FitResult, width: int = 100) -> str:
    """The coefficient table for a terminal ``width`` columns wide: one row per quantity, one column
    per variant (in blocks of variants that fit), numbers at their intervals' precision, then the
    notes, wrapped. Still Markdown, so it pastes into an issue."""
    cols, rs = rows(result)
    labels = ["points (runs)"] + [c[2] for c in cols]
    columns = [[r["variant"], f"{r['n_points']} ({r['n_runs']})"] + [_text(r[c[0]]) for c in cols] for r in rs]
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


def wrap(lines: list[str], width: int | None) -> list[str]:
    """Each line wrapped at ``width`` columns, continuation lines indented by two spaces (None: as is)."""
    if width is None:
        return list(lines)
    return [w for ln in lines for w in (textwrap.wrap(ln, width, subsequent_indent="  ", break_on_hyphens=False)
                                         or [""])]


def write_tables(result: FitResult, out_dir: str | Path, stem: str = "coefficients") -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` into out_dir (and ``comparison.*``, the
    differences between variants, when there are two or more); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, f in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
        p = out / f"{stem}.{ext}"
        p.write_text(coefficient_table(result, f, label=f"tab:{stem}"))
        paths.append(p)
        if result.comparison:  # two or more variants: the differences against the reference beside it
            from .compare import comparison_table
            p = out / f"comparison.{ext}"
            p.write_text(comparison_table(result.comparison, f))
            paths.append(p)
    return paths


def echo(result: FitResult, width: int | None = None, verbose: bool = False) -> tuple[list[str], list[str]]:
    """What a terminal must show beside the table: (lines for stdout: one line per exclusion rule (its
    cells too when ``verbose``; always in the JSON) and the universality verdict; lines for stderr:
    every warning, prefixed with its variant), wrapped at ``width`` columns when given. The objective
    is in the table's notes, not repeated here."""
    out = []
    for e in result.exclusions:
        value = "" if e["value"] is None else f" ({e['value']})"
        line = f"excluded {e['n_points']:,} point(s): {e['rule']}{value}: {e['detail']}"
        out.append(line + ("; cells " + ", ".join(map(str, e["cells"])) if verbose else ""))
    if not result.exclusions:
        out.append("no point was excluded")
    ci = f"{100 * result.options['ci']:g}%"
    from .results import universality_test
    for v, vf in result.variants.items():
        if not vf.info.get("converged", True):
            out.append(f"NOT CONVERGED ({v}): the optimiser stopped with {vf.info.get('stop', '?')!r}; "
                       f"see the warning below")
        ut = universality_test(vf)
        if ut.get("verdict") is None:
            continue
        parts = [f"{k} = {fmt_interval(x['value'], x['lo'], x['hi'])} vs {_frac(x['universal'])}: "
                 + {True: "inside", False: "OUTSIDE", None: "undetermined"}[x["inside_interval"]]
                 for k, x in ut.items() if isinstance(x, dict)]
        out.append(f"universality test ({v}): the exponents (1/3, 1, 1) are {ut['verdict'].upper()} with the "
                   f"{ci} intervals: " + "; ".join(parts))
    from .compare import universality_words
    out += universality_words(result.universality_across)
    out = wrap(out, width)
    for v, vf in result.variants.items():
        if vf.points.envelope is not None:
            out += envelope_lines(vf.points.envelope, v)   # a table: not wrapped
    for v, vf in result.variants.items():
        if vf.heldout is not None:
            summary, table = heldout_lines(vf.heldout, v, len(vf.points))
            out += wrap(summary, width) + table   # a table is not wrapped: its rows would break
    err = [f"warning ({v}): {w}" for v, vf in result.variants.items() for w in vf.warnings + vf.ctx.warnings]
    return out, wrap(err, width)


def envelope_lines(env: Envelope, variant: str, limit: int = 30) -> list[str]:
    """``--points best-lr``: which lr won for each shape, at each budget (up to ``limit`` shapes; every
    shape and budget is in the JSON), the lrs swept, and how often the winner is at an edge."""
    from .points import shape_text
    groups = env.by_shape()
    out = [f"best lr per shape ({variant}; budgets by {env.budget_name}, in increasing order):", "",
           "| shape | best lr at each budget | lrs swept | at an edge |", "|---|---|---|---|"]
    for g in groups[:limit]:
        best = g["best_lr"]
        won = f"{best[0]:g} (all {len(best)})" if len(set(best)) == 1 else ", ".join(f"{x:g}" for x in best)
        n_edge = sum(e in ("low", "high") for e in g["edge"])
        single = all(e == "single" for e in g["edge"])
        out.append(f"| {shape_text(g)} | {won} | {', '.join(f'{x:g}' for x in g['lrs'])} | "
                   + ("single lr" if single else f"{n_edge} of {len(best)}" if n_edge else "") + " |")
    if len(groups) > limit:
        out.append(f"... {len(groups) - limit} more shapes in the JSON (lr_envelope)")
    return out


def heldout_lines(h: dict[str, Any], variant: str, n_train: int, limit: int = 12) -> tuple[list[str], list[str]]:
    """``fit --holdout``: (summary lines, the held-out points (up to ``limit``) as a table: the row of
    the table (0-based), the law's variables, the loss, the prediction with its interval)."""
    s = h["summary"]
    level = f"{100 * h['ci']:g}%"
    lines = [f"held out ({variant}): {s['n']} point(s) where {h['condition']}, predicted from a fit of the "
             f"other {n_train}: mean |rel error| {100 * s['mean_abs_rel_error']:.3g}%, max "
             f"{100 * s['max_abs_rel_error']:.3g}%, mean (bias) {100 * s['mean_rel_error']:+.3g}%; "
             f"{s['n_inside']} of {s['n']} inside the {level} interval of the "
             + ("law (fit uncertainty only; --interval run adds one run's scatter)" if h["interval"] == "law"
                else "law plus one run's scatter")]
    rows, table = h["rows"], []
    keys = [k for k in rows[0] if k not in ("row", "cell", "actual", "prediction", "lo", "hi", "rel_error", "inside")]
    head = ["row", *keys, "actual", f"prediction [{level}]", "rel error", "inside"]
    body = [[str(r["row"]), *(fmt(r[k]) for k in keys), fmt(r["actual"]),
             fmt_interval(r["prediction"], r["lo"], r["hi"]), f"{100 * r['rel_error']:+.2f}%",
             "yes" if r["inside"] else "NO"] for r in rows[:limit]]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    table.append("| " + " | ".join(c.ljust(w) for c, w in zip(head, widths)) + " |")
    table.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    table += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in body]
    if len(rows) > limit:
        table.append(f"... {len(rows) - limit} more held-out point(s) in the JSON "
                     f"(variants.{variant}.holdout_predictions)")
    return lines, table


def _frac(x: float) -> str:
    return "1/3" if abs(x - 1 / 3) < 1e-12 else f"{x:g}"
