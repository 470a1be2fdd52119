"""`--points best-lr`: the lr envelope (issue 11, fair learning rates). Synthetic tables whose loss is the
universality law times a bowl in log lr with a known optimum per width (synthetic.lr_sweep_table).
A steep bowl (30% per halving of lr, squared) keeps the optimum on lr_opt despite the tau = sum of lr a
larger lr also buys; the default 10% leaves near-ties at the smallest budgets."""
import csv
import json

import numpy as np
import pytest

from scaling_grid.analysis import laws, run_fit
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.nonlinear import bootstrap
from scaling_grid.analysis.selection import select_points
from scaling_grid.grid.cli import main

UNI = laws.get("universality")
STEEP = 0.3


def _edge_warnings(result):
    return [w for w in result.variants["gpt2"].warnings if "edge of the sweep" in w]


def test_best_lr_keeps_exactly_the_argmin_run_of_every_shape_and_budget():
    t = S.lr_sweep_table(seed=0, curvature=STEEP)
    pts = select_points(t, UNI, points="best-lr")
    want = set()
    for key in {(m, l, s) for m, l, s in zip(t["m"], t["l"], t["step"])}:
        idx = np.flatnonzero((t["m"] == key[0]) & (t["l"] == key[1]) & (t["step"] == key[2]))
        want.add(t["cell"][idx[np.argmin(t["eval_loss"][idx])]])
    assert set(pts.cell.tolist()) == want and len(pts) == 3 * 3 * 5
    # the steep bowl dominates the 0.5% noise and the tau gain: the argmin is the true optimum
    rows = np.isin(t["cell"], pts.cell)
    assert np.all(t["lr"][rows] == t["lr_opt"][rows])
    assert {e["rule"]: e["n_points"] for e in pts.exclusions}["not the best lr"] == 4 * 45
    assert pts.envelope is not None and len(pts.envelope.candidates) == 225   # losers kept for the bootstrap
    shapes = pts.envelope.shapes()
    assert {(s["shape"]["m"], s["best_lr"]) for s in shapes} == {(64, 8e-3), (128, 4e-3), (256, 2e-3)}
    assert all(s["edge"] is None for s in shapes)


def test_edge_warning_fires_when_the_optimum_is_outside_the_sweep_and_not_otherwise():
    inside = run_fit(S.lr_sweep_table(curvature=STEEP), points="best-lr", n_boot=0, checks=False)
    assert _edge_warnings(inside) == []
    # sweep 1e-3..4e-3: width 64's optimum (8e-3) lies outside, 128's (4e-3) on the edge, 256's (2e-3) inside
    out = run_fit(S.lr_sweep_table(lrs=(1e-3, 2e-3, 4e-3), curvature=STEEP), points="best-lr", n_boot=0, checks=False)
    (w,) = _edge_warnings(out)
    assert "m=64 l=2: 0.004 (highest swept) at 5 of 5" in w and "m=256" not in w
    assert "30 of 45 shape(s)" in w      # widths 64 and 128, every depth and budget
    # one lr per shape: kept, with a note, no error and no edge warning
    one = run_fit(S.lr_sweep_table(lrs=(4e-3,)), points="best-lr", n_boot=0, checks=False)
    assert _edge_warnings(one) == [] and len(one.variants["gpt2"].points) == 45
    assert any("45 of 45 shape(s) were swept over a single lr" in n for n in one.notes)
    assert all(s["edge"] == "single" for s in one.variants["gpt2"].to_dict()["lr_envelope"]["shapes"])


def test_envelope_recovers_the_law_and_selection_inside_the_draw_is_not_free():
    # optima on swept values: the envelope is the law itself (plus noise), so the truth is inside
    r = run_fit(S.lr_sweep_table(seed=0), points="best-lr", n_boot=400, checks=False, seed=1)
    vf = r.variants["gpt2"]
    for name, true in S.UNIVERSALITY_TRUTH.items():
        iv = vf.param_interval(name)
        assert iv["lo"] <= true <= iv["hi"], (name, iv)
    # optima between swept values and a shallow bowl: near-ties, so the winner of a shape changes
    # with the noise. Same data, same resampled families: selection redone in each draw vs once outside
    t = S.lr_sweep_table(seed=0, lr_opt=4e-3 * 2 ** 0.5, curvature=0.03)
    vf = run_fit(t, points="best-lr", n_boot=0, checks=False).variants["gpt2"]
    width = {}
    for inside in (True, False):
        d = bootstrap(vf.law, vf.points, vf.theta, 400, np.random.default_rng(2), select_in_draw=inside)
        lo, hi = np.quantile(d.samples, [0.025, 0.975], axis=0)
        width[inside] = dict(zip(vf.law.param_names, hi - lo))
    # measured: c_m x1.79, c_l x1.12, L0 x1.74 wider; c_tau x0.90, narrower (the picked sibling moves tau)
    for name in ("c_m", "c_l", "L0"):
        assert width[True][name] >= width[False][name], (name, width)


def test_cli_fit_best_lr_on_a_csv_prints_the_winners(tmp_path, capsys):
    t = S.lr_sweep_table(seed=0, curvature=STEEP)
    path = tmp_path / "sweep.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "d_model", "n_layers", "tau", "loss", "learning_rate"])
        for i, row in enumerate(zip(t["m"], t["l"], t["tau_lr"], t["eval_loss"], t["lr"])):
            w.writerow([i, *(f"{x:.10g}" for x in row)])
    out_json = tmp_path / "fit.json"
    assert main(["fit", str(path), "--points", "best-lr", "--map", "m=d_model,l=n_layers,lr=learning_rate",
                 "--boot", "20", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "best lr per shape (all; budgets by tau / lr" in out
    assert "| d_model=64 n_layers=2 | 0.008 (all 5) |" in out and "| d_model=256 n_layers=8 | 0.002 (all 5) |" in out
    env = json.loads(out_json.read_text())["variants"]["all"]["lr_envelope"]
    assert len(env["shapes"]) == 45 and {s["best_lr"] for s in env["shapes"]} == {8e-3, 4e-3, 2e-3}


@pytest.mark.parametrize("law", ["universality-free"])
def test_best_lr_bootstrap_runs_through_the_nonlinear_solver(law):
    r = run_fit(S.lr_sweep_table(seed=0), law=law, points="best-lr", n_boot=20, checks=False)
    vf = r.variants["gpt2"]
    assert len(vf.samples) == 20 and np.all(np.isfinite(vf.samples))
