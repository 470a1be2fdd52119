"""Damage is judged on the whole record (issue 21): every point a done cell records, in every metric array,
and every cell folder a stored spec lists. `status` exits 1 naming the cell and the array, `export`
refuses, and `run` recomputes every lost point by running the cell again from the checkpoint before it
(from scratch when none is left), so the store then reads as an undamaged one, bit for bit."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts
from tiny import tiny_spec

from scaling_grid.grid import export as E
from scaling_grid.grid import store as G
from scaling_grid.trainer.metrics import EVAL_FIELDS, TRAIN_FIELDS, TensorStoreSink
from scaling_grid.trainer.runfolder import expected_steps, lost_points

AXES = {"width": [16, 32], "depth": [1], "tokens": [10240, 20480]}


def _cmd(*args):
    return [sys.executable, "-m", "scaling_grid.grid.cli", *args]


def _status(store):
    return subprocess.run(_cmd("status", str(store), "--wide"), capture_output=True, text=True, timeout=120)


def _export(store, out):
    return subprocess.run(_cmd("export", str(store), "--out", str(out)), capture_output=True, text=True, timeout=120)


def _run(spec, store, check_rc=0):
    p = subprocess.run(_cmd("run", str(spec), "--store", str(store), "--no-progress", "--no-memory-check"),
                       capture_output=True, text=True, timeout=600)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _blank(store, cid, fields, lo, hi):
    """What a lost data chunk holding steps [lo, hi) of `fields` reads as: NaN, the fill value."""
    for f in fields:
        arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store}/cells/{cid}/metrics/{f}"}},
                      open=True).result()
        arr[lo:hi].write(np.full(hi - lo, np.nan)).result()


def test_expected_steps_follow_the_loops_schedule():
    train, ev = expected_steps(10, 4, 8)
    assert list(train) == [4, 8, 10] and list(ev) == [0, 8, 10]
    train, ev = expected_steps(20, 4, 8, start=6)  # a branch from its trunk's step 6
    assert list(train) == [8, 12, 16, 20] and list(ev) == [8, 16, 20]
    m = {f: np.full(21, np.nan) for f in TRAIN_FIELDS + EVAL_FIELDS}
    for f in TRAIN_FIELDS:
        m[f][train] = 1.0
    for f in EVAL_FIELDS:
        m[f][[8, 20]] = 1.0
    assert lost_points(m, (train, ev)) == [("eval_loss", 16, 1), ("eval_stderr", 16, 1)]


def _synthetic_store(root, steps, n_cells=1, log_every=10, eval_every=100):
    """A store of done cells with every point their schedule records, written by the sink a cell writes
    with (real zarr chunks of 8,192 steps), without training: for checks and their timing."""
    store = G.Store(str(root))
    store.init("name: s\n", "0" * 8, "s")
    train, ev = expected_steps(steps, log_every, eval_every)
    ids = []
    for i in range(n_cells):
        cid = f"gpt2-w16-d1-s{i}-000000"
        rec = {"id": cid, "role": "separate", "variant": "gpt2", "m": 16, "l": 1, "seed": i, "peak_lr": 1e-3,
               "tokens": steps, "total_steps": steps, "init_step": None,
               "config": {"train": {"log_every": log_every, "eval_every": eval_every}}}
        store.put_config(rec)
        store.set_status(cid, {"state": "done", "step": steps})
        sink = TensorStoreSink(store.root, steps, prefix=store.metrics_prefix(cid))
        sink.write_train(train, {f: train.astype(float) + 1 for f in TRAIN_FIELDS})
        for s in ev:
            sink.write_eval(int(s), 3.0, 0.1)
        sink.close("done", steps)
        ids.append(cid)
    return ids


def test_a_middle_chunk_lost_from_every_array_of_a_record_is_damage(tmp_path):
    """The middle chunk (steps 8,192..16,383) of both eval arrays, then of every train array: the fields
    agree with each other and the final point is there, which `status` used to pass (exit 0)."""
    (cid,) = _synthetic_store(tmp_path / "s", 20_000)
    assert _status(tmp_path / "s").returncode == 0
    for f in EVAL_FIELDS:
        (tmp_path / "s" / "cells" / cid / "metrics" / f / "c" / "1").unlink()
    p = _status(tmp_path / "s")
    assert p.returncode == 1 and f"{cid}: done, but values are missing from step 8,200 on" in p.stdout, p.stdout
    assert "eval_loss: 82 point(s) from step 8,200" in p.stdout and "eval_stderr: 82 point(s)" in p.stdout
    assert "these values are lost" not in p.stdout  # `run` recomputes them
    p = _export(tmp_path / "s", tmp_path / "x.csv")
    assert p.returncode == 2 and cid in p.stderr and "eval_stderr" in p.stderr and not (tmp_path / "x.csv").exists()
    for f in TRAIN_FIELDS:
        (tmp_path / "s" / "cells" / cid / "metrics" / f / "c" / "1").unlink()
    p = _status(tmp_path / "s")
    assert p.returncode == 1 and "tau: 819 point(s) from step 8,200" in p.stdout, p.stdout


def test_a_spec_whose_cells_have_no_folders_is_missing_only_where_they_trained(tmp_path):
    """A stored spec none of whose cells has a folder (another version's ids: a new run-config field
    changes every id) names no cell, unless a cell's checkpoints show it trained: then it is damage."""
    from scaling_grid.grid import expand, spec
    _synthetic_store(tmp_path / "s", 100)
    text = tiny_spec("t", AXES)
    G.Store(str(tmp_path / "s")).write("specs/0123abcd.yaml", text)
    assert _status(tmp_path / "s").returncode == 0
    cid = expand.expand(spec.parse_spec(text), check_paths=False)[1].id
    (tmp_path / "s" / "checkpoints" / cid / "16").mkdir(parents=True)
    p = _status(tmp_path / "s")
    assert p.returncode == 1 and f"{cid}: its folder {tmp_path}/s/cells/{cid}/ is missing" in p.stdout, p.stdout
    assert p.stdout.count("is missing") == 1


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmg")
    spec = root / "t.yaml"
    spec.write_text(tiny_spec("t", AXES, root=str(root / "data")))
    _run(spec, root / "ref")
    return root, spec, E.export_table(str(root / "ref"))


