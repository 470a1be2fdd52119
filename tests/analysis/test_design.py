"""`scaling-grid design` (analysis/design*.py, grid/cli_design.py): costing (a wsd trunk paid once),
the designed grid against the full factorial of the same FLOPs by simulation with the project's own
fit, a table's rows chosen under a budget, and the command line (one-line errors, 100 columns, a spec
that `run --dry-run` takes).

The synthetic truth everywhere is the default prior (synthetic.UNIVERSALITY_TRUTH: c_tau 0.6, c_m 20,
c_l 0.4, L0 0.8, exponents 1/3, 1, 1; (m/l)* = 25) with 1% relative (log-normal) noise per cell, so
each design is optimal at the truth: the tests measure the criterion and the search, not a prior's
error."""
import json

import numpy as np
import pytest

from scaling_grid import analysis as A
from scaling_grid.analysis import synthetic
from scaling_grid.analysis.design import Candidate
from scaling_grid.analysis.design_table import random_subset
from scaling_grid.grid import cli
from scaling_grid.grid.cli_design import parse_budget

K = 3e-3 * 0.6 / 4096          # tau per token of synthetic.universality_table (peak_lr f_bar / tokens per step)


def _fpt(m, l):
    """FLOPs per token as synthetic.universality_table writes them (6N + attention + head)."""
    return 72 * m * m * l + 12 * l * 256 * m + 6 * 256 * m


def _grid(widths=(16, 32, 64, 128, 256), depths=(1, 2, 4, 8, 16), tokens=(2 ** 18, 2 ** 20, 2 ** 22), seeds=(0, 1, 2)):
    return [Candidate(m, l, t, K * t, _fpt(m, l) * t, seed=s) for m in widths for l in depths for t in tokens
            for s in seeds]


def test_wsd_trunk_is_paid_once_and_extended_from_what_is_spent():
    b = [Candidate(32, 2, t, K * t, 0.2 * t, trunk="T", stable=0.8 * t) for t in (100.0, 200.0, 400.0)]
    assert A.design_cost(b) == pytest.approx(0.2 * 700 + 0.8 * 400)      # decays + the longest stable phase
    assert A.design_cost(b[:2]) == pytest.approx(0.2 * 300 + 0.8 * 200)
    # grown: the 100 and 200 branches are measured; the 400 branch pays its decay and the trunk's extension
    assert A.design_cost(b[2:], spent=b[:2]) == pytest.approx(0.2 * 400 + 0.8 * 200)


def test_choose_stays_in_budget_and_beats_the_factorial_it_is_compared_with():
    C = _grid(widths=(16, 32, 64), depths=(1, 4, 16), tokens=(2 ** 18, 2 ** 20), seeds=(0, 1))
    prior = A.Prior.default()
    fac = A.factorial(C, 0.3 * A.design_cost(C))
    budget = A.design_cost([C[i] for i in fac])
    d = A.choose(C, budget, prior, ["m/l*", "c_l"], 0.01)
    assert d.flops <= budget * (1 + 1e-9) and d.flops == pytest.approx(A.design_cost([C[i] for i in d.chosen]))
    pf = A.predicted([C[i] for i in fac], prior, ["m/l*", "c_l"], 0.01)
    assert d.predicted["m/l*"] < pf["m/l*"] and d.predicted["c_l"] < pf["c_l"]


def test_an_exponent_goal_keeps_three_levels_per_axis():
    C = _grid(widths=(16, 32, 64, 128), depths=(1, 2, 4, 8), tokens=(2 ** 18, 2 ** 20, 2 ** 22), seeds=(0,))
    d = A.choose(C, 0.2 * A.design_cost(C), A.Prior.default(free=True), ["alpha_m"], 0.01)
    chosen = [C[i] for i in d.chosen]
    assert min(len({getattr(c, a) for c in chosen}) for a in ("width", "depth", "tokens")) >= 3


