"""The HTML report reads and prints like an appendix (issue 22, items 5-7): tables that fit an 800 px
window and a printed page, one notation, a palette and fonts that survive print, a sentence instead
of an empty plot, the frontier in one FLOP convention, the pre-registration in full."""
import dataclasses
import html as H
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from scaling_grid.analysis import derived as dv
from scaling_grid.analysis import run_fit, write_report
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.notation import JSON_SPELLINGS
from scaling_grid.analysis.plot_frontier import convention, frontier_curves, outside_spans, plot_frontier
from scaling_grid.analysis.plot_prereg import plot_predicted_vs_actual
from scaling_grid.analysis.plot_style import CMAP, TICK_PT, colours
from scaling_grid.analysis.report_doc import TABLE_CH, Doc, column_blocks, html_page
from scaling_grid.analysis.report_sections import preregistered
from scaling_grid.grid import cli


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A two-variant report (tables of every kind: coefficients, frontier, exclusion scan)."""
    a = S.universality_table(seed=0)
    b = S.universality_table(seed=1, variant="qk_norm", truth={"c_tau": 0.65, "c_m": 16.0, "c_l": 0.3, "L0": 0.82})
    t = {k: np.concatenate([a[k], b[k]]) for k in a}
    index = write_report(t, tmp_path_factory.mktemp("rep") / "r", n_boot=20)
    return index


def _text(page: str) -> str:
    """The page's visible text, provenance and images aside (a command line is quoted as typed)."""
    page = page[:page.find(">Provenance</h2>")]
    return H.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", " ", page)))


