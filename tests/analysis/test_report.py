"""Tables (Markdown, CSV, LaTeX) and the report directory: every plot as PNG and PDF, an index that
is one self-contained HTML file (plots inline, provenance, units), numbers at their intervals' precision."""
import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from scaling_grid.analysis import fmt_interval, run_fit, write_report
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.coefficients import coefficient_table
from scaling_grid.analysis.tables import write_tables


def two_variants():
    a = S.universality_table(seed=0)
    b = S.universality_table(seed=1, variant="qk_norm", truth={"c_tau": 0.65, "c_m": 16.0, "c_l": 0.3, "L0": 0.82})
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def test_table_writers_have_a_row_per_variant_with_intervals(tmp_path):
    r = run_fit(two_variants(), n_boot=20, checks=False)
    paths = write_tables(r, tmp_path)
    assert sorted(p.name for p in paths) == ["coefficients.csv", "coefficients.md", "coefficients.tex",
                                             "comparison.csv", "comparison.md", "comparison.tex"]  # two variants
    md = (tmp_path / "coefficients.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0].split("|")[3:7] == [" c_τ ", " c_m ", " c_ℓ ", " L0 "]
    assert "(m/ℓ)*" in rows[0] and "D*/N*" in rows[0] and "fit err" in rows[0]
    assert [r_.split("|")[1].strip() for r_ in rows[1:]] == ["gpt2", "qk_norm"]
    assert re.search(r"\| 0\.\d+ \[0\.\d+, 0\.\d+\] \|", rows[1])   # value [lo, hi]
    table = list(csv.DictReader(io.StringIO((tmp_path / "coefficients.csv").read_text())))
    assert [t["variant"] for t in table] == ["gpt2", "qk_norm"]
    for t, vf in zip(table, r.variants.values()):
        for name in ("c_tau", "c_m", "c_l", "L0"):
            iv = vf.param_interval(name)
            assert float(t[name]) == iv["value"] and float(t[name + "_lo"]) == iv["lo"]
            assert float(t[name + "_lo"]) <= float(t[name]) <= float(t[name + "_hi"])
        assert float(t["m_over_l_star"]) == vf.derived["m_over_l_star"][0]
    tex = (tmp_path / "coefficients.tex").read_text()
    lines = tex.splitlines()
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    n_runs = r.variants["qk_norm"].points.n_runs
    assert len(body) == 2 and body[1].startswith(rf"qk\_norm & 80 ({n_runs}) & $")  # points (runs)
    assert r"\begin{tabular}" in tex and r"$c_\tau$" in tex and r"\toprule" in tex  # booktabs
    assert r"\caption{Coefficients of " in tex and r"\label{tab:coefficients}" in tex
    assert lines[0] == "% needs \\usepackage{booktabs}" and lines[-1] == r"\end{table}"


@pytest.mark.slow
def test_report_writes_every_plot_and_an_index(tmp_path):
    index = write_report(two_variants(), tmp_path / "rep", n_boot=40)
    root = index.parent
    assert index.name == "index.html" and (root / "index.md").is_file()
    expected = [f"{kind}_{v}" for v in ("gpt2", "qk_norm")
                for kind in ("loss_vs_time", "collapse", "width_depth", "residuals")] + ["frontier"]
    html = index.read_text()
    md = (root / "index.md").read_text()
    for name in expected:
        png, pdf = root / "plots" / f"{name}.png", root / "plots" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
        assert f"plots/{name}.pdf" in html and f"(plots/{name}.png)" in md
    assert len(list((root / "plots").iterdir())) == 2 * len(expected)
    d = json.loads((root / "fit.json").read_text())
    assert set(d["variants"]) == {"gpt2", "qk_norm"}
    for f in ("coefficients.md", "coefficients.csv", "coefficients.tex"):
        assert (root / f).stat().st_size > 0
    for section in ("Which points were fitted", "Coefficients per variant", "Held-out validation",
                    "Exclusion scan", "Compute frontier", "Derived quantities"):
        assert section in html and section in md
    assert html.count("<img") == len(expected)
    # no external resources (the inline PNGs' base64 can spell "http" by chance: not a resource)
    assert "http" not in re.sub(r"data:image/png;base64,[^\"]*", "", html).replace("https://", "")


def test_report_for_a_chinchilla_file_table(tmp_path):
    index = write_report(S.chinchilla_table(seed=0), tmp_path / "rep", law="chinchilla", n_boot=20)
    names = sorted(p.stem for p in (index.parent / "plots").glob("*.png"))
    assert names == ["collapse_all", "frontier", "loss_vs_time_all", "residuals_all", "width_depth_all"]
    assert "A/N^alpha" in index.read_text()


# ---------------------------------------------------------------- issue 12: everyday use
@pytest.mark.parametrize("value, lo, hi, text", [
    (557.8, 266.3, 1004.0, "560 [270, 1000]"),          # the example
    (0.5947, 0.5859, 0.6063, "0.595 [0.586, 0.606]"),   # width 0.0204: thousandths
    (19.66, 19.25, 20.05, "19.66 [19.25, 20.05]"),      # width 0.80: hundredths
    (0.0505, 0.04999, 0.06, "0.051 [0.050, 0.060]"),    # lo and hi stay distinct
    (2.3e7, 1.9e7, 2.71e7, "2.30e+07 [1.90e+07, 2.71e+07]"),
    (1.234e-5, 1.1e-5, 1.4e-5, "1.23e-05 [1.10e-05, 1.40e-05]"),
    (1.0, 1.0, 1.0, "1 [1, 1]"),                        # zero width: 4 significant digits
    (1.26575780256e-12, 1.26575780255e-12, 1.26575780257e-12,   # pinned at a bound: noise, not a width
     "1.266e-12 [1.266e-12, 1.266e-12]"),
    (1.69231, 1.69203, 1.69254, "1.69231 [1.69203, 1.69254]"),  # a tight interval keeps its digits
    (0.8, 0.0, float("inf"), "0.8 [0, inf]"),
])
def test_numbers_are_printed_to_the_precision_of_their_interval(value, lo, hi, text):
    assert fmt_interval(value, lo, hi) == text


def test_rounded_bounds_always_differ():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        lo = rng.normal() * 10.0 ** rng.integers(-6, 8)
        hi = lo + abs(lo) * 10.0 ** rng.uniform(-5.9, 1)
        if hi > lo:
            got = fmt_interval(lo, lo, hi)
            b = got[got.index("[") + 1:-1].split(", ")
            assert b[0] != b[1], (lo, hi, got)


def _check_latex(tex: str) -> None:
    """No e-notation anywhere; every $ balanced (line by line, \\$ escapes aside)."""
    assert not re.search(r"\d[eE][+-]?\d", tex), tex
    for ln in tex.splitlines():
        if not ln.startswith("%"):
            assert ln.replace(r"\$", "").count("$") % 2 == 0, ln


def test_latex_table_is_valid_latex_and_compiles(tmp_path):
    big = S.universality_table(seed=2, variant="big_&_50%", truth={"c_tau": 0.6, "c_m": 2e7, "c_l": 4e-5, "L0": 0.8},
                               widths=(2e6, 4e6, 8e6, 1.6e7))
    t = {k: np.concatenate([v, big[k]]) for k, v in two_variants().items()}
    r = run_fit(t, n_boot=20, checks=False)
    tex = coefficient_table(r, "latex")
    _check_latex(tex)
    assert r"\times 10^{" in tex and r"big\_\&\_50\%" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base): the LaTeX text was "
                    "checked, not compiled")
    doc = tmp_path / "t.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage[margin=1cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
                   "\\begin{document}\n"
                   + tex + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "t.pdf").read_bytes()[:5] == b"%PDF-"


