"""The comparisons of :mod:`compare` as text: sentences, the difference table (Markdown, CSV, LaTeX)
and the terminal summary."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .csvfile import csv_text
from .formatting import fmt_interval, markdown_table, tex_cell, tex_escape, wrap
from .laws import LATEX, PRETTY

if TYPE_CHECKING:
    from .results import FitResult

NAMES = {"m_over_l_star": "(m/ℓ)*", "D_over_N_star": "D*/N*", "L_star_at_C": "L*(C)", "c_N": "c_N", "c_D": "c_D",
         "N_star_exponent": "N* ∝ C^a: a", "L_star_exponent": "L* - L0 ∝ C^-b: b",
         "shape_exponent": "(m/ℓ)* ∝ N^e: e", "shape_loss_exponent": "S* ∝ N^-s: s"}


def comparison_words(comp: dict[str, Any]) -> list[str]:
    """One sentence per variant, in plain words: the quantities where it differs from the reference
    (the interval of the difference excludes 0) and those where it does not measurably (it includes 0)."""
    out = []
    ref = comp["reference"]
    for v, rows in comp["variants"].items():
        yes = [NAMES.get(k, _pretty(k)) for k, r in rows.items() if r["excludes_zero"]]
        no = [NAMES.get(k, _pretty(k)) for k, r in rows.items() if not r["excludes_zero"]]
        if not no:
            words = f"{v} differs from {ref} in every quantity (every interval excludes 0)"
        elif not yes:
            words = f"{v} does not differ measurably from {ref} in any quantity (every interval includes 0)"
        else:
            words = (f"{v} differs from {ref} in {_and(yes)} (intervals exclude 0), not measurably in "
                     f"{_and(no)} (intervals include 0)")
        out.append(f"{v} - {ref}: {words}.")
    return out


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _pretty(k: str) -> str:
    return PRETTY.get(k, k)


def comparison_table(comp: dict[str, Any], fmt_: str = "markdown") -> str:
    """The differences as ``markdown`` (one row per variant and quantity, then the words), ``csv``
    (full precision) or ``latex``."""
    ref = comp["reference"]
    body = [(v, k, r) for v, rows in comp["variants"].items() for k, r in rows.items()]
    if fmt_ == "markdown":
        lines = [f"| variant - {ref} | quantity | difference [interval] | excludes 0 | ratio [interval] |",
                 "|---|---|---|---|---|"]
        for v, k, r in body:
            q = r["ratio"]
            lines.append(f"| {v} | {NAMES.get(k, _pretty(k))} | {fmt_interval(r['value'], r['lo'], r['hi'])} | "
                         f"{'yes' if r['excludes_zero'] else 'no'} | {fmt_interval(q['value'], q['lo'], q['hi'])} |")
        notes = comparison_words(comp) + [comp["interval"]]
        if comp.get("C_for_L_star") is not None:
            notes.append(f"L*(C) at C = {comp['C_for_L_star']:.4g} FLOPs, the largest compute of any variant's runs "
                         f"(closed form, C = 6 N D)")
        return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    if fmt_ == "csv":
        head = ["variant", "reference", "quantity", "difference", "lo", "hi", "excludes_zero",
                "ratio", "ratio_lo", "ratio_hi", "ratio_excludes_one"]
        out = []
        for v, k, r in body:
            q = r["ratio"]
            out.append([v, ref, k, *(float(x) for x in (r["value"], r["lo"], r["hi"])), r["excludes_zero"],
                        *(float(x) for x in (q["value"], q["lo"], q["hi"])), q["excludes_one"]])
        return csv_text(head, out, lineterminator="\n")
    if fmt_ == "latex":
        lines = [r"\begin{tabular}{llrcr}", r"\hline",
                 rf"variant $-$ {tex_escape(ref)} & quantity & difference & excludes 0 & ratio \\", r"\hline"]
        for v, k, r in body:
            name = LATEX.get(k) or tex_escape(NAMES.get(k, k))
            lines.append(f"{tex_escape(v)} & {name} & {tex_cell(r)} & {'yes' if r['excludes_zero'] else 'no'} & "
                         rf"{tex_cell(r['ratio'])} \\")
        lines += [r"\hline", r"\end{tabular}"]
        return "% " + "\n% ".join(comparison_words(comp) + [comp["interval"]]) + "\n" + "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt_!r}: markdown, csv or latex")


def universality_words(u: dict[str, Any]) -> list[str]:
    """The verdict and the exponent differences as sentences."""
    if not u:
        return []
    if "skipped" in u:
        return [f"universality across variants: NO VERDICT, the test cannot be run on these points: {u['skipped']}"]
    q, dof = u["df"]
    shared = ", ".join(f"{_pretty(k)} = {x:.4g}" for k, x in u["shared_exponents"].items())
    out = [f"universality across variants: shared exponents are {u['verdict'].upper()} "
           f"(F = {u['statistic']:.3g} on ({q}, {dof}) df, p = {u['p_value']:.3g}, level {u['level']:g}; "
           f"{u['test']}); shared fit: {shared}"]
    d = u["differences"]
    for v, rows in d["variants"].items():
        out.append(f"exponent differences {v} - {d['reference']} (Bonferroni-corrected intervals): " + "; ".join(
            f"{_pretty(e)} {fmt_interval(r['value'], r['lo'], r['hi'])}" + (" (excludes 0)" if r["excludes_zero"]
                                                                           else "")
            for e, r in rows.items()))
    dd = u.get("detectable_difference")
    if dd:
        out.append(f"detectable exponent difference ({dd['variant']} - {dd['reference']}) at "
                   f"{100 * dd['power']:g}% power on these points: " + ", ".join(
                       f"{_pretty(e)} {r['value']:.2g}" if r["value"] < float("inf") else f"{_pretty(e)} none found"
                       for e, r in dd["exponents"].items())
                   + f" (by simulation from the shared fit: {dd['draws']} synthetic tables per difference, noise sd "
                     f"{dd['noise_sd']:.2g} in log L; smaller differences may go unnoticed)")
    return out + [f"warning: {w}" for w in u.get("warnings", [])]


def comparison_text(result: FitResult, width: int | None = 100) -> str:
    """The difference table for a terminal: one aligned block per variant (so a long variant name
    costs no column), then the sentences wrapped to ``width``."""
    comp = result.comparison
    out: list[str] = []
    for v, rows in comp["variants"].items():
        table = [["quantity", "difference [interval]", "excludes 0", "ratio [interval]"]]
        for k, r in rows.items():
            q = r["ratio"]
            table.append([NAMES.get(k, _pretty(k)), fmt_interval(r["value"], r["lo"], r["hi"]),
                          "yes" if r["excludes_zero"] else "no", fmt_interval(q["value"], q["lo"], q["hi"])])
        out.append(f"{v} - {comp['reference']}:")
        out += markdown_table(table[1:], table[0])
        out.append("")
    md = comparison_table(comp, "markdown").rstrip("\n").split("\n")
    notes = [ln for ln in md if ln.startswith("- ")]
    return "\n".join(out + wrap(notes, width)) + "\n"
