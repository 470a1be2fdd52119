"""Power beside the cross-variant verdict, and seed replicates (issue 23): no verdict where the free fit
cannot be identified, the detectable exponent difference of a CONSISTENT verdict, and the seed-to-seed
noise that `fit` measures from replicates."""
import json

import numpy as np
import pytest

from scaling_grid.analysis import laws, run_fit
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.columns import check_table
from scaling_grid.analysis.compare import universality_across
from scaling_grid.analysis.compare_text import universality_words
from scaling_grid.analysis.selection import select_points
from scaling_grid.analysis.tables import echo

TRUTH_B = dict(S.UNIVERSALITY_TRUTH, c_m=26.0)   # coefficients differ, exponents shared


def _parts(table, law):
    pts = select_points(check_table(table), law)
    return {v: pts.subset(pts.variant == v) for v in pts.variants}


def test_two_taus_and_two_widths_per_variant_give_no_verdict_and_say_why():
    """The issue's case: 2 tau values x 2 widths per variant (x 3 depths). The fixed-exponent law fits,
    but the free exponents alpha_tau and alpha_m cannot be: no verdict, and the message names both
    parameters and the count they lack."""
    law = laws.get("universality")
    table = S.two_variant_table(3, truths=(None, TRUTH_B), taus=(1.0, 4.0), widths=(64, 128), depths=(2, 4, 8))
    u = universality_across(law, _parts(table, law), power_draws=10)
    assert u["testable"] is False and u["verdict"] is None and "p_value" not in u
    why = u["skipped"]
    assert "c_tau and its exponent alpha_tau: only 2 distinct time values in A (tau = 1, 4)" in why
    assert "c_m and its exponent alpha_m: only 2 distinct widths in A" in why and "alpha_l" not in why
    assert "at least 3 distinct values" in why
    (line,) = universality_words(u)
    assert line.startswith("universality across variants: NO VERDICT") and "CONSISTENT" not in line


@pytest.mark.slow
def test_consistent_verdict_comes_with_a_detectable_difference_that_shrinks_with_less_noise():
    """Shared exponents, 3 widths x 3 depths x 3 taus per variant: CONSISTENT, and every exponent's
    80%-power difference is finite, 2-5 Wald standard errors of the difference (an F-test on 3 df
    needs a noncentrality of about 10.9, i.e. 3.3 se for one exponent), and smaller at a quarter of
    the noise (it scales about with the noise: between 1/8 and 1/2 of it)."""
    law = laws.get("universality")
    grid = dict(widths=(64, 128, 256), depths=(2, 4, 8), taus=(1.0, 4.0, 16.0))
    found = {}
    for noise in (0.01, 0.0025):
        u = universality_across(law, _parts(S.two_variant_table(5, truths=(None, TRUTH_B), noise=noise, **grid), law),
                                power_draws=40, seed=1)
        assert u["testable"] and u["verdict"] == "consistent", u["p_value"]
        dd = u["detectable_difference"]
        assert dd["draws"] == 40 and dd["power"] == 0.8 and dd["variant"] == "B"
        for e, r in dd["exponents"].items():
            se = u["differences"]["variants"]["B"][e]["se"]
            assert np.isfinite(r["value"]) and 2 * se < r["value"] < 5 * se, (e, r, se)
            assert r["power"] >= 0.8 and r["bracket"][0] <= r["value"] == r["bracket"][1]
        found[noise] = dd["exponents"]
        line = [ln for ln in universality_words(u) if ln.startswith("detectable exponent difference")]
        assert len(line) == 1 and "α_m" in line[0] and "80% power" in line[0]
    for e in found[0.01]:
        assert 0.125 < found[0.0025][e]["value"] / found[0.01][e]["value"] < 0.5, e


def _replicated(noise, seeds=(0, 1)):
    parts = []
    for s in seeds:
        t = S.universality_table(10 + s, noise=noise, taus=(1.0, 4.0, 16.0))
        t["seed"] = np.full(len(t["eval_loss"]), float(s))
        parts.append(t)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_seed_replicates_measure_the_noise_and_fit_prints_it_beside_the_residual_rms():
    """Two seeds of every cell (48 pairs) at 1% log-normal noise: the pooled seed-to-seed sd is within
    25% of 0.01 (its relative sd with 48 df is about 10%); the terminal and the JSON show it beside
    the residual rms. Without replicates neither appears."""
    r = run_fit(_replicated(0.01), n_boot=20, checks=False)
    sn = r.variants["gpt2"].seed_noise
    assert sn is not None and sn["n_groups"] == 48 and sn["dof"] == 48
    assert 0.0075 < sn["sd"] < 0.0125, sn
    out, _ = echo(r, width=100)
    text = " ".join(out)
    assert "seed-to-seed spread (gpt2):" in text and "residual rms" in text
    js = json.loads(r.to_json())["variants"]["gpt2"]["seed_noise"]
    assert js["sd"] == pytest.approx(sn["sd"]) and js["residual_rms"] == pytest.approx(r.variants["gpt2"].rms_rel_error)
    one = run_fit(S.universality_table(10, taus=(1.0, 4.0, 16.0)), n_boot=20, checks=False)
    assert one.variants["gpt2"].seed_noise is None
    assert "seed_noise" not in json.loads(one.to_json())["variants"]["gpt2"]
    assert not any("seed-to-seed" in ln for ln in echo(one, width=100)[0])


def test_best_lr_bootstrap_draws_its_selection_noise_from_seed_replicates():
    """best-lr with two seeds per (shape, budget, lr): the lr selection inside each draw uses the seed
    noise (the fit runs and gives intervals); the estimate is near the table's 0.5% noise."""
    parts = []
    for s in (0, 1):
        t = S.lr_sweep_table(20 + s, widths=(64, 128, 256), depths=(2, 4, 8), steps=(1000, 4000, 16000))
        t["seed"] = np.full(len(t["eval_loss"]), float(s))
        parts.append(t)
    table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    r = run_fit(table, points="best-lr", n_boot=20, checks=False)
    vf = r.variants["gpt2"]
    assert vf.points.envelope is not None and len(vf.samples) > 10
    from scaling_grid.analysis.seeds import seed_noise
    sn = seed_noise(vf.points.envelope.candidates)
    assert sn is not None and 0.003 < sn["sd"] < 0.007
