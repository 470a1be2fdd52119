"""Predictions with intervals from the bootstrap draws, row conditions (--where, --holdout) and
their safe evaluator (issue 14)."""
import json

import numpy as np
import pytest
from scipy.stats import binom

from scaling_grid.analysis import AnalysisError, Predictor, echo, laws, predict_table, run_fit
from scaling_grid.analysis import fit as E
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.expr import evaluate
from scaling_grid.analysis.predict import law_interval
from scaling_grid.analysis.selection import select_points

UNI = laws.get("universality")
TRUTH = S.UNIVERSALITY_TRUTH


# ---------------------------------------------------------------- intervals
def test_prediction_intervals_cover_the_truth_at_the_stated_rate():
    """100 tables x 200 refits; three points (inside the grid, 2x and 4x beyond it). The 90% 'law'
    interval covers the noiseless law, the 90% 'run' interval a fresh noisy run, each in a fraction
    consistent with 90% (binomial, 0.1% level, both sides)."""
    V = {"tau": np.array([3.0, 32.0, 64.0]), "m": np.array([200.0, 1024.0, 2048.0]), "l": np.array([6.0, 16.0, 32.0])}
    truth = S.universality_loss(V["m"], V["l"], V["tau"], **TRUTH)
    draws, hits_law, hits_run = 100, np.zeros(3), np.zeros(3)
    rng = np.random.default_rng(123)
    with E.single_threaded_blas():
        for d in range(draws):
            pts = select_points(S.universality_table(seed=2000 + d), UNI)
            theta, _ = E.fit_law(UNI, pts)
            smp = E.bootstrap(UNI, pts, theta, 200, np.random.default_rng(d)).samples
            pred, lo, hi = law_interval(UNI, theta, smp, V, 0.9)
            assert np.all((lo <= pred) & (pred <= hi))
            hits_law += (lo <= truth) & (truth <= hi)
            res = (pts.loss - UNI.predict(theta, pts.V)) / pts.loss
            _, lo_r, hi_r = law_interval(UNI, theta, smp, V, 0.9, "run", res, seed=d)
            assert np.all(hi_r - lo_r > hi - lo)       # one run's scatter widens it
            new_run = truth * np.exp(0.005 * rng.standard_normal(3))
            hits_run += (lo_r <= new_run) & (new_run <= hi_r)
    low, high = binom.ppf(0.0005, draws, 0.9), binom.ppf(0.9995, draws, 0.9)
    assert np.all((hits_law >= low) & (hits_law <= high)), hits_law
    assert np.all((hits_run >= low) & (hits_run <= high)), hits_run


def test_predict_from_the_json_equals_predict_from_the_result(tmp_path):
    r = run_fit(S.universality_table(seed=1), n_boot=20, checks=False)
    path = tmp_path / "fit.json"
    path.write_text(r.to_json())
    d = json.loads(path.read_text())
    draws = np.array(d["variants"]["gpt2"]["bootstrap"]["draws"])
    assert draws.shape == (20, 4) and d["variants"]["gpt2"]["bootstrap"]["params"] == UNI.param_names
    new = {"m": np.array([1024.0, 64.0]), "l": np.array([16.0, 2.0]), "tau_lr": np.array([32.0, 1.0]),
           "eval_loss": np.array([np.nan, 1.9])}
    a, _, sa = predict_table(Predictor.from_result(r), new)
    b, _, sb = predict_table(Predictor.load(path), new)
    for k in ("prediction", "lo", "hi"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)
    vf = r.variants["gpt2"]
    np.testing.assert_allclose(a["prediction"], UNI.predict(vf.theta, {"tau": new["tau_lr"], "m": new["m"],
                                                                       "l": new["l"]}))
    assert list(a) == ["m", "l", "tau_lr", "eval_loss", "variant", "prediction", "lo", "hi", "actual", "rel_error",
                       "inside"]
    assert np.isnan(a["rel_error"][0]) and not a["inside"][0]      # no loss there: nothing to score
    assert a["rel_error"][1] == pytest.approx((1.9 - a["prediction"][1]) / 1.9)
    assert sa["n"] == 1 and sa["n_inside"] == int(a["inside"][1])


def test_predict_serves_each_row_its_variant_and_every_variant_without_one():
    a, b = S.universality_table(seed=0), S.universality_table(seed=1, variant="qk", truth=dict(TRUTH, c_m=15.0))
    r = run_fit({k: np.concatenate([a[k], b[k]]) for k in a}, n_boot=20, checks=False)
    p = Predictor.from_result(r)
    out, _, _ = predict_table(p, {"m": np.array([256.0]), "l": np.array([4.0]), "tau_lr": np.array([8.0])})
    assert list(out["variant"]) == ["gpt2", "qk"] and out["prediction"][1] < out["prediction"][0]
    out, _, _ = predict_table(p, {"variant": np.array(["qk"]), "m": np.array([256.0]), "l": np.array([4.0]),
                                  "tau_lr": np.array([8.0])})
    assert list(out["variant"]) == ["qk"]
    with pytest.raises(AnalysisError, match="not fitted"):
        predict_table(p, {"variant": np.array(["xl"]), "m": np.array([256.0]), "l": np.array([4.0]),
                          "tau_lr": np.array([8.0])})
    with pytest.raises(AnalysisError, match="tau_lr"):
        predict_table(p, {"m": np.array([256.0]), "l": np.array([4.0])})