@pytest.mark.slow
def test_designed_grid_halves_the_factorial_interval_of_m_over_l_star():
    """Issue 23: 5 widths x 5 depths x 3 budgets x 3 seeds (separate runs) as candidates; the habit is
    the 3 x 3 x 3 factorial of one seed (widths 16, 64, 256, depths 1, 4, 16, every budget); the design
    gets the same FLOPs. 30 grids each, fitted with run_fit (200 bootstrap draws)."""
    C = _grid()
    prior = A.Prior.default()
    fac = [c for c in C if c.width in (16, 64, 256) and c.depth in (1, 4, 16) and c.seed == 0]
    budget = A.design_cost(fac)
    d = A.choose(C, budget, prior, ["m/l*"], 0.01)
    design = [C[i] for i in d.chosen]
    assert A.design_cost(design) <= budget * (1 + 1e-9)
    sim_d = A.simulate(design, prior, ["m/l*"], draws=30, noise=0.01)["m/l*"]
    sim_f = A.simulate(fac, prior, ["m/l*"], draws=30, noise=0.01)["m/l*"]
    assert sim_d["n"] == sim_f["n"] == 30
    assert sim_d["width"] <= 0.5 * sim_f["width"], (sim_d, sim_f)
    assert sim_d["coverage"] >= 0.85 and sim_f["coverage"] >= 0.85, (sim_d, sim_f)


def _table(tmp_path):
    """Two seeds of a 4 x 4 x 4 grid (widths 16-128, depths 1-8, tau 1-8): 128 rows with their FLOPs."""
    parts = [synthetic.universality_table(seed=s, widths=(16, 32, 64, 128), depths=(1, 2, 4, 8),
                                          taus=(1.0, 2.0, 4.0, 8.0), noise=0.01) for s in (3, 4)]
    parts[1]["seed"] = np.ones(len(parts[1]["seed"]))
    t = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    t["cost"] = t["flops_per_token"] * t["tokens"]
    path = tmp_path / "grid.csv"
    synthetic.write_csv(t, path)
    return t, path


@pytest.mark.slow
def test_candidates_table_subset_covers_the_full_fit_and_beats_random_subsets(tmp_path, capsys):
    t, path = _table(tmp_path)
    full = A.run_fit(t, n_boot=200, checks=False).variants["gpt2"].derived["m_over_l_star"][0]
    budget = 0.25 * float(np.sum(t["cost"]))
    out = tmp_path / "chosen.csv"
    assert cli.main(["design", "--candidates", str(path), "--map", "flops=cost", "--budget", f"{budget:.6g}",
                     "--noise", "0.01", "--simulate", "0", "--out", str(out)]) == 0
    assert "random" in capsys.readouterr().out
    chosen = A.load_table(str(out))
    assert set(chosen) == set(A.load_table(str(path)))                  # every column kept
    assert np.sum(chosen["cost"]) <= budget * (1 + 1e-6) and len(chosen["cost"]) < len(t["cost"])

    def interval(rows):
        vf = A.run_fit(rows, n_boot=200, checks=False).variants["gpt2"]
        lo, hi = vf.derived_interval("m_over_l_star")["lo"], vf.derived_interval("m_over_l_star")["hi"]
        return lo, hi
    lo, hi = interval(chosen)
    assert lo <= full <= hi
    cands = [Candidate(m, l, d, tau, c) for m, l, d, tau, c in zip(t["m"], t["l"], t["tokens"], t["tau_lr"], t["cost"])]
    rng = np.random.default_rng(1)
    widths = []
    for _ in range(11):
        idx = random_subset(cands, float(np.sum(chosen["cost"])), rng)
        r_lo, r_hi = interval({k: v[idx] for k, v in t.items()})
        widths.append(r_hi - r_lo)
    assert hi - lo < np.median(widths), (hi - lo, sorted(widths))


