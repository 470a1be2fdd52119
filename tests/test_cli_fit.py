"""`scaling-grid fit` on a published-style table: column mapping, exclusions, JSON, bad input."""
import csv
import json
import subprocess
import sys

from scaling_grid.analysis import synthetic


def _csv(path, rows, header):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _fit(*args):
    return subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "fit", *args],
                          capture_output=True, text=True, timeout=300)


def test_fit_chinchilla_csv_with_mapping(tmp_path):
    t = synthetic.chinchilla_table(seed=1)
    path = tmp_path / "chinchilla.csv"
    _csv(path, zip(t["N"], t["D"], t["loss"]), ["model_size", "n_tokens", "final_loss"])
    out = tmp_path / "fit.json"
    proc = _fit(str(path), "--law", "chinchilla", "--map", "N=model_size,D=n_tokens,loss=final_loss",
                "--drop-highest", "3", "--boot", "100", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| variant |" in proc.stdout and "α" in proc.stdout
    fit = json.loads(out.read_text())
    params = next(iter(fit["variants"].values()))["params"]
    truth = synthetic.CHINCHILLA_TRUTH
    assert abs(params["E"]["value"] - truth["E"]) / truth["E"] < 0.1
    assert params["E"]["lo"] <= params["E"]["value"] <= params["E"]["hi"]
    assert {"rule": "drop_highest", "value": 3, "n_points": 3}.items() <= fit["selection"]["exclusions"][0].items()


def test_fit_bad_inputs_exit_2_with_a_message(tmp_path):
    path = tmp_path / "t.csv"
    _csv(path, [(1e6, 1e9, 3.0), (2e6, 1e9, 2.9)], ["model_size", "n_tokens", "final_loss"])
    proc = _fit(str(path), "--law", "chinchilla", "--map", "N=model_size,D=n_tokens")
    assert proc.returncode == 2 and "loss" in proc.stderr, proc.stderr
    proc = _fit(str(path), "--law", "chinchilla", "--map", "N=model_size,D=n_tokens,loss=final_loss")
    assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr  # far too few points
    proc = _fit(str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "neither a table file" in proc.stderr, proc.stderr
