"""The report as one document written twice, Markdown (``index.md``) and self-contained HTML
(``index.html``: plots inline as PNG data URIs, CSS inline, nothing fetched)."""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path


class Doc:
    """Builds the same report as Markdown and HTML."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.md.append("#" * level + " " + text + "\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def ul(self, items: Iterable[object]) -> None:
        items = list(items)
        if not items:
            return
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>")

    def table(self, head: Sequence[object], rows: Sequence[Sequence[object]], md: bool = True) -> None:
        if not rows:
            return
        def esc(s: object) -> str:
            return str(s).replace("|", "\\|")
        if md:
            self.md.append("\n".join(["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                                     + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]) + "\n")
        # a wide table scrolls inside its own box instead of widening (and cutting off) the page
        self.html.append('<div class="scroll"><table><thead><tr>'
                         + "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
                         + "</tr></thead><tbody>" + "".join(
                             "<tr>" + "".join(self._td(c) for c in r) + "</tr>" for r in rows)
                         + "</tbody></table></div>")

    @staticmethod
    def _td(cell: object) -> str:
        # numbers and intervals never break inside; long prose (a meaning, a list of cells) wraps
        text = str(cell)
        return f'<td class="t">{html.escape(text)}</td>' if len(text) > 40 else f"<td>{html.escape(text)}</td>"

    def img(self, files: Sequence[Path], caption: str, root: Path) -> None:
        png, pdf = files  # plots.plot_all: [png, pdf]
        a, b = png.relative_to(root).as_posix(), pdf.relative_to(root).as_posix()
        self.md.append(f"![{caption}]({a})\n\n*{caption}* ([PDF]({b}))\n")
        # inline, so the HTML file alone carries every plot; the PDF is named, not linked, since a
        # mailed copy has no folder beside it
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f'<figcaption>{html.escape(caption)} (PDF in the report folder: '
                         f'<code>{html.escape(b)}</code>)</figcaption></figure>')

    def md_table(self, text: str) -> None:
        """A Markdown table with its "- " notes below it (as coefficients.py and compare_text.py write
        them), in both documents."""
        self.md.append(text)
        lines = [ln for ln in text.splitlines() if ln.startswith("|")]
        self.table([c.strip() for c in lines[0].strip("|").split("|")],
                   [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]], md=False)
        self.html.append("<ul>" + "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in text.splitlines()
                                          if ln.startswith("- ")) + "</ul>")


CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:1.5em auto;padding:0 1em;color:#222;
line-height:1.4;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;margin:0.8em 0}
table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top;overflow-wrap:normal}td{white-space:nowrap}td.t{white-space:normal;min-width:16em}
th{background:#f3f3f3}img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:1em 0}
figcaption{font-size:0.9em;color:#555}code{background:#f5f5f5}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em}dl.prov dt{font-weight:600}
dl.prov dd{margin:0;font-family:ui-monospace,monospace;font-size:0.9em}"""


def html_page(title: str, d: Doc) -> str:
    """The whole HTML file of ``d``."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>" + html.escape(title)
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(d.html) + "</body></html>\n")
