"""The report as one document written twice, Markdown (``index.md``) and self-contained HTML
(``index.html``: plots inline as PNG data URIs, CSS inline, nothing fetched).

Print-safe by construction: every table is split into blocks of columns (the first column repeated)
that fit :data:`TABLE_CH` characters, about the width of a Letter or A4 page and of an 800 px window;
cells wrap between a value and its interval, never inside a number; figures are shown at their own
width (never wider than the page), so their fonts keep the size plots.py gives them. Text goes
through :func:`notation.text`: the Unicode names, never the JSON keys."""
from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from .notation import text as notation

TABLE_CH = 84      # widest table block, in characters (measured in Chromium: ~6.5 px each; 84 is ~550 px)
PROSE_CH = 22      # a long-text cell wraps at about this width (td.t min-width below)
PNG_DPI = 130      # plots.save writes PNGs at this resolution; a CSS px is 1/96 in
_SPLIT = re.compile(r"(\[[^\]]*\])")


def cell_pieces(text: str) -> list[str]:
    """The parts of a cell that must not break: an interval ``[lo, hi]`` and each word."""
    return [p for part in _SPLIT.split(text) for p in ([part] if part.startswith("[") else part.split())]


def column_ch(cells: Sequence[str], head: str) -> int:
    """A column's least width in characters: its longest unbreakable piece (prose wraps at PROSE_CH)."""
    need = max((len(w) for w in head.split()), default=1)
    for c in cells:
        need = max(need, PROSE_CH if len(c) > 40 else max((len(p) for p in cell_pieces(c)), default=1))
    return need + 2  # padding and border


def column_blocks(head: Sequence[str], rows: Sequence[Sequence[str]], key: int = 1,
                  budget: int = TABLE_CH) -> list[list[int]]:
    """Column indices of each block: the first ``key`` columns in every block, the others packed in
    order while the block's least width stays within ``budget`` characters."""
    w = [column_ch([r[i] for r in rows], head[i]) for i in range(len(head))]
    base = list(range(min(key, len(head))))
    blocks: list[list[int]] = [list(base)]
    for i in range(len(base), len(head)):
        if len(blocks[-1]) > len(base) and sum(w[j] for j in blocks[-1]) + w[i] > budget:
            blocks.append(list(base))
        blocks[-1].append(i)
    return blocks


class Doc:
    """Builds the same report as Markdown and HTML."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str) -> None:
        text = notation(text)
        self.md.append("#" * level + " " + text + "\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        text = notation(text)
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def none(self, text: str) -> None:
        """A sentence in place of something that cannot be shown (a plot with nothing to draw)."""
        text = notation(text)
        self.md.append(f"*{text}*\n")
        self.html.append(f'<p class="none">{html.escape(text)}</p>')

    def ul(self, items: Iterable[object]) -> None:
        items = [notation(str(i)) for i in items]
        if not items:
            return
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>")

    def table(self, head: Sequence[object], rows: Sequence[Sequence[object]], md: bool = True,
              key: int = 1) -> None:
        """A table; in HTML split into blocks of columns that fit the page (:func:`column_blocks`),
        the first ``key`` columns repeated in each."""
        if not rows:
            return
        names = [notation(str(c)) for c in head]
        body = [[notation(str(c)) for c in r] for r in rows]

        def esc(s: str) -> str:
            return s.replace("|", "\\|")
        if md:
            self.md.append("\n".join(["| " + " | ".join(map(esc, names)) + " |", "|" + "---|" * len(names)]
                                     + ["| " + " | ".join(map(esc, r)) + " |" for r in body]) + "\n")
        for cols in column_blocks(names, body, key):
            self.html.append('<div class="tbl"><table><thead><tr>'
                             + "".join(f"<th>{html.escape(names[i])}</th>" for i in cols)
                             + "</tr></thead><tbody>" + "".join(
                                 "<tr>" + "".join(self._td(r[i]) for i in cols) + "</tr>" for r in body)
                             + "</tbody></table></div>")

    @staticmethod
    def _td(text: str) -> str:
        # a cell wraps only between a value and its interval (or between words): numbers never break;
        # long prose (a meaning, a list of cells) wraps anywhere it must
        if len(text) > 40:
            return f'<td class="t">{html.escape(text)}</td>'
        parts = [html.escape(p) for p in _SPLIT.split(text) if p]
        return "<td>" + "".join(f'<span class="n">{p}</span>' if p.startswith("[") else p for p in parts) + "</td>"

    def img(self, files: Sequence[Path], caption: str, root: Path) -> None:
        png, pdf = files  # plots.plot_all: [png, pdf]
        a, b = png.relative_to(root).as_posix(), pdf.relative_to(root).as_posix()
        caption = notation(caption)
        self.md.append(f"![{caption}]({a})\n\n*{caption}* ([PDF]({b}))\n")
        # inline, so the HTML file alone carries every plot; the PDF is named, not linked, since a
        # mailed copy has no folder beside it
        raw = png.read_bytes()
        width = round(struct.unpack(">I", raw[16:20])[0] * 96 / PNG_DPI)  # the PNG's own size in CSS px
        data = base64.b64encode(raw).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" style="width:{width}px" '
                         f'alt="{html.escape(caption)}">'
                         f'<figcaption>{html.escape(caption)} (PDF in the report folder: '
                         f'<code>{html.escape(b)}</code>)</figcaption></figure>')

    def md_table(self, text: str) -> None:
        """A Markdown table with its "- " notes below it (as coefficients.py and compare_text.py write
        them), in both documents."""
        text = notation(text)
        self.md.append(text)
        lines = [ln for ln in text.splitlines() if ln.startswith("|")]
        self.table([c.strip() for c in lines[0].strip("|").split("|")],
                   [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]], md=False)
        self.html.append("<ul>" + "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in text.splitlines()
                                          if ln.startswith("- ")) + "</ul>")


CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:1.5em auto;padding:0 1em;color:#222;
line-height:1.4;overflow-wrap:anywhere}
.tbl{overflow-x:auto;max-width:100%;margin:0.8em 0}
table{border-collapse:collapse;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;
vertical-align:top;overflow-wrap:normal;white-space:normal}.n{white-space:nowrap}
td.t{min-width:12em;overflow-wrap:anywhere}
th{background:#f3f3f3}img{max-width:100%;height:auto;border:1px solid #eee;box-sizing:border-box}figure{margin:1em 0}
figcaption{font-size:0.9em;color:#555}code{background:#f5f5f5}p.none{font-style:italic;color:#444}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em}dl.prov dt{font-weight:600}
dl.prov dd{margin:0;font-family:ui-monospace,monospace;font-size:0.9em}
@media print{body{max-width:none;margin:0;padding:0}.tbl{overflow:visible}figure,tr{break-inside:avoid}
h2,h3{break-after:avoid}}"""


def html_page(title: str, d: Doc) -> str:
    """The whole HTML file of ``d``."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>" + html.escape(title)
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(d.html) + "</body></html>\n")