def _tables(page: str) -> list[tuple[list[str], list[list[str]]]]:
    out = []
    for t in re.findall(r"<table>(.*?)</table>", page, re.S):
        head = [H.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<th>(.*?)</th>", t, re.S)]
        rows = [[H.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
                for r in re.findall(r"<tbody>.*", t, re.S)[0].split("<tr>")[1:]]
        out.append((head, rows))
    return out


def test_tables_are_blocks_that_fit_the_page(report):
    page = report.read_text()
    assert page.count("<table>") == page.count('<div class="tbl"><table>')
    for head, rows in _tables(page):
        assert len(column_blocks(head, rows)) == 1, head          # each block written fits TABLE_CH
    css = page[page.index("<style>"):page.index("</style>")]
    assert "nowrap}" not in css.replace(".n{white-space:nowrap}", "")  # only a value and its interval hold
    fixed = re.findall(r"(?<![\w-])(?:min-)?width:\s*(\d+)px", page)  # max-width only caps
    assert fixed and all(int(w) <= 800 for w in fixed), fixed
    # the headline: one row per quantity, one column per variant, as the CLI prints it
    head, rows = _tables(page[page.index(">Coefficients per variant<"):])[0]
    assert head == ["quantity", "gpt2", "qk_norm"]
    assert [r[0] for r in rows][:6] == ["points (runs)", "c_τ", "c_m", "c_ℓ", "L0", "fit err (rms %)"]
    assert {"(m/ℓ)*", "D*/N*"} <= {r[0] for r in rows}
    # a wide table is split, the first column repeated
    names = [f"column {i}" for i in range(12)]
    blocks = column_blocks(["key"] + names, [["k"] + ["0.123 [0.100, 0.150]"] * 12])
    assert len(blocks) > 1 and all(b[0] == 0 for b in blocks)


def test_one_notation_unicode_names_in_the_text(report):
    text = _text(report.read_text())
    for key in JSON_SPELLINGS:
        hits = re.findall(r"(?<![\w])" + re.escape(key) + (r"(?![\w])" if key[-1].isalnum() else ""), text)
        assert not hits, (key, text[text.find(key) - 80:text.find(key) + 80])
    for name in ("c_τ", "(m/ℓ)*", "D*/N*", "N*", "α_τ" if "α_τ" in text else "τ"):
        assert name in text
    assert "m_over_l_star" in (report.parent / "fit.json").read_text()   # the keys stay in the JSON


def test_exclusion_scan_values_carry_intervals(report):
    page = report.read_text()
    section = page[page.index(">Exclusion scan<"):]
    section = section[:section.index("<h")]
    cells = [c for _, rows in _tables(section) for r in rows for c in r[2:]]
    assert cells and all(re.fullmatch(r"\S+ \[\S+, \S+\]( \*)?", c) for c in cells), cells


def test_palette_is_dark_enough_for_white_and_greyscale_and_fonts_are_fixed(report):
    def grey(c):
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    assert grey(CMAP(1.0)) < 0.62 < grey(__import__("matplotlib").colormaps["viridis"](0.9))
    cols, _ = colours(np.array([16.0, 24.0, 32.0]))
    assert max(grey(c) for c in cols.values()) < 0.62
    # figures are shown at their own width, at most about a page: a tick label is >= 9 px there
    widths = [int(w) for w in re.findall(r'<img[^>]*style="width:(\d+)px"', report.read_text())]
    assert widths and len(widths) == report.read_text().count("<img")
    page_px = 718  # A4 printable width at 96 px/in; an 800 px window is wider
    for w in widths:
        assert TICK_PT * 96 / 72 * min(1.0, page_px / w) >= 9, w


@pytest.mark.slow
def test_no_frontier_is_a_sentence_and_no_warning_leaks(tmp_path, capfd):
    t = S.universality_table(seed=0, truth={"c_tau": 0.6, "c_m": 0.0, "c_l": 0.0, "L0": 0.8})
    r = run_fit(t, n_boot=20, checks=False)
    capfd.readouterr()
    index = write_report(t, tmp_path / "rep", result=r)
    err = capfd.readouterr().err
    assert "Warning" not in err and "warn" not in err.lower(), err
    page = index.read_text()
    assert "No compute frontier is drawn" in page and not (tmp_path / "rep" / "plots" / "frontier.png").exists()
    assert "Warnings while writing the report" in page     # what was caught is shown, not lost


@pytest.mark.slow
def test_frontier_dots_and_curve_share_one_flop_convention_and_shade_outside_the_runs(tmp_path, monkeypatch):
    r = run_fit(S.universality_table(seed=0), n_boot=30, checks=False)
    vf = r.variants["gpt2"]
    real, words = convention(r.variants)
    assert real and "real FLOPs" in words
    c = frontier_curves(vf, real)
    X = vf.points.extra
    np.testing.assert_allclose(c["runs"]["C"], vf.ctx.flops(X["m"], X["l"]) * X["tokens"])
    # the curve's compute is the same function of its optimum: C = flops(m*, l*) D*
    _, fr = dv.derived(vf.law, vf.theta, dataclasses.replace(vf.ctx, C_ref=c["C"]))
    ok = np.isfinite(fr["numerical_D_star"][0])
    np.testing.assert_allclose((vf.ctx.flops(fr["numerical_m_star"][0], fr["numerical_l_star"][0])
                                * fr["numerical_D_star"][0])[ok], c["C"][ok], rtol=1e-9)
    # shading wherever N* or D* is outside the runs' ranges, not only beyond the largest C
    N, D, runs = c["value"]["N_star"], c["value"]["D_star"], c["runs"]
    with np.errstate(invalid="ignore"):
        out = ~((N >= runs["N"].min()) & (N <= runs["N"].max()) & (D >= runs["D"].min()) & (D <= runs["D"].max())
                & (c["C"] <= c["C_max_data"] * (1 + 1e-9)))
    assert np.array_equal(out, c["outside"])
    assert np.any(out & (c["C"] <= c["C_max_data"])), "this grid's optimum leaves its ranges inside its compute"
    spans = outside_spans(c["C"], c["outside"])
    for x in c["C"][c["outside"]]:
        assert any(a <= x <= b for a, b in spans)
    figs = []
    monkeypatch.setattr("scaling_grid.analysis.plot_frontier.save", lambda fig, d, n: figs.append(fig) or [])
    plot_frontier(r.variants, tmp_path)
    shaded = [p for p in figs[0].axes[0].patches if str(p.get_label()).startswith("extrapolat")]
    assert shaded, "no shading"


def test_outside_spans_cover_each_run_of_outside_points():
    C = np.geomspace(1, 1e4, 5)
    spans = outside_spans(C, np.array([True, False, False, True, True]))
    assert len(spans) == 2 and spans[0][0] == 1 and spans[1][1] == 1e4 and spans[1][0] < 1e3 < spans[1][1]
    assert outside_spans(C, np.zeros(5, bool)) == []


def _pre():
    def rows(cells, shift):
        return [{"cell": c, "actual": 2.0 + 0.1 * i, "prediction": 2.0 + 0.1 * i + shift, "lo": 1.95 + 0.1 * i,
                 "hi": 2.06 + 0.1 * i + shift, "rel_error": -shift / 2, "inside": abs(shift) < 0.05}
                for i, c in enumerate(cells)]
    rec = [{"made": f"2026-01-0{k}T00:00:00", "key": f"rec{k}", "law": "universality", "n_fitted": 9,
            "n_predicted": 3, "interval": "run", "ci": 0.95, "rows": rows(["c-a", "c-b", "c-c"][:k + 1], 0.01 * k),
            "summary": {"n": k + 1, "mean_abs_rel_error": 0.01, "max_abs_rel_error": 0.02, "mean_rel_error": 0.0,
                        "n_inside": k + 1}} for k in (1, 2)]
    pend = {"cell": np.array(["c-d"]), "variant": np.array(["gpt2"]), "m": np.array([64.0]), "l": np.array([2.0]),
            "tokens": np.array([1.6e6]), "tau_lr": np.array([3.0]), "prediction": np.array([1.9]),
            "lo": np.array([1.85]), "hi": np.array([1.96])}
    return {"pending": pend, "key": "rec3", "written": True, "notes": [], "ci": 0.95, "scored": rec}


def test_preregistration_shows_every_record_per_cell_with_a_plot_and_on_the_terminal(tmp_path):
    pre = _pre()
    made = {"predicted_vs_actual": plot_predicted_vs_actual(pre["scored"], tmp_path / "plots")}
    assert made["predicted_vs_actual"][0].read_bytes()[:4] == b"\x89PNG"
    d = Doc()
    preregistered(d, pre, made, tmp_path)
    page = html_page("t", d)
    rows = [r for head, rs in _tables(page) if head[:2] == ["record", "cell"] for r in rs]
    assert sorted((r[0], r[1]) for r in rows) == [("rec1", "c-a"), ("rec1", "c-b"), ("rec2", "c-a"),
                                                 ("rec2", "c-b"), ("rec2", "c-c")]
    assert all(re.fullmatch(r"\S+ \[\S+, \S+\]", r[3]) for r in rows)
    assert "predicted_vs_actual.pdf" in page
    lines = cli._prereg_lines(pre)
    table = [ln for ln in lines if ln.startswith("| ")]
    assert "predicted loss [95% interval]" in table[0] and "c-d" in table[1] and "1.90 [1.85, 1.96]" in table[1]
    assert "| 1.6M " in table[1], table  # token budgets as counts, as everywhere else (not 1.6e+06)


# ---------------------------------------------------------------------------------- in Chromium
MEASURE = """<script>addEventListener('load',()=>{const W=document.documentElement.clientWidth;
const out=[...document.querySelectorAll('table,img')].map(t=>{const r=t.getBoundingClientRect();
return [t.tagName,Math.ceil(r.right),W]});const p=document.createElement('pre');p.id='measure';
p.textContent=JSON.stringify(out);document.body.appendChild(p);});</script>"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_every_table_and_figure_fits_at_800_and_1400_px_and_in_print(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the markup rules were checked, "
                    "not the rendering")
    flags = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    page = report.read_text()
    # 718 px: the printed page (A4 less Chromium's default margins), with the print rules applied
    for width, text in ((800, page), (1400, page), (718, page.replace("@media print{", "@media all{"))):
        probe = tmp_path / f"probe{width}.html"
        probe.write_text(text.replace("</body>", MEASURE + "</body>"))
        dom = subprocess.run(flags + [f"--window-size={width},3000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=180).stdout
        found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
        assert found, dom[-2000:]
        boxes = json.loads(H.unescape(found.group(1)))
        assert sum(b[0] == "TABLE" for b in boxes) == page.count("<table>")
        over = [b for b in boxes if b[1] > b[2]]
        assert not over, (width, over)
    pdf = tmp_path / "report.pdf"
    subprocess.run(flags + ["--no-pdf-header-footer", f"--print-to-pdf={pdf}", report.as_uri()],
                   capture_output=True, timeout=180)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdftotext"):  # every table heading made it onto a page, none cut off at its edge
        words = set(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split())
        for head, _ in _tables(page):
            for w in " ".join(head).split():
                assert w in words, w
    assert TABLE_CH < 110  # measured: 110 characters overflow a printed page
