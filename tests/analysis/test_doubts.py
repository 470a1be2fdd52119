"""Every point kept, every doubt shown: unidentified parameters, zero-time points, parameters on
their bound, the frontier beyond the measured compute (issue 10)."""
import csv
import io
import json

import numpy as np
import pytest

from scaling_grid.analysis import AnalysisError, laws, run_fit, write_report
from scaling_grid.analysis import fit as F
from scaling_grid.analysis import plot_frontier as P
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.coefficients import coefficient_table
from scaling_grid.analysis.selection import select_points


def test_a_loss_without_variation_is_an_error_naming_the_parameters():
    t = S.chinchilla_table(seed=0)
    t["loss"] = np.full(len(t["loss"]), 3.0)
    with pytest.raises(AnalysisError, match=r"(?s)same at every point.*A.*alpha"):
        run_fit(t, law="chinchilla", n_boot=20, checks=False)


def test_a_law_whose_every_term_is_unmeasurable_is_an_error():
    """A loss that varies by 1e-6 only: the fit drives every term to its bound, so nothing but E is
    determined (before: A = 13.26 [13.26, 13.26], alpha = 1.585 [1.585, 1.585], exit 0)."""
    t = S.chinchilla_table(seed=0)
    t["loss"] = 3.0 * np.exp(1e-6 * np.random.default_rng(0).standard_normal(len(t["loss"])))
    with pytest.raises(AnalysisError, match=r"(?s)every term.*A/N\^alpha.*B/D\^beta"):
        run_fit(t, law="chinchilla", n_boot=20, checks=False)


def _no_l0_table():
    return S.universality_table(seed=0, truth=dict(S.UNIVERSALITY_TRUTH, L0=0.0))


def test_a_parameter_on_its_bound_is_flagged_in_json_tables_and_warnings():
    """Free exponents on data with L0 = 0: the fit drives L0 to ~1e-12 and every resample leaves it
    there; that is the bound, not a confident estimate."""
    r = run_fit(_no_l0_table(), law="universality-free", n_boot=20, checks=False)
    vf = r.variants["gpt2"]
    assert vf.params["L0"] < 1e-6    # the situation of the issue: L0 pushed to 0
    d = json.loads(r.to_json())["variants"]["gpt2"]
    assert d["params"]["L0"]["flag"] == "at_bound" and "bound" in d["params"]["L0"]["flag_meaning"]
    assert all("flag" not in d["params"][n] for n in ("c_tau", "c_m", "c_l"))
    assert all("flag" not in iv for iv in d["exponents"].values())
    assert any(w.startswith("L0 ") and "bound" in w for w in d["warnings"])
    md = coefficient_table(r, "markdown")
    row = [ln for ln in md.splitlines() if ln.startswith("| gpt2")][0]
    assert row.count("(at bound)") == 1 and "(at bound)" in row.split("|")[6]   # the L0 column
    assert "(at bound)" in md.split("\n\n", 1)[1]                              # and explained
    table = list(csv.DictReader(io.StringIO(coefficient_table(r, "csv"))))
    assert table[0]["flags"] == "L0=at_bound"
    assert "at bound" in coefficient_table(r, "latex")
    clean = run_fit(S.universality_table(seed=0), law="universality-free", n_boot=20, checks=False)
    assert "at bound" not in coefficient_table(clean, "markdown") and list(csv.DictReader(
        io.StringIO(coefficient_table(clean, "csv"))))[0]["flags"] == ""


def test_a_vanished_term_makes_its_exponent_unidentified():
    pts = select_points(S.universality_table(seed=0), laws.get("universality-free"))
    law = laws.get("universality-free")
    theta, _ = F.fit_law(law, pts)
    theta = theta.copy()
    i_cl = law.param_names.index("c_l")
    theta[i_cl] = 1e-14                     # the depth term contributes nothing
    rng = np.random.default_rng(0)
    samples = theta * (1 + 0.01 * rng.standard_normal((50, len(theta))))
    flags = F.parameter_flags(law, theta, pts, samples)
    assert flags["c_l"]["flag"] == "at_bound"
    assert flags["alpha_l"]["flag"] == "unidentified" and "c_l" in flags["alpha_l"]["meaning"]
    assert set(flags) == {"c_l", "alpha_l"}