def test_an_old_fit_json_without_draws_is_refused_with_the_fix(tmp_path):
    r = run_fit(S.universality_table(seed=1), n_boot=10, checks=False)
    d = json.loads(r.to_json())
    d["schema"] = "scaling-grid/fit/1"
    (tmp_path / "old.json").write_text(json.dumps(d))
    with pytest.raises(AnalysisError, match="refit"):
        Predictor.load(tmp_path / "old.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(AnalysisError, match="not a scaling-grid fit"):
        Predictor.load(tmp_path / "x.json")


# ---------------------------------------------------------------- --where and --holdout
def _table_with_dataset():
    t = S.universality_table(seed=4)
    t["dataset"] = np.where(np.arange(len(t["m"])) % 3 == 0, "c4", "rpj")
    return t


def test_where_fits_exactly_the_rows_it_names():
    t = _table_with_dataset()
    cond = "dataset == 'rpj' and tokens / N >= 20 and not l == 16"
    r = run_fit(t, where=cond, n_boot=0, checks=False)
    expect = np.flatnonzero((t["dataset"] == "rpj") & (t["tokens"] / t["N"] >= 20) & (t["l"] != 16))
    assert 0 < len(expect) < len(t["m"])
    np.testing.assert_array_equal(np.sort(r.variants["gpt2"].points.row), expect)
    rule = [e for e in r.exclusions if e["rule"] == "where"]
    assert len(rule) == 1 and rule[0]["n_points"] == len(t["m"]) - len(expect) and rule[0]["value"] == cond
    assert any(ln.startswith(f"excluded {len(t['m']) - len(expect)} point(s): where ({cond})") for ln in echo(r)[0])
    assert r.options["where"] == cond
    ref = run_fit({k: v[expect] for k, v in t.items()}, n_boot=0, checks=False)   # the same as a hand-made table
    np.testing.assert_allclose(r.variants["gpt2"].theta, ref.variants["gpt2"].theta, rtol=1e-10)


def test_holdout_fits_the_other_rows_and_predicts_and_scores_exactly_its_own():
    t = _table_with_dataset()
    cond = "m == 512 or tau_lr >= 16"
    r = run_fit(t, holdout=cond, n_boot=20, checks=False)
    vf = r.variants["gpt2"]
    held = (t["m"] == 512) | (t["tau_lr"] >= 16)
    np.testing.assert_array_equal(np.sort(vf.points.row), np.flatnonzero(~held))
    rows = vf.heldout["rows"]
    assert sorted(x["row"] for x in rows) == list(np.flatnonzero(held))
    ref = run_fit({k: v[~held] for k, v in t.items()}, n_boot=20, checks=False).variants["gpt2"]
    np.testing.assert_allclose(vf.theta, ref.theta, rtol=1e-10)
    pred, lo, hi = law_interval(UNI, ref.theta, ref.samples, {"tau": t["tau_lr"][held], "m": t["m"][held],
                                                               "l": t["l"][held]}, 0.95)
    got = sorted(rows, key=lambda x: x["row"])
    np.testing.assert_allclose([x["prediction"] for x in got], pred, rtol=1e-12)
    np.testing.assert_allclose([x["lo"] for x in got], lo, rtol=1e-12)
    actual = t["eval_loss"][held]
    np.testing.assert_allclose([x["rel_error"] for x in got], (actual - pred) / actual, rtol=1e-10)
    s = vf.heldout["summary"]
    assert s["n"] == held.sum() and s["n_inside"] == sum(x["inside"] for x in rows)
    assert 0 < s["mean_abs_rel_error"] < 0.02      # the right law extrapolates well
    assert [e["n_points"] for e in r.exclusions if e["rule"] == "holdout"] == [int(held.sum())]
    d = json.loads(r.to_json())["variants"]["gpt2"]
    assert d["holdout_predictions"]["condition"] == cond and len(d["holdout_predictions"]["rows"]) == held.sum()
    out = echo(r, 100)[0]
    assert any(ln.startswith(f"held out (gpt2): {int(held.sum())} point(s) where {cond}") for ln in out)
    with pytest.raises(AnalysisError, match="matches none"):
        run_fit(t, holdout="m > 1e6", n_boot=0, checks=False)
    with pytest.raises(AnalysisError, match="every point"):
        run_fit(t, holdout="m > 0", n_boot=0, checks=False)


# ---------------------------------------------------------------- the condition evaluator
def test_conditions_are_evaluated_over_columns_without_eval():
    t = {"dataset": np.array(["rpj", "c4", "rpj"]), "N": np.array([1e7, 1e8, 1e9]),
         "tokens": np.array([1e9, np.nan, 1e10]), "is_final": np.array([True, False, True])}
    cases = {"dataset == 'rpj'": [1, 0, 1], "tokens / N >= 20": [1, 0, 0], "not is_final": [0, 1, 0],
             "dataset in ('c4', 'x')": [0, 1, 0], "dataset not in ['c4']": [1, 0, 1], "1e7 < N <= 1e9": [0, 1, 1],
             "log10(N) >= 8 and (is_final or N == 1e8)": [0, 1, 1], "-N < -5e8": [0, 0, 1], "N % 2 == 0": [1, 1, 1]}
    for cond, want in cases.items():
        np.testing.assert_array_equal(evaluate(cond, t), np.array(want, bool), err_msg=cond)
    for bad, why in [("__import__('os').system('true')", "not allowed"), ("N.real > 0", "attribute"),
                     ("N[0] > 1", "subscript"), ("open('x')", "open"), ("(lambda: 1)()", "not allowed"),
                     ("[x for x in N]", "not allowed"), ("dataset > 3", "text"), ("N + 1", "not a condition"),
                     ("size > 1", "no column 'size'"), ("N and is_final", "needs conditions"),
                     ("N >", "not a valid condition"), ("", "empty")]:
        with pytest.raises(AnalysisError, match=why):
            evaluate(bad, t)
