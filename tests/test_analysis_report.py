"""Tables (Markdown, CSV, LaTeX) and the report directory: every plot as PNG and PDF, an index."""
import csv
import io
import json
import re

import numpy as np

from scaling_grid.analysis import run_fit, write_report
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.tables import write_tables


def two_variants():
    a = S.universality_table(seed=0)
    b = S.universality_table(seed=1, variant="qk_norm", truth={"c_tau": 0.65, "c_m": 16.0, "c_l": 0.3, "L0": 0.82})
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def test_table_writers_have_a_row_per_variant_with_intervals(tmp_path):
    r = run_fit(two_variants(), n_boot=50, checks=False)
    paths = write_tables(r, tmp_path)
    assert sorted(p.name for p in paths) == ["coefficients.csv", "coefficients.md", "coefficients.tex"]
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
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")].splitlines()[1:]
    assert len(body) == 2 and body[1].startswith(r"qk\_norm & 80 & $")
    assert r"\begin{tabular}" in tex and r"$c_\tau$" in tex


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
        assert f'src="plots/{name}.png"' in html and f"(plots/{name}.png)" in md
    assert len(list((root / "plots").iterdir())) == 2 * len(expected)
    d = json.loads((root / "fit.json").read_text())
    assert set(d["variants"]) == {"gpt2", "qk_norm"}
    for f in ("coefficients.md", "coefficients.csv", "coefficients.tex"):
        assert (root / f).stat().st_size > 0
    for section in ("Which points were fitted", "Coefficients per variant", "Held-out validation",
                    "Exclusion scan", "Compute frontier", "Derived quantities"):
        assert section in html and section in md
    assert "<img" in html and "http" not in html.replace("https://", "")  # no external resources


def test_report_for_a_chinchilla_file_table(tmp_path):
    index = write_report(S.chinchilla_table(seed=0), tmp_path / "rep", law="chinchilla", n_boot=30)
    names = sorted(p.stem for p in (index.parent / "plots").glob("*.png"))
    assert names == ["collapse_all", "frontier", "loss_vs_time_all", "residuals_all", "width_depth_all"]
    assert "A/N^alpha" in index.read_text()
