"""`scaling-grid fit` / `report` on tables: column mapping, exclusions and warnings echoed, --huber-delta,
JSON, bad input (exit 2, one line, nothing written)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from scaling_grid import analysis
from scaling_grid.analysis import synthetic
from scaling_grid.grid.cli import main


def _csv(path, rows, header):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _fit(*args):
    return subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "fit", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_fit_chinchilla_csv_with_mapping(tmp_path):
    t = synthetic.chinchilla_table(seed=1)
    path = tmp_path / "chinchilla.csv"
    _csv(path, zip(t["N"], t["D"], t["loss"]), ["model_size", "n_tokens", "final_loss"])
    out = tmp_path / "fit.json"
    proc = _fit(str(path), "--law", "chinchilla", "--map", "N=model_size,D=n_tokens,loss=final_loss",
                "--drop-highest", "3", "--boot", "100", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| variant " in proc.stdout and "| α " in proc.stdout
    fit = json.loads(out.read_text())
    params = next(iter(fit["variants"].values()))["params"]
    truth = synthetic.CHINCHILLA_TRUTH
    assert abs(params["E"]["value"] - truth["E"]) / truth["E"] < 0.1
    assert params["E"]["lo"] <= params["E"]["value"] <= params["E"]["hi"]
    assert {"rule": "drop_highest", "value": 3, "n_points": 3}.items() <= fit["selection"]["exclusions"][0].items()


@pytest.mark.slow
def test_fit_bad_inputs_exit_2_with_a_message(tmp_path):
    path = tmp_path / "t.csv"
    _csv(path, [(1e6, 1e9, 3.0), (2e6, 1e9, 2.9)], ["model_size", "n_tokens", "final_loss"])
    proc = _fit(str(path), "--law", "chinchilla", "--map", "N=model_size,D=n_tokens")
    assert proc.returncode == 2 and "loss" in proc.stderr, proc.stderr
    proc = _fit(str(path), "--law", "chinchilla", "--map", "N=model_size,D=n_tokens,loss=final_loss")
    assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr  # far too few points
    proc = _fit(str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "neither a table file" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- issue 10: every point kept, every doubt shown
def _table_csv(path, t):
    cols = list(t)
    _csv(path, zip(*(t[c] for c in cols)), cols)
    return str(path)


def _no_run(*a, **k):
    raise AssertionError("the fit ran before the bad input was caught")


def test_fit_of_a_constant_loss_exits_2_naming_the_parameters(tmp_path, capsys):
    t = synthetic.chinchilla_table(seed=0)
    t["loss"] = np.full(len(t["loss"]), 3.0)
    path = _table_csv(tmp_path / "flat.csv", t)
    assert main(["fit", path, "--law", "chinchilla", "--boot", "20"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "alpha" in err and "same at every point" in err and "Traceback" not in err


def test_fit_echoes_exclusions_warnings_and_the_universality_verdict(tmp_path, capsys):
    t = synthetic.universality_table(seed=0, truth=dict(synthetic.UNIVERSALITY_TRUTH, L0=0.0))
    path = _table_csv(tmp_path / "t.csv", t)
    assert main(["fit", path, "--law", "universality-free", "--boot", "20", "--drop-highest", "3"]) == 0
    out, err = capsys.readouterr()
    assert "excluded 3 point(s): drop_highest" in out
    assert "universality test (gpt2)" in out and "1/3" in out
    err = err.replace("\n  ", " ")  # undo the wrapping at 100 columns
    assert any(ln.startswith("warning (gpt2): L0 ") and "bound" in ln for ln in err.splitlines()), err
    assert "(at bound)" in out
    assert main(["report", path, "--law", "universality-free", "--boot", "20", "--drop-highest", "3",
                 "--out", str(tmp_path / "rep")]) == 0
    out, err = capsys.readouterr()
    assert "excluded 3 point(s): drop_highest" in out and "universality test (gpt2)" in out
    assert "warning (gpt2): L0 " in err and (tmp_path / "rep" / "index.html").is_file()


def test_fit_of_a_store_export_with_all_points_drops_zero_time_rows_and_says_so(tmp_path, capsys):
    t = synthetic.universality_table(seed=0)
    n = len(t["cell"])
    step0 = {k: v[:8].copy() for k, v in t.items()}
    step0.update(step=np.zeros(8), tokens=np.zeros(8), tau_lr=np.zeros(8), is_final=np.zeros(8, bool))
    t = {k: np.concatenate([t[k], step0[k]]) for k in t}
    path = _table_csv(tmp_path / "t.csv", t)
    assert main(["fit", path, "--points", "all", "--boot", "20", "--json", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    assert "excluded 8 point(s): zero time" in out
    d = json.loads((tmp_path / "f.json").read_text())
    assert d["variants"]["gpt2"]["n_points"] == n
    assert [e["n_points"] for e in d["selection"]["exclusions"] if e["rule"] == "zero time"] == [8]


def test_huber_delta_none_is_plain_weighted_least_squares(tmp_path, capsys):
    path = _table_csv(tmp_path / "c.csv", synthetic.chinchilla_table(seed=2))
    out = tmp_path / "ls.json"
    assert main(["fit", path, "--law", "chinchilla", "--boot", "10", "--huber-delta", "none",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["options"]["huber_delta"] is None
    table = analysis.load_table(path)
    ref = analysis.run_fit(table, law="chinchilla", n_boot=10, huber_delta=None).variants["all"]
    robust = analysis.run_fit(table, law="chinchilla", n_boot=10).variants["all"]
    for name, iv in got["variants"]["all"]["params"].items():
        assert iv["value"] == ref.params[name], name
        assert iv["lo"] == ref.param_interval(name)["lo"], name
    assert any(got["variants"]["all"]["params"][n]["value"] != robust.params[n] for n in ref.params)
    assert main(["fit", path, "--law", "chinchilla", "--boot", "10", "--huber-delta", "0.01"]) == 0
    capsys.readouterr()
    for bad in ("abc", "-1", "0", "nan"):
        assert main(["fit", path, "--law", "chinchilla", f"--huber-delta={bad}"]) == 2, bad
        err = capsys.readouterr().err
        assert "--huber-delta" in err and "none" in err and "Traceback" not in err, err
        assert main(["report", path, "--out", str(tmp_path / "r"), f"--huber-delta={bad}"]) == 2, bad
        assert "--huber-delta" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unwritable_json_and_report_folder_exit_2_before_the_fit(tmp_path, capsys, monkeypatch):
    path = _table_csv(tmp_path / "c.csv", synthetic.chinchilla_table(seed=0))
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(analysis, "run_fit", _no_run)
    monkeypatch.setattr(analysis, "write_report", _no_run)
    bad_json = str(tmp_path / "afile" / "fit.json")
    assert main(["fit", path, "--law", "chinchilla", "--json", bad_json]) == 2
    out, err = capsys.readouterr()
    assert "--json" in err and bad_json in err and "afile" in err and out == ""
    assert main(["fit", path, "--law", "chinchilla", "--json", str(tmp_path)]) == 2   # a folder
    assert "--json" in capsys.readouterr().err
    bad_dir = str(tmp_path / "afile" / "sub" / "rep")
    assert main(["report", path, "--law", "chinchilla", "--out", bad_dir]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and bad_dir in err and "afile" in err
    assert main(["report", path, "--law", "chinchilla", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("content", [
    "model_size,n_tokens,final_loss,note\n1e6,1e9,3.0,mod\xe8le\n".encode("latin-1"),
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\xff\xfe",
    b"N,D,loss\n1e6,1e9,3\x00.0\n"])
def test_a_csv_that_is_not_utf8_text_exits_2_naming_the_file(tmp_path, capsys, content):
    path = tmp_path / "latin.csv"
    path.write_bytes(content)
    for cmd in (["fit", str(path)], ["report", str(path), "--out", str(tmp_path / "rep")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "latin.csv" in err and "Traceback" not in err, err
        assert "UTF-8" in err or "NUL" in err, err
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------- issue 12: everyday use
def _two_variant_csv(path):
    a = synthetic.universality_table(seed=0, truth=dict(synthetic.UNIVERSALITY_TRUTH, L0=0.0))
    b = synthetic.universality_table(seed=1, variant="qk_norm_with_a_long_name",
                                     truth={"c_tau": 0.65, "c_m": 16.0, "c_l": 0.3, "L0": 0.82})
    return _table_csv(path, {k: np.concatenate([a[k], b[k]]) for k in a})


def test_fit_output_fits_100_columns_and_wide_prints_one_row_per_variant(tmp_path, capsys):
    path = _two_variant_csv(tmp_path / "t.csv")
    args = ["fit", path, "--law", "universality-free", "--boot", "20", "--drop-highest", "3",
            "--json", str(tmp_path / "the-fit-of-two-variants-with-a-long-file-name.json")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines() + err.splitlines()
    assert len(out.splitlines()) > 20 and err
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    # one row per quantity, every variant a column; numbers to their intervals' precision
    rows: dict[str, str] = {}  # label -> the row's cells for every variant (blocks of variants joined)
    for ln in out.splitlines():
        if ln.startswith("| "):
            label, *cells = [c.strip() for c in ln.strip("|").split("|")]
            rows[label] = rows.get(label, "") + " | " + " | ".join(cells)
    assert rows["variant"] == " | gpt2 | qk_norm_with_a_long_name"
    assert {"c_τ", "c_m", "c_ℓ", "L0", "α_τ", "fit err (rms %)"} <= set(rows)
    assert "(at bound)" in rows["L0"]
    fit = json.loads((tmp_path / "the-fit-of-two-variants-with-a-long-file-name.json").read_text())
    c_m = fit["variants"]["gpt2"]["params"]["c_m"]
    assert analysis.fmt_interval(c_m["value"], c_m["lo"], c_m["hi"]) in rows["c_m"]
    assert len(repr(c_m["value"])) > 8  # the JSON keeps full precision
    assert main(args + ["--wide"]) == 0
    out = capsys.readouterr().out
    table = next(b for b in out.split("\n\n") if b.startswith("| variant | points (runs) | c_τ |"))
    wide = [ln for ln in table.splitlines() if ln.startswith("| ")]  # not the comparison before it
    assert len(wide) == 3 and max(map(len, wide)) > 100  # the head and a row per variant
    # the result last: verdicts and notes first, then the comparison, then the coefficients and the JSON's path
    assert out.index("| quantity ") < out.index("| variant | points (runs)") < out.index("full precision")
    assert out.count("objective:") == 1 and "; cells " not in out  # the cell lists: --verbose and the JSON


def test_report_of_a_store_names_its_spec_and_hash(tmp_path, monkeypatch):
    import hashlib

    from scaling_grid.grid import cli
    spec = "name: demo-spec\naxes: {width: [16, 32]}\n"
    store = tmp_path / "store"
    (store / "specs").mkdir(parents=True)
    (store / "store.json").write_text(json.dumps({"format": "scaling-grid-store", "version": 1, "name": "demo-spec"}))
    (store / "spec.yaml").write_text(spec)
    h = hashlib.blake2b(spec.encode(), digest_size=4).hexdigest()
    for name in (h, "00aa11bb"):
        (store / "specs" / f"{name}.yaml").write_text(spec)
    # the store's table is exported by grid.store (tested with real grids elsewhere): a synthetic one here
    monkeypatch.setattr(cli, "_points_table", lambda args: synthetic.universality_table(seed=0))
    assert main(["report", str(store), "--boot", "20", "--out", str(tmp_path / "rep")]) == 0
    prov = json.loads((tmp_path / "rep" / "provenance.json").read_text())
    assert prov["source"] == str(store) and prov["spec name"] == "demo-spec"
    assert prov["spec hash"].startswith(h) and prov["specs launched into the store"] == f"00aa11bb, {h}"
    assert prov["command"] and "UTC" in prov["date (UTC)"]
    html = (tmp_path / "rep" / "index.html").read_text()
    assert h in html and "demo-spec" in html


# ---------------------------------------------------------------- issue 14: formulas, objectives, filters, predictions
def _study_csv(path, seed=3, Ns=(1e7, 3e7, 1e8, 3e8, 1e9), Ds=(1e8, 3e8, 1e9, 3e9, 1e10)):
    """A published-style file: its own column names, a dataset column, one row per run."""
    t = synthetic.chinchilla_table(seed=seed, Ns=Ns, Ds=Ds, noise=0.004,
                                   truth=dict(E=1.69, A=406.4, B=410.7, alpha=0.30, beta=0.30))
    dataset = np.where(np.arange(len(t["N"])) % 4 == 0, "c4", "rpj")
    _csv(path, zip(t["N"], t["D"], t["loss"], dataset, t["run"]), ["params", "tokens", "c4_val_loss", "dataset", "id"])
    return str(path), t, dataset


STUDY_MAP = "N=params,D=tokens,loss=c4_val_loss,run=id"


def test_fit_a_formula_with_a_chosen_objective_and_a_row_filter(tmp_path, capsys):
    path, t, dataset = _study_csv(tmp_path / "study.csv")
    out = tmp_path / "fit.json"
    assert main(["fit", path, "--law", "E + A/N^a + B/D^a", "--map", STUDY_MAP, "--residual", "absolute",
                 "--huber-delta", "none", "--where", "dataset == 'rpj' and tokens / params >= 1", "--boot", "20",
                 "--json", str(out)]) == 0
    stdout = capsys.readouterr().out.replace("\n  ", " ")
    assert "law L = E + A/N^a + B/D^a; fitted on c4_val_loss against tokens; tied: a" in stdout
    assert "objective: least squares on the absolute residual L - Lhat" in stdout
    keep = (dataset == "rpj") & (t["D"] / t["N"] >= 1)
    assert f"excluded {int((~keep).sum())} point(s): where (dataset == 'rpj' and tokens / params >= 1)" in stdout
    d = json.loads(out.read_text())
    assert d["variants"]["all"]["n_points"] == keep.sum()
    assert d["objective"] == {"residual": "absolute", "huber_delta": None,
                              "definition": "least squares on the absolute residual L - Lhat, summed over points"}
    assert d["columns"] == {"loss": "c4_val_loss", "D": "tokens", "N": "params"} and d["law"]["tied"] == ["a"]
    assert "universality_test" not in d["variants"]["all"]


def test_where_applies_to_a_store_as_to_a_file(tmp_path, capsys, monkeypatch):
    from scaling_grid.grid import cli
    store = tmp_path / "store"
    store.mkdir()
    (store / "spec.yaml").write_text("name: s\n")
    table = synthetic.universality_table(seed=0)
    seen = []
    monkeypatch.setattr(cli, "_points_table", lambda args: seen.append(args.source) or table)
    assert main(["fit", str(store), "--where", "m >= 128 and l != 2", "--boot", "20",
                 "--json", str(tmp_path / "f.json")]) == 0
    assert seen == [str(store)]
    keep = (table["m"] >= 128) & (table["l"] != 2)
    assert f"excluded {int((~keep).sum())} point(s): where (m >= 128 and l != 2)" in capsys.readouterr().out
    assert json.loads((tmp_path / "f.json").read_text())["variants"]["gpt2"]["n_points"] == keep.sum()


def test_bad_laws_and_conditions_exit_2_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    from scaling_grid.grid import cli
    monkeypatch.setattr(cli, "_points_table", _no_run)
    for args, why in [(["--law", "E + a/N^a"], "one role"), (["--law", "chinchila"], "unknown law"),
                      (["--where", "m >> 2"], "not allowed"), (["--where", "__import__('os')"], "not allowed"),
                      (["--holdout", "m >"], "--holdout"), (["--law", "E + A/N^1e400 + B/D^b"], "overflows"),
                      (["--law", "E + A/N^0 + B/D^b"], "could not be told apart"),
                      (["--where", "m > " + "-" * 1500 + "1"], "nests")]:
        assert main(["fit", str(tmp_path / "x.csv"), *args]) == 2, args
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err and err.count("\n") == 1, err


def test_where_compares_in_float64_and_refuses_overflow_and_empty_selections(tmp_path, capsys, monkeypatch):
    """Integers in a condition are compared as float64 whatever the column's dtype (an int64 column
    against 10**19 used to wrap), an overflowing number is exit 2 naming it, and a condition that keeps
    no row is exit 2."""
    from scaling_grid.grid import cli
    table = dict(synthetic.universality_table(seed=0))
    table["m"] = np.asarray(table["m"]).astype(np.int64)
    monkeypatch.setattr(cli, "_points_table", lambda args: table)
    n = len(table["m"])
    for where, code, said in [("m > 2 ** -1", 0, None), ("m < 2**64", 0, None), ("m > 10**19", 2, "no point"),
                              ("m > 10.0**400", 2, "overflows"), ("m / 0 > 1", 2, "divides by zero")]:
        got = main(["fit", "t.csv", "--where", where, "--boot", "10", "--json", str(tmp_path / "f.json")])
        out, err = capsys.readouterr()
        assert got == code, (where, out[-2000:], err[-2000:])
        if code == 0:
            assert json.loads((tmp_path / "f.json").read_text())["variants"]["gpt2"]["n_points"] == n
            assert "where (" not in out  # nothing excluded
        else:
            assert said in err and "Traceback" not in err, (where, err)


def test_predict_a_large_run_from_a_fit_of_small_ones(tmp_path, capsys):
    path, _, _ = _study_csv(tmp_path / "small.csv")
    fit = tmp_path / "fit.json"
    assert main(["fit", path, "--law", "E + A/N^a + B/D^a", "--map", STUDY_MAP, "--boot", "20",
                 "--json", str(fit)]) == 0
    big, tb, _ = _study_csv(tmp_path / "big.csv", seed=9, Ns=(6.9e9,), Ds=(1.4e11, 3e11))
    capsys.readouterr()
    assert main(["predict", str(fit), "--at", big, "--map", STUDY_MAP, "--out", str(tmp_path / "pred.csv")]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")  # undo the wrapping at 100 columns
    assert "interval: 95% percentile over 20 bootstrap draws (all) of the law's value" in out
    assert "against c4_val_loss (2 row(s) with a loss)" in out
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert list(rows[0]) == ["params", "tokens", "c4_val_loss", "dataset", "id", "variant", "prediction", "lo", "hi",
                             "actual", "rel_error", "inside"]
    d = json.loads(fit.read_text())
    law = analysis.laws.get(d["law"]["formula"])
    v = d["variants"]["all"]
    theta = np.array([v["params"][n]["value"] if n in v["params"] else v["exponents"][n]["value"] for n in law.param_names])
    pred = law.predict(theta, {"N": tb["N"], "D": tb["D"]})
    for r, p, a in zip(rows, pred, tb["loss"]):
        assert float(r["prediction"]) == pytest.approx(p, rel=1e-12)
        assert float(r["lo"]) < float(r["prediction"]) < float(r["hi"])
        assert float(r["rel_error"]) == pytest.approx((a - p) / a, rel=1e-9)
        assert r["inside"] == ("true" if float(r["lo"]) <= a <= float(r["hi"]) else "false")
        assert abs(float(r["rel_error"])) < 0.03     # a 7x extrapolation in N of the right law
    assert main(["predict", str(fit), "--at", "N=6.9e9,D=1.4e11", "--at", "N=1e9,D=2e10", "--interval", "run"]) == 0
    out = capsys.readouterr().out
    assert out.count("| all ") == 2 and "of one run's loss" in out
    for args, why in [([str(tmp_path / "nope.json"), "--at", "N=1,D=1"], "does not exist"),
                      ([str(fit), "--at", "N=1e9"], "'D'"),
                      ([str(fit), "--at", "N=1e9,D=2e10", "--at", "N=1e9"], "same keys"),
                      ([str(fit), "--at", "N=1e9,D=2e10", "--out", str(tmp_path / "p.txt")], ".csv"),
                      ([str(path), "--at", "N=1e9,D=2e10"], "not JSON")]:
        assert main(["predict", *args]) == 2, args
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, err


def test_fit_holdout_prints_the_held_out_points_with_their_errors(tmp_path, capsys):
    path, t, _ = _study_csv(tmp_path / "study.csv")
    assert main(["fit", path, "--law", "E + A/N^a + B/D^a", "--map", STUDY_MAP, "--boot", "20",
                 "--holdout", "params >= 1e9", "--json", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    n_held = int((t["N"] >= 1e9).sum())
    assert f"excluded {n_held} point(s): holdout (params >= 1e9)" in out
    assert f"held out (all): {n_held} point(s) where params >= 1e9, predicted from a fit of the other" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ") and "prediction [95%]" in ln]
    assert len(table) == 1 and "actual" in table[0] and "rel error" in table[0]
    d = json.loads((tmp_path / "f.json").read_text())
    assert d["variants"]["all"]["n_points"] == len(t["N"]) - n_held
    assert d["options"]["holdout"] == "params >= 1e9"
    assert len(d["variants"]["all"]["holdout_predictions"]["rows"]) == n_held