@pytest.mark.parametrize("args, words", [
    (["--budget", "lots"], "--budget 'lots'"),
    (["--budget=-3e19"], "--budget '-3e19'"),
    (["--budget", "5h"], "hours need a throughput"),
    (["--budget", "5h", "--target", "tpu:v5e:4x4"], "add --mfu F"),
    (["--budget", "5h", "--target", "tpu:v9:4x4", "--mfu", "0.4"], "--target 'tpu:v9:4x4': expected"),
    (["--budget", "1e13", "--goal", "beta"], "--goal 'beta': unknown goal"),
    (["--budget", "1e13", "--noise", "2"], "--noise 2.0"),
    (["--budget", "1e13", "--widths", "16,32"], "give --widths, --depths and --tokens"),
])
def test_bad_input_exits_2_with_one_line(args, words, capsys):
    rc = cli.main(["design", "--widths", "16,32", "--depths", "1,2", "--tokens", "256k,512k"] + args
                  if "--widths" not in args else ["design"] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err


def test_hours_at_a_measured_throughput(tmp_path):
    f = tmp_path / "tp.jsonl"
    f.write_text("\n".join(json.dumps({"flops_per_token": 1e6, "tokens_per_s": r}) for r in (1e5, 2e5, 3e5)))
    flops, how = parse_budget("2h", str(f), None)
    assert flops == pytest.approx(2 * 3600 * 2e11) and "2 h at 2e+11 FLOP/s" in how


def test_hours_on_a_target_at_its_peak_times_the_mfu():
    flops, how = parse_budget("500h", None, "tpu:v5e:4x4", 0.4)
    assert flops == pytest.approx(500 * 3600 * 16 * 197e12 * 0.4)  # 16 chips, 197 TFLOP/s bf16 each
    assert "16 x 197 TFLOP/s peak, MFU 0.4" in how
    flops, _ = parse_budget("1h", None, "gpu:h100:8", 0.5)
    assert flops == pytest.approx(3600 * 8 * 989.4e12 * 0.5)


def test_design_spec_runs_as_is_and_lines_fit_100_columns(tmp_path, capsys):
    out = tmp_path / "design.yaml"
    assert cli.main(["design", "--budget", "3e12", "--widths", "16,24,32,48", "--depths", "1,2,4",
                     "--tokens", "256k,512k,1M", "--simulate", "1", "--sim-boot", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert "factorial" in text and "design ->" in text
    assert cli.main(["run", str(out), "--store", str(tmp_path / "store"), "--dry-run", "--no-measure"]) == 0
    plan = capsys.readouterr().out
    assert "<- this spec" in plan and "-trunk-" in plan


def test_prior_from_a_fit_json_and_its_noise(tmp_path, capsys):
    t = synthetic.universality_table(seed=2, noise=0.01)
    res = A.run_fit(t, n_boot=20, checks=False)
    path = tmp_path / "fit.json"
    path.write_text(res.to_json())
    p = A.Prior.from_fit(path)
    vf = res.variants["gpt2"]
    assert p.law.name == "universality" and np.allclose(p.theta, vf.theta)
    assert p.noise == pytest.approx(vf.rms_rel_error) and p.t_per_token == pytest.approx(vf.ctx.t_per_token)
    free = A.Prior.from_fit(path, free=True)      # the class's exponents added for an exponent goal
    assert free.law.name == "universality-free" and list(free.theta[4:]) == pytest.approx([1 / 3, 1.0, 1.0])
    (tmp_path / "bad.json").write_text("{}")
    assert cli.main(["design", "--budget", "1e12", "--prior", str(tmp_path / "bad.json"), "--widths", "16,32",
                     "--depths", "1,2", "--tokens", "256k,512k"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a `scaling-grid fit --json` file" in err


def test_spent_cells_count_as_information_not_cost():
    """Grown grid: the measured cells make the same budget go further (a smaller predicted sd), and a
    trunk already trained is only extended."""
    C = [Candidate(m, l, t, K * t, 0.2 * _fpt(m, l) * t, trunk=f"w{m}d{l}", stable=0.8 * _fpt(m, l) * t)
         for m in (16, 32, 64) for l in (1, 4, 16) for t in (2 ** 18, 2 ** 20, 2 ** 22)]
    spent = [c for c in C if c.tokens <= 2 ** 20]
    rest = [c for c in C if c.tokens > 2 ** 20]
    prior = A.Prior.default()
    budget = 0.5 * A.design_cost(rest, spent)
    grown = A.choose(rest, budget, prior, ["m/l*"], 0.01, spent=spent)
    fresh = A.choose(rest, budget, prior, ["m/l*"], 0.01)
    assert grown.flops <= budget * (1 + 1e-9) and grown.predicted["m/l*"] < fresh.predicted["m/l*"]
    assert grown.flops == pytest.approx(A.design_cost([rest[i] for i in grown.chosen], spent))
