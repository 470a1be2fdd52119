"""What a fit writes beside its result: the table files (coefficients and comparison), and the lines a
terminal shows beside the coefficient table (exclusions, verdicts, the lr envelope, held-out points).

The coefficient table itself is in :mod:`coefficients`, number formatting in :mod:`formatting`
(``fmt``, ``fmt_interval`` and ``wrap`` are importable from here too, as before).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .coefficients import coefficient_table
from .compare_text import comparison_table, universality_words
from .formatting import fmt, fmt_interval, markdown_table, wrap
from .points import shape_text
from .results import universality_test
from .seeds import seed_noise_line

if TYPE_CHECKING:
    from .points import Envelope
    from .results import FitResult

__all__ = ["echo", "envelope_lines", "fmt", "fmt_interval", "heldout_lines", "markdown_table", "wrap", "write_tables"]


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
    out += [seed_noise_line(v, vf.seed_noise, vf.rms_rel_error) for v, vf in result.variants.items()
            if vf.seed_noise is not None]
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
    rows = h["rows"]
    keys = [k for k in rows[0] if k not in ("row", "cell", "actual", "prediction", "lo", "hi", "rel_error", "inside")]
    head = ["row", *keys, "actual", f"prediction [{level}]", "rel error", "inside"]
    body = [[str(r["row"]), *(fmt(r[k]) for k in keys), fmt(r["actual"]),
             fmt_interval(r["prediction"], r["lo"], r["hi"]), f"{100 * r['rel_error']:+.2f}%",
             "yes" if r["inside"] else "NO"] for r in rows[:limit]]
    table = markdown_table(body, head)
    if len(rows) > limit:
        table.append(f"... {len(rows) - limit} more held-out point(s) in the JSON "
                     f"(variants.{variant}.holdout_predictions)")
    return lines, table


def _frac(x: float) -> str:
    return "1/3" if abs(x - 1 / 3) < 1e-12 else f"{x:g}"
