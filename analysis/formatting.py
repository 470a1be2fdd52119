"""Numbers, intervals and cells as text: plain, Markdown (padded tables) and LaTeX.

Numbers with an interval are printed to the precision the interval supports (:func:`fmt_interval`):
value and bounds are rounded at the decimal place of the second significant digit of the interval's
width hi - lo, so ``557.8 [266.3, 1004]`` prints as ``560 [270, 1000]``. The rounded bounds always
differ (they keep at least 10 units of the last place between them). A zero width (or one under a
millionth of the bounds: the optimiser's rounding noise) prints 4 significant digits. CSV and JSON
keep full precision.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

FLAG_TEXT = {  # parameter flags (identify.parameter_flags): cell suffix, and what it means
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


def flag_suffix(iv: dict[str, Any] | None) -> str:
    """" (at bound)" for a flagged interval, else ""."""
    return f" ({FLAG_TEXT[iv['flag']][0]})" if iv and "flag" in iv else ""


def interval_text(iv: dict[str, Any] | None) -> str:
    """A table cell: ``value [lo, hi]`` at the interval's precision (+ flag), or the bare value."""
    if iv is None:
        return "n/a"
    if "lo" in iv:
        return fmt_interval(iv["value"], iv["lo"], iv["hi"]) + flag_suffix(iv)
    return fmt(iv["value"], 3)


def wrap(lines: list[str], width: int | None) -> list[str]:
    """Each line wrapped at ``width`` columns, continuation lines indented by two spaces (None: as is)."""
    if width is None:
        return list(lines)
    return [w for ln in lines for w in (textwrap.wrap(ln, width, subsequent_indent="  ", break_on_hyphens=False)
                                         or [""])]


def markdown_table(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> list[str]:
    """A Markdown table padded for a terminal: the header ``columns``, a rule, one line per row; every
    column as wide as its widest cell (cells as ``str``)."""
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return lines + ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]


def tex_escape(text: str) -> str:
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


def tex_number(x: float, digits: int = 3) -> str:
    """A number for math mode: ``digits`` significant digits, ``\\times 10^{n}`` instead of e-notation."""
    if not math.isfinite(x):
        return r"\mathrm{n/a}" if math.isnan(x) else (r"\infty" if x > 0 else r"-\infty")
    if x == 0:
        return "0"
    e = _tex_scale(x)
    q = math.floor(math.log10(abs(x))) - digits + 1 - e
    body = _tex_fixed(x / 10.0 ** e, q)
    return body if e == 0 else rf"{body}\times 10^{{{e}}}"


def tex_cell(iv: dict[str, Any] | None) -> str:
    """``$v^{+up}_{-down}$`` at the interval's precision (module docstring), a power of ten factored
    out as ``(...)\\times 10^{n}``; ``$v\\ [lo, hi]$`` when an end is infinite or the value lies
    outside its interval."""
    if iv is None or iv.get("value") is None or not math.isfinite(iv["value"]):
        return "--"
    if "lo" not in iv:
        return f"${tex_number(iv['value'])}$"
    v = iv["value"]
    lo, hi = (math.nan if x is None else x for x in (iv["lo"], iv["hi"]))
    q = interval_place(lo, hi)
    if q is None or not lo <= v <= hi:
        return rf"${tex_number(v, 4)}\ [{tex_number(lo, 4)}, {tex_number(hi, 4)}]$" + flag_suffix(iv)
    e = _tex_scale(v, lo, hi)
    k = 10.0 ** e
    body = (f"{_tex_fixed(v / k, q - e)}^{{+{_tex_fixed((hi - v) / k, q - e)}}}"
            f"_{{-{_tex_fixed((v - lo) / k, q - e)}}}")
    return (f"${body}$" if e == 0 else rf"$({body})\times 10^{{{e}}}$") + flag_suffix(iv)