def with_curves(t: dict, fractions=(0.03, 0.1, 0.3, 0.6)) -> dict:
    """A store-export-like table: every run's final row plus earlier eval rows of the same cell."""
    parts = [t]
    for f in fractions:
        r = {k: v.copy() for k, v in t.items()}
        for k in ("tau_lr", "step", "tokens"):
            r[k] = t[k] * f
        r["eval_loss"] = t["eval_loss"] + 0.6 * ((t["tau_lr"] * f) ** (-1 / 3) - t["tau_lr"] ** (-1 / 3))
        r["is_final"] = np.zeros(len(t["cell"]), bool)
        parts.append(r)
    return {k: np.concatenate([p[k] for p in parts]) for k in t}


def _section(html: str, title: str) -> int:
    i = html.find(f">{title}</h")
    assert i >= 0, title
    return i


@pytest.mark.slow
def test_report_is_one_self_contained_html_file(tmp_path):
    t = with_curves(S.universality_table(seed=0))
    index = write_report(t, tmp_path / "rep", n_boot=30,
                         provenance={"source": "/data/store-x", "spec hash": "ab12cd34"})
    html = index.read_text()
    srcs = re.findall(r"<img[^>]* src=\"([^\"]*)\"", html)
    assert len(srcs) == html.count("<img") >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<(link|script)\b", html) and "url(" not in html  # no external CSS/JS
    assert "name='viewport'" in html and "overflow-x:auto" in html and "max-width:100%" in html
    prov = html[_section(html, "Provenance"):]
    for label in ("source", "spec hash", "scaling-grid version", "JAX version", "numpy / scipy / matplotlib",
                  "date (UTC)", "hardware", "command"):
        assert f"<dt>{label}</dt>" in prov, label
    assert "/data/store-x" in prov and "ab12cd34" in prov and "UTC" in prov
    assert json.loads((index.parent / "provenance.json").read_text())["spec hash"] == "ab12cd34"
    assert "nats per token" in html
    assert _section(html, "Coefficients per variant") < _section(html, "Which points were fitted")
    # the eval-curve panel: every cell's curve, from the per-step rows
    assert _section(html, "Eval curves of every cell") < _section(html, "Variant gpt2")
    png = index.parent / "plots" / "eval_curves_gpt2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".pdf").is_file()
    # the fit itself used only the final points
    assert json.loads((index.parent / "fit.json").read_text())["variants"]["gpt2"]["n_points"] == 80


def test_no_eval_curve_panel_without_per_step_rows(tmp_path):
    index = write_report(S.universality_table(seed=0), tmp_path / "rep", n_boot=20, checks=False)
    assert "Eval curves" not in index.read_text()
    assert not list((index.parent / "plots").glob("eval_curves*"))
