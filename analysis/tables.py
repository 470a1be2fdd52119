"""The coefficient table: one row per variant; the law's parameters with their intervals, the fit
error, and the headline derived quantities ((m/l)*, D*/N*). Markdown, CSV and LaTeX."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .laws import LATEX, PRETTY

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


def fmt(x: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; inf and NaN spelled out."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _columns(result) -> list[tuple[str, str, str, str]]:
    """(key, kind, markdown header, latex header) for the result's law."""
    law = result.law
    cols = [(n, "param", PRETTY.get(n, n), LATEX.get(n, n.replace("_", r"\_")))
            for n in law.coef_names + [law.constant] + law.exp_names]
    cols.append(("fit_error", "fit", "fit err (rms %)", r"fit err (\%)"))
    present = set()
    for vf in result.variants.values():
        present |= set(vf.derived)
    for key, (md, tex) in DERIVED_COLUMNS.items():
        if key in present and not (key == "N_star_exponent" and law.fixed):
            cols.append((key, "derived", md, tex))
    return cols


def _cell(vf, key: str, kind: str) -> dict | None:
    if kind == "param":
        return vf.param_interval(key)
    if kind == "fit":
        return {"value": 100 * vf.rms_rel_error}
    if key in vf.derived:
        return vf.derived_interval(key)
    return None


def rows(result) -> tuple[list, list[dict]]:
    """Columns and, per variant, {key: interval dict} plus n_points / n_runs."""
    cols = _columns(result)
    out = []
    for v, vf in result.variants.items():
        r = {"variant": v, "n_points": len(vf.points), "n_runs": vf.points.n_runs}
        for key, kind, _, _ in cols:
            r[key] = _cell(vf, key, kind)
        out.append(r)
    return cols, out


def _notes(result) -> list[str]:
    law = result.law
    o = result.options
    notes = [f"law {law.name}: L = {law.formula}; fitted on {o['loss_column']}"
             + (f" against {o['time_column']}" if o.get("time_column") else ""),
             f"estimate [{100 * o['ci']:g}% interval]: percentile bootstrap over whole runs "
             f"(B = {o['n_boot']}); fit err = rms of (L - Lhat)/L"]
    present = set().union(*(vf.derived for vf in result.variants.values())) if result.variants else set()
    if "m_over_l_star" in present:
        notes.append("(m/ℓ)* = c_m/(2 c_ℓ) at every N" if law.fixed else
                     "(m/ℓ)* at the largest N of the data (it drifts with N when exponents differ)")
    if "D_over_N_star" in present:
        notes.append("D*/N* at the largest compute of the data, C = 6 N D, tokens from the fit's time "
                     "variable as stated in the JSON (tau_to_tokens)")
    flagged = {f["flag"] for vf in result.variants.values() for f in vf.flags.values()}
    notes += [f"({FLAG_TEXT[k][0]}): {FLAG_TEXT[k][1]}" for k in FLAG_TEXT if k in flagged]
    return notes


def _flag(iv: dict | None) -> str:
    """" (at bound)" for a flagged interval, else ""."""
    return f" ({FLAG_TEXT[iv['flag']][0]})" if iv and "flag" in iv else ""


def coefficient_table(result, fmt_: str = "markdown") -> str:
    """The table as ``markdown``, ``csv`` or ``latex`` text."""
    cols, rs = rows(result)
    if fmt_ == "markdown":
        head = ["variant", "points (runs)"] + [c[2] for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rs:
            cells = [r["variant"], f"{r['n_points']} ({r['n_runs']})"]
            for key, kind, _, _ in cols:
                iv = r[key]
                if iv is None:
                    cells.append("n/a")
                elif "lo" in iv:
                    cells.append(f"{fmt(iv['value'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]{_flag(iv)}")
                else:
                    cells.append(fmt(iv["value"], 3))
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
        def tex(iv):
            if iv is None:
                return "--"
            if "lo" not in iv:
                return f"${fmt(iv['value'], 3)}$"
            v, lo, hi = iv["value"], iv["lo"], iv["hi"]
            if not all(map(math.isfinite, (v, lo, hi))):
                return f"${fmt(v)}$ [{fmt(lo)}, {fmt(hi)}]".replace("inf", r"\infty") + _flag(iv)
            return f"${fmt(v)}^{{+{fmt(hi - v, 2)}}}_{{-{fmt(v - lo, 2)}}}$" + _flag(iv)
        head = ["variant", "points"] + [c[3] for c in cols]
        lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
                 " & ".join(head) + r" \\", r"\midrule"]
        for r in rs:
            name = r["variant"].replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")
            lines.append(" & ".join([name, str(r["n_points"])] + [tex(r[c[0]]) for c in cols]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "% " + "\n% ".join(_notes(result)) + "\n" + "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt_!r}: markdown, csv or latex")


def write_tables(result, out_dir: str | Path, stem: str = "coefficients") -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` into out_dir; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, f in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
        p = out / f"{stem}.{ext}"
        p.write_text(coefficient_table(result, f))
        paths.append(p)
    return paths


def echo(result) -> tuple[list[str], list[str]]:
    """What a terminal must show beside the table: (lines for stdout: every exclusion and the
    universality verdict; lines for stderr: every warning, prefixed with its variant)."""
    out = []
    for e in result.exclusions:
        value = "" if e["value"] is None else f" ({e['value']})"
        out.append(f"excluded {e['n_points']} point(s): {e['rule']}{value}: {e['detail']}; cells "
                   + ", ".join(map(str, e["cells"])))
    if not result.exclusions:
        out.append("no point was excluded")
    ci = f"{100 * result.options['ci']:g}%"
    from .fit import universality_test
    for v, vf in result.variants.items():
        ut = universality_test(vf)
        if ut.get("verdict") is None:
            continue
        parts = [f"{k} = {fmt(x['value'])} [{fmt(x['lo'])}, {fmt(x['hi'])}] vs {_frac(x['universal'])}: "
                 + {True: "inside", False: "OUTSIDE", None: "undetermined"}[x["inside_interval"]]
                 for k, x in ut.items() if isinstance(x, dict)]
        out.append(f"universality test ({v}): the exponents (1/3, 1, 1) are {ut['verdict'].upper()} with the "
                   f"{ci} intervals: " + "; ".join(parts))
    err = [f"warning ({v}): {w}" for v, vf in result.variants.items() for w in vf.warnings + vf.ctx.warnings]
    return out, err


def _frac(x: float) -> str:
    return "1/3" if abs(x - 1 / 3) < 1e-12 else f"{x:g}"