def test_a_zero_width_interval_means_unidentified_not_exact():
    law = laws.get("chinchilla")
    pts = select_points(S.chinchilla_table(seed=0), law)
    theta, _ = F.fit_law(law, pts)
    rng = np.random.default_rng(0)
    samples = theta * (1 + 0.01 * rng.standard_normal((50, len(theta))))
    assert F.parameter_flags(law, theta, pts, samples) == {}
    i = law.param_names.index("beta")
    samples[:, i] = theta[i]                # every resample returned the starting value
    flags = F.parameter_flags(law, theta, pts, samples)
    assert list(flags) == ["beta"] and flags["beta"]["flag"] == "unidentified"
    assert "zero width" in flags["beta"]["meaning"]


def test_universality_verdict_is_undetermined_when_an_exponent_is_flagged():
    r = run_fit(S.universality_table(seed=0), law="universality-free", n_boot=60, checks=False)
    vf = r.variants["gpt2"]
    assert F.universality_test(vf)["verdict"] == "consistent"
    vf.flags = {"alpha_l": {"flag": "unidentified", "meaning": "test"}}
    ut = F.universality_test(vf)
    assert ut["verdict"] == "undetermined" and ut["alpha_l"]["inside_interval"] is None


def _with_step0_rows(t):
    """A store export has a step-0 row per run: tau_lr = 0, tokens = 0, not final."""
    cells = np.unique(t["cell"])[:10]
    rows = {k: [] for k in t}
    for c in cells:
        i = int(np.flatnonzero(t["cell"] == c)[0])
        for k in t:
            rows[k].append(t[k][i])
    z = {k: np.array(v) for k, v in rows.items()}
    z.update(step=np.zeros(len(cells)), tokens=np.zeros(len(cells)), tau_lr=np.zeros(len(cells)),
             is_final=np.zeros(len(cells), bool), eval_loss=np.full(len(cells), 5.5))
    return {k: np.concatenate([t[k], z[k]]) for k in t}, len(cells)


def test_zero_time_points_are_dropped_and_recorded_not_fatal():
    t, n0 = _with_step0_rows(S.universality_table(seed=0))
    r = run_fit(t, points="all", n_boot=20, checks=False)
    zero = [e for e in r.exclusions if e["rule"] == "zero time"]
    assert len(zero) == 1 and zero[0]["n_points"] == n0 and "tau_lr" in zero[0]["detail"]
    assert len(r.variants["gpt2"].points) == len(t["cell"]) - n0
    t["tau_lr"][0] = -1.0    # negative time is broken data, still an error
    with pytest.raises(AnalysisError, match="tau_lr"):
        run_fit(t, points="all", n_boot=20, checks=False)


@pytest.mark.slow
def test_frontier_beyond_the_measured_compute_is_marked_as_extrapolation(tmp_path, monkeypatch):
    r = run_fit(S.universality_table(seed=0), n_boot=30, checks=False)
    fr = json.loads(r.to_json())["variants"]["gpt2"]["frontier"]
    c_max = fr["C_data_range"][1]
    np.testing.assert_allclose(fr["extrapolation_factor"], np.array(fr["C"]) / c_max)
    assert fr["extrapolated"] == [f > 1 + 1e-9 for f in fr["extrapolation_factor"]]
    assert fr["extrapolated"][0] is False and fr["extrapolated"][-1] is True
    # the plot shades the compute beyond the largest run
    figs = []
    monkeypatch.setattr(P, "save", lambda fig, out_dir, name: figs.append(fig) or [])
    P.plot_frontier(r.variants, tmp_path)
    assert len(figs) == 1
    for ax in figs[0].axes:
        labels = ax.get_legend_handles_labels()[1]
        span = [lb for lb in labels if lb.startswith("extrapolat")]
        assert span and "1000" in span[0], labels
    monkeypatch.undo()
    # the report's frontier table says which rows are extrapolations and by how much
    md = (write_report(S.universality_table(seed=0), tmp_path / "rep", result=r).parent / "index.md").read_text()
    section = md[md.index("### Compute frontier"):]
    section = section[:section.index("\n#", 5)]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert "C / largest run's C" in rows[0]
    assert "measured" in rows[1] and "extrapolated" not in rows[1]
    assert "x1000 extrapolated" in rows[-1]
