"""`report` on a grid still running: the unfinished cells' final losses are predicted, kept in the
store once, and scored when the cells finish (issue 14, pre-registered extrapolation)."""
import json

import numpy as np
import pytest

from scaling_grid.analysis import run_fit, synthetic
from scaling_grid.grid import cli
from scaling_grid.grid.cli import main
from scaling_grid.grid.prereg import final_tau, planned_finals, preregister
from scaling_grid.grid.store import Store
from scaling_grid.trainer.config import from_dict

TRUTH = synthetic.UNIVERSALITY_TRUTH


def _grid(path):
    """A store of 4 widths x 4 depths x 3 budgets (cosine runs): configs for every cell, no status yet."""
    st = Store(str(path))
    st.init("name: demo\n", "abcd1234", "demo")
    cells = []
    for tokens in (400_000, 800_000, 1_600_000):
        cfg = from_dict({"optim": {"schedule": "cosine", "lr": 3e-3, "warmup_steps": 10},
                         "train": {"tokens": tokens}}).to_dict()
        for m in (64, 128, 256, 512):
            for l in (2, 4, 8, 16):
                rec = {"id": f"gpt2-m{m}-l{l}-t{tokens}", "variant": "gpt2", "role": "separate", "m": m, "l": l,
                       "N": 12 * m * m * l, "seed": 0, "tokens": tokens, "total_steps": from_dict(cfg).steps,
                       "tokens_per_step": from_dict(cfg).tokens_per_step, "schedule": "cosine", "peak_lr": 3e-3,
                       "flops_per_token": 72 * m * m * l, "config": cfg}
                st.put_config(rec)
                cells.append(rec)
    return st, cells


def _final_rows(cells, rng):
    """The export's final rows of `cells`, losses from the universality law with 0.5% noise."""
    tau = np.array([final_tau(c["config"]) for c in cells])
    m, l = np.array([c["m"] for c in cells], float), np.array([c["l"] for c in cells], float)
    L = synthetic.universality_loss(m, l, tau, **TRUTH) * np.exp(0.005 * rng.standard_normal(len(cells)))
    steps = np.array([c["total_steps"] for c in cells], float)
    return {"variant": np.full(len(cells), "gpt2"), "cell": np.array([c["id"] for c in cells]), "m": m, "l": l,
            "N": 12 * m * m * l, "seed": np.zeros(len(cells)), "step": steps, "tokens": steps * 4096,
            "tau_lr": tau, "lr": np.full(len(cells), 3e-4), "peak_lr": np.full(len(cells), 3e-3),
            "eval_loss": L, "is_final": np.ones(len(cells), bool), "flops_per_token": 72 * m * m * l}


@pytest.mark.slow
def test_report_predicts_unfinished_cells_keeps_them_once_and_scores_them_when_they_finish(tmp_path, monkeypatch,
                                                                                           capsys):
    st, cells = _grid(tmp_path / "store")
    rng = np.random.default_rng(0)
    done = [c for c in cells if c["tokens"] < 1_600_000]
    pending = [c for c in cells if c["tokens"] == 1_600_000]
    for c in done:
        st.set_status(c["id"], {"state": "done"})
    table = _final_rows(done, rng)
    monkeypatch.setattr(cli, "_points_table", lambda args: table)
    records, _ = st.records()
    plan = planned_finals(records)
    assert sorted(plan["cell"]) == sorted(c["id"] for c in pending)
    cosine = from_dict(pending[0]["config"])
    lr = [float(cosine.optim.lr) * min(1.0, (s + 1) / 10) for s in range(cosine.steps)]
    assert 0.3 * sum(lr) < plan["tau_lr"][0] < sum(lr)       # warmup, then a cosine decay to 10%

    assert main(["report", str(tmp_path / "store"), "--boot", "200", "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")  # undo the wrapping at 100 columns
    assert f"predicted the final loss of {len(pending)} unfinished cell(s)" in out and "kept in the store" in out
    keys = [k for k in (tmp_path / "store" / "predictions").iterdir()]
    assert len(keys) == 1
    rec = json.loads(keys[0].read_text())
    assert sorted(p["cell"] for p in rec["predictions"]) == sorted(c["id"] for c in pending)
    assert sorted(rec["finished_cells"]) == sorted(c["id"] for c in done) and rec["interval"] == "run"
    assert rec["fit"]["variants"]["gpt2"]["bootstrap"]["draws"]          # the fit that made them, draws and all
    assert "Predicted final loss of the unfinished cells" in (tmp_path / "r1" / "index.html").read_text()

    # the same state of the grid: nothing new is kept, the record is not rewritten
    before = keys[0].read_bytes()
    again = preregister(str(tmp_path / "store"), run_fit(table, n_boot=50, checks=False), table)
    assert again["key"] == rec["key"] and again["written"] is False
    assert "the store already holds them" in "\n".join(cli._prereg_lines(again)).replace("\n  ", " ")
    assert len(list((tmp_path / "store" / "predictions").iterdir())) == 1 and keys[0].read_bytes() == before

    # the cells finish: the next report scores what was predicted before they ran
    for c in pending:
        st.set_status(c["id"], {"state": "done"})
    new = _final_rows(pending, rng)
    table = {k: np.concatenate([table[k], new[k]]) for k in table}
    monkeypatch.setattr(cli, "_points_table", lambda args: table)
    assert main(["report", str(tmp_path / "store"), "--boot", "50", "--out", str(tmp_path / "r3")]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")
    actual = dict(zip(new["cell"], new["eval_loss"]))
    err = np.array([(actual[p["cell"]] - p["prediction"]) / actual[p["cell"]] for p in rec["predictions"]])
    inside = sum(p["lo"] <= actual[p["cell"]] <= p["hi"] for p in rec["predictions"])
    assert (f"{len(pending)} of {len(pending)} cells finished since; mean |rel error| "
            f"{100 * np.mean(np.abs(err)):.3g}%") in out
    assert f"{inside} of {len(pending)} inside the 95% interval" in out
    assert np.mean(np.abs(err)) < 0.02 and inside >= len(pending) // 2   # the right law, extrapolated 2x in tokens
    assert "predicted the final loss" not in out                         # nothing is left to predict
    html = (tmp_path / "r3" / "index.html").read_text()
    assert "Earlier predictions, scored" in html and rec["key"] in html
    assert main(["report", str(tmp_path / "store"), "--boot", "20", "--no-predictions",
                 "--out", str(tmp_path / "r4")]) == 0
    assert "Earlier predictions" not in (tmp_path / "r4" / "index.html").read_text()


def test_fit_of_an_unfinished_grid_says_so_first_and_complete_refuses_it(tmp_path, monkeypatch, capsys):
    """27 of 48 cells done: `fit` and `report` open with how much has finished; --complete is exit 2."""
    st, cells = _grid(tmp_path / "store")
    done = cells[:27]
    for c in done:
        st.set_status(c["id"], {"state": "done"})
    for c in cells[27:30]:
        st.set_status(c["id"], {"state": "running"})
    table = _final_rows(done, np.random.default_rng(0))
    monkeypatch.setattr(cli, "_points_table", lambda args: table)
    assert main(["fit", str(tmp_path / "store"), "--boot", "20"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"grid {tmp_path / 'store'}: 27 of 48 cells done (18 pending, 3 running); fitting the finished cells"
    assert main(["fit", str(tmp_path / "store"), "--boot", "20", "--complete"]) == 2
    err = capsys.readouterr().err
    assert "--complete: grid" in err and "27 of 48 cells done" in err and "drop --complete" in err
    assert main(["report", str(tmp_path / "store"), "--complete", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