def _same_table(got, want):
    assert sorted(got) == sorted(want) and list(got["cell"]) == list(want["cell"])
    for c in want:
        if want[c].dtype.kind == "f":
            np.testing.assert_array_equal(got[c], want[c], err_msg=c)  # NaN where NaN, else bit for bit
        else:
            assert list(got[c]) == list(want[c]), c


@pytest.mark.slow
def test_a_lost_eval_chunk_is_recomputed_from_an_earlier_checkpoint_every_point_back(grid, tmp_path):
    """Both eval arrays lose the points of steps 64..S-1 (a lost chunk in each, the final point kept):
    `run` goes back to checkpoint 64, which re-evaluates 64 and every later eval point. Another cell
    loses the only chunk of both eval arrays (final point included): it used to re-evaluate the final
    step alone, and `status` then passed it with every other eval point gone."""
    root, spec, want = grid
    store = tmp_path / "store"
    shutil.copytree(root / "ref", store)
    a, b = sorted(G.Store(str(store)).cell_ids())[:2]
    S = G.Store(str(store)).config(a)["total_steps"]
    _blank(store, a, EVAL_FIELDS, 64, S)
    for f in EVAL_FIELDS:
        next((store / "cells" / b / "metrics" / f / "c").iterdir()).unlink()
    p = _status(store)
    assert p.returncode == 1 and f"{a}: done, but values are missing from step 64 on" in p.stdout, p.stdout
    n_eval = len(range(0, G.Store(str(store)).config(b)["total_steps"] + 1, 32))
    assert f"{b}: done, but its final point (step" in p.stdout and f"eval_stderr: {n_eval} point(s) from step 0" in p.stdout
    assert _export(store, tmp_path / "x.csv").returncode == 2
    p = _run(spec, store)
    assert f"{a}: done, but values are missing" in p.stdout and "from before step 65 (from its checkpoint at step 64)" in p.stdout
    assert f"{b}: done, but its final point" in p.stdout and "(from scratch)" in p.stdout
    assert (store / "checkpoints" / f"{a}.unreadable" / str(S)).is_dir()  # moved aside, not deleted
    assert (store / "checkpoints" / a / "64").is_dir()
    assert _status(store).returncode == 0
    assert _export(store, tmp_path / "x.csv").returncode == 0
    _same_table(E.export_table(str(store)), want)


@pytest.mark.slow
def test_lost_tau_and_eval_stderr_chunks_and_a_deleted_cell_folder_are_named_then_repaired(grid, tmp_path):
    """A tau chunk, an eval_stderr chunk, a middle stretch of every train array, and a whole cell folder
    (its records said done; its checkpoints are left): `status` names each cell and array, `export`
    refuses, `run` trains each again from before its loss and the store exports as the reference."""
    root, spec, want = grid
    store = tmp_path / "store"
    shutil.copytree(root / "ref", store)
    a, b, c, d = sorted(G.Store(str(store)).cell_ids())
    next((store / "cells" / a / "metrics" / "tau" / "c").iterdir()).unlink()
    next((store / "cells" / b / "metrics" / "eval_stderr" / "c").iterdir()).unlink()
    _blank(store, c, TRAIN_FIELDS, 40, 80)
    shutil.rmtree(store / "cells" / d)
    p = _status(store)
    assert p.returncode == 1, p.stdout
    damaged = p.stdout[p.stdout.index("DAMAGED"):]
    assert f"{a}: done, but values are missing from step 4 on" in damaged and "(tau: " in damaged
    assert f"{b}: done, but values are missing from step 0 on" in damaged and "(eval_stderr: " in damaged
    assert f"{c}: done, but values are missing from step 40 on" in damaged and "grad_norm: 10 point(s)" in damaged
    assert f"{d}: its folder {store}/cells/{d}/ is missing ({store}/specs/" in damaged
    assert "these values are lost" not in damaged
    p = _export(store, tmp_path / "x.csv")
    assert p.returncode == 2 and all(x in p.stderr for x in (a, b, c, d)) and "Traceback" not in p.stderr
    p = _run(spec, store)
    assert f"{a}: done, but values are missing from step 4" in p.stdout and "from before step 4 (from scratch)" in p.stdout
    assert f"{c}: done, but values are missing from step 40" in p.stdout and "from before step 40 (from its checkpoint at step 32)" in p.stdout
    assert f"{d}: its folder {store}/cells/{d}/ is missing" in p.stdout and "; running it again from scratch" in p.stdout
    st = json.loads((store / "cells" / d / "status.json").read_text())
    assert st["state"] == "done"
    assert _status(store).returncode == 0
    _same_table(E.export_table(str(store)), want)
