"""Whole grids with real `scaling-grid run` processes and real TensorStore stores: rerun trains nothing,
SIGKILL / SIGTERM mid-cell and relaunch reproduce the uninterrupted curves exactly, two shards share one
store, status reads a store while it is written, divergence and failures are recorded and the grid
goes on, export gives the tidy table. Tiny models on the embedded corpus, bytes tokenizer."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import small_disk
from tiny import tiny_spec

from scaling_grid.grid import cells as grid_cells
from scaling_grid.grid import export as E
from scaling_grid.grid import launch, liveness
from scaling_grid.grid import status as GS
from scaling_grid.grid import store as G
from scaling_grid.grid.plan import plan_text
from scaling_grid.trainer.metrics import EVAL_FIELDS, TRAIN_FIELDS

AXES = {"width": [16, 32], "depth": [1], "tokens": [10240, 20480]}
N_CELLS = 4
ONE_SHAPE = {"width": 16, "depth": 1}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    spec = root / "t.yaml"
    spec.write_text(tiny_spec("t", AXES, root=str(root / "data")))
    return root, spec


def _cmd(*args):
    return [sys.executable, "-m", "scaling_grid.grid.cli", *args]


def _run(spec, store, *extra, check_rc=0, timeout=300):
    p = subprocess.run(_cmd("run", str(spec), "--store", str(store), "--no-progress", "--no-memory-check", *extra),
                       capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _popen(spec, store, *extra):
    return subprocess.Popen(_cmd("run", str(spec), "--store", str(store), "--no-progress", "--no-memory-check",
                                 "--status-every", "0.2", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _all_metrics(store):
    s = G.Store(str(store))
    return {cid: s.read_metrics(cid) for cid in s.cell_ids()}


def _states(store):
    s = G.Store(str(store))
    return {cid: s.status(cid)[0] for cid in s.cell_ids()}


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for cid in a:
        for f in TRAIN_FIELDS + EVAL_FIELDS:
            np.testing.assert_array_equal(a[cid][f], b[cid][f], err_msg=f"{cid} {f}")


@pytest.fixture(scope="module")
def reference(grid):
    root, spec = grid
    store = root / "ref"
    p = _run(spec, store)
    assert "4 to run" in p.stdout and "4 done" in p.stdout
    return store, _all_metrics(store)


@pytest.mark.slow
def test_reference_grid_complete(reference):
    store, m = reference
    assert len(m) == N_CELLS
    cfgs = {c["config"]["id"]: c["config"] for c in G.Store(str(store)).records()[0]}
    for cid, arr in m.items():
        S = cfgs[cid]["total_steps"]
        assert list(np.flatnonzero(np.isfinite(arr["loss"]))) == list(range(4, S + 1, 4))  # every logged step once
        assert list(np.flatnonzero(np.isfinite(arr["eval_loss"]))) == sorted({*range(0, S + 1, 32), S})
        assert arr["eval_loss"][S] < arr["eval_loss"][0] - 1.0
    assert all(st["state"] == "done" and st["attempt"] == 1 for st in _states(store).values())
    spec_text = (store / "spec.yaml").read_text()
    assert "width: [16, 32]" in spec_text and json.loads((store / "store.json").read_text())["version"] == 1


@pytest.mark.slow
def test_rerun_trains_nothing(grid, reference):
    root, spec = grid
    store, before = reference
    files = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    p = _run(spec, store)
    assert f"{N_CELLS} done" in p.stdout and "0 to run" in p.stdout
    after = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    assert after == files  # not a byte rewritten
    _assert_same(before, _all_metrics(store))
    plan = plan_text(str(spec), launch.Options(store=str(store), memory_check=False))
    assert f"already: {N_CELLS} done, 0 diverged; to run: 0 cells" in plan and "done 320/320" in plan
    assert "wsd" in plan and "separate" in plan  # the compute of both token modes
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == files  # dry run writes nothing


@pytest.mark.slow
def test_a_running_record_of_a_live_but_other_process_is_taken_over(grid, reference, tmp_path):
    """A cell recorded as running on this host by a pid that is alive but is not the launcher that
    wrote it (the kernel reused the pid: another start time), or whose heartbeat is older than
    --stale-after whatever its pid says, is taken over and finished; a live launcher's fresh record is
    left alone."""
    import shutil
    root, spec = grid
    store = tmp_path / "store"
    shutil.copytree(reference[0], store)
    s = G.Store(str(store))
    cid = sorted(s.cell_ids())[0]
    other = subprocess.Popen(["sleep", "300"])  # a live process that is not a launcher
    try:
        real = liveness.process_start(other.pid)
        assert real is not None
        base = {"id": cid, "state": "running", "total": 160, "host": liveness.host_id(), "pid": other.pid, "step": 160}
        cases = [({"pid_start": str(int(real) + 1)}, G.now(), "600", True),        # pid reused
                 ({"pid_start": real}, "2000-01-01T00:00:00+00:00", "5", True),    # no heartbeat for 5 s
                 ({"pid_start": real}, G.now(), "600", False)]                     # alive and beating
        for extra, updated, stale_after, taken in cases:
            s.write_json(s.cell_key(cid, "status.json"), {**base, **extra, "updated": updated})
            _run(spec, store, "--stale-after", stale_after)
            st = s.status(cid)[0]
            assert (st["state"] == "done") == taken, (extra, st)
            assert (st.get("pid") != other.pid) == taken, (extra, st)
    finally:
        other.kill()


def _wait(pred, proc, timeout=240, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _mid_cell(store, exclude=()):
    """A cell that is running and has a checkpoint (so a kill lands mid-cell, after some progress)."""
    ck = Path(store) / "checkpoints"
    if not ck.exists():
        return None
    for d in ck.iterdir():
        if d.name in exclude or not any(p.name.isdigit() for p in d.iterdir()):
            continue
        st = json.loads((Path(store) / "cells" / d.name / "status.json").read_text())
        if st["state"] == "running":
            return d.name
    return None


@pytest.mark.parametrize("as_url", [False, True], ids=["paths", "file-urls"])
@pytest.mark.slow
def test_sigkill_and_sigterm_mid_cell_then_relaunch(grid, reference, as_url):
    """With file-urls, every path is a file:// URL: the store, --checkpoints and data.root (the token
    store prepared by the reference is found again, content-keyed), and nothing named 'file:' appears."""
    root, spec = grid
    store = root / ("killed-url" if as_url else "killed")
    where: tuple = (store,)  # what the commands get: the store, and with file-urls the checkpoints too
    stores = sorted((root / "data").rglob("*meta.json"))
    if as_url:
        spec = root / "t-url.yaml"
        spec.write_text(tiny_spec("t", AXES, root=f"file://{root / 'data'}"))
        where = (f"file://{store}", "--checkpoints", f"file://{store / 'checkpoints'}")
    proc = _popen(spec, *where)
    victim = _wait(lambda: _mid_cell(store), proc, what="a checkpoint mid-cell")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = _states(store)
    assert st[victim]["state"] == "running"  # killed mid-cell: nothing had a chance to record it
    assert sum(s["state"] == "done" for s in st.values()) < N_CELLS

    proc = _popen(spec, *where)  # resume; SIGTERM it in another cell
    victim2 = _wait(lambda: _mid_cell(store, exclude={victim}), proc, what="a second cell mid-run")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    st = _states(store)
    assert st[victim]["state"] == "done" and st[victim]["attempt"] == 2
    assert st[victim2]["state"] == "preempted" and "checkpoint saved" in st[victim2]["message"]

    p = _run(spec, *where)
    assert "done" in p.stdout
    st = _states(store)
    assert all(s["state"] == "done" for s in st.values())
    _assert_same(reference[1], _all_metrics(store))  # every step once, bit for bit the uninterrupted curves
    if as_url:  # the reference's token store was found through the file:// root: nothing new prepared
        assert sorted((root / "data").rglob("*meta.json")) == stores
        assert not list(root.rglob("file:")) and not Path("file:").exists()


@pytest.mark.slow
def test_two_shards_share_one_store_and_status_reads_it_live(grid, reference):
    root, spec = grid
    store = root / "sharded"
    procs = [_popen(spec, store, "--shard", f"{i}/2") for i in range(2)]
    live_states = set()
    cli_outputs = []
    while any(p.poll() is None for p in procs):
        if (store / "store.json").exists():
            rows = GS.status_rows(str(store))
            live_states |= {r["state"] for r in rows}
            if not cli_outputs and "running" in live_states:
                q = subprocess.run(_cmd("status", str(store)), capture_output=True, text=True, timeout=60)
                assert q.returncode == 0, q.stderr
                cli_outputs.append(q.stdout)
        time.sleep(0.25)
    for p in procs:
        assert p.returncode == 0, p.stdout.read()
    assert "running" in live_states
    assert cli_outputs and "step/total" in cli_outputs[0] and f"{N_CELLS} cells" in cli_outputs[0]
    st = _states(store)
    assert len(st) == N_CELLS and all(s["state"] == "done" and s["attempt"] == 1 for s in st.values())
    assert {s["shard"] for s in st.values()} == {"0/2", "1/2"}  # both hosts worked, no cell ran twice
    _assert_same(reference[1], _all_metrics(store))
    out = subprocess.run(_cmd("status", str(store)), capture_output=True, text=True, timeout=60).stdout
    assert f"{N_CELLS} cells: {N_CELLS} done" in out


@pytest.mark.slow
def test_export_table(grid, reference, tmp_path):
    store, m = reference
    t = E.export_table(str(store))
    assert tuple(t) == E.EXPORT_COLUMNS
    n = sum(int((np.isfinite(a["loss"]) | np.isfinite(a["eval_loss"])).sum()) for a in m.values())
    assert len(t["step"]) == n
    assert t["is_final"].sum() == N_CELLS
    fin = {c: s for c, s, f in zip(t["cell"], t["step"], t["is_final"]) if f}
    assert all(fin[c] == t["total_steps"][t["cell"] == c][0] for c in fin)
    assert set(t["role"]) == {"separate"} and set(t["schedule"]) == {"cosine"}
    assert np.all(t["N"] == 12 * t["m"] ** 2 * t["l"] + 13 * t["m"] * t["l"] + 2 * t["m"])  # gpt2: 12m^2l + biases, norms
    assert np.all(t["tokens"] == t["step"] * 64)
    p = subprocess.run(_cmd("export", str(store), "--out", str(tmp_path / "x.parquet")), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    import pyarrow.parquet as pq
    back = pq.read_table(tmp_path / "x.parquet").to_pydict()
    assert list(back) == list(E.EXPORT_COLUMNS)
    np.testing.assert_array_equal(np.array(back["eval_loss"], dtype=float), t["eval_loss"])
    E.write_table(t, tmp_path / "x.csv")
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0] == ",".join(E.EXPORT_COLUMNS) and len(lines) == n + 1


@pytest.mark.slow
def test_diverged_cell_is_recorded_and_grid_goes_on(grid):
    root, _ = grid
    spec = root / "div.yaml"
    spec.write_text(tiny_spec("div", {"lr": ["1e4", "3e-3"], "tokens": [5120]}, root=str(root / "data"),
                           model=ONE_SHAPE, optim={"lr": None}, keep=None))
    store = root / "div"
    p = _run(spec, store)  # diverged cells are results, not errors: exit 0
    st = {c["config"]["peak_lr"]: c["status"] for c in G.Store(str(store)).records()[0]}
    assert st[1e4]["state"] == "diverged" and "not finite" in st[1e4]["message"]
    assert st[3e-3]["state"] == "done"
    p = _run(spec, store)
    assert "0 to run" in p.stdout  # a diverged cell is final: not retried


@pytest.mark.slow
def test_failed_cell_is_recorded_grid_goes_on_and_retried(grid, monkeypatch):
    from scaling_grid.trainer import loop
    root, _ = grid
    spec = root / "fail.yaml"
    spec.write_text(tiny_spec("t", {"width": [16], "depth": [1], "tokens": [2560, 5120]}, root=str(root / "data")))
    store = root / "failing"
    real = loop.train_pack  # what the launcher calls, for one cell or a pack

    def flaky(lanes, *a, **k):
        if any(lane.cfg.train.tokens == 2560 for lane in lanes):
            raise RuntimeError("disk on fire")
        return real(lanes, *a, **k)
    monkeypatch.setattr(loop, "train_pack", flaky)
    opts = launch.Options(store=str(store), memory_check=False, progress=False)
    assert launch.run(str(spec), opts) == launch.EXIT_FAILED
    st = {c["config"]["name"]: c["status"] for c in G.Store(str(store)).records()[0]}
    bad = st.pop("gpt2-w16-d1-t2.56k-s0")
    assert bad["state"] == "failed" and "RuntimeError: disk on fire" in bad["message"]
    assert "Traceback" in bad["traceback"]
    assert [s["state"] for s in st.values()] == ["done"]  # the grid went on
    assert "failed" in GS.format_status(GS.status_rows(str(store)))
    monkeypatch.setattr(loop, "train_pack", real)
    assert launch.run(str(spec), opts) == launch.EXIT_OK  # retried by the next launch
    st = {c["config"]["name"]: c["status"] for c in G.Store(str(store)).records()[0]}
    assert st["gpt2-w16-d1-t2.56k-s0"]["state"] == "done" and st["gpt2-w16-d1-t2.56k-s0"]["attempt"] == 2


def _wsd_spec(name: str, data: Path) -> str:
    """One shape on a wsd trunk with two budgets: branches from steps 64 and 128."""
    return tiny_spec(name, {"tokens": [5120, 10240]}, tokens_mode="wsd", root=str(data), model=ONE_SHAPE,
                     optim={"decay_fraction": 0.2}, eval_every=16, ckpt_every=32, keep=None)


@pytest.mark.slow
def test_wsd_branches_start_from_trunk_and_continue_its_tau(grid):
    from scaling_grid.trainer.step import lr_table
    root, _ = grid
    spec = root / "wsd.yaml"
    spec.write_text(_wsd_spec("w", root / "data"))
    store = root / "wsd"
    _run(spec, store)
    s = G.Store(str(store))
    recs = {r["config"]["role"] + str(r["config"]["tokens"]): r for r in s.records()[0]}
    trunk = recs.pop(next(k for k in recs if k.startswith("trunk")))["config"]
    assert trunk["schedule"] == "constant" and trunk["keep_steps"] == [64, 128] and trunk["total_steps"] == 128
    tm = s.read_metrics(trunk["id"])
    ck = store / "checkpoints" / trunk["id"]
    assert {64, 128} <= {int(p.name) for p in ck.iterdir() if p.name.isdigit()}  # branch points kept
    for r in recs.values():
        b, st = r["config"], r["status"]
        assert b["role"] == "branch" and b["parent"] == trunk["id"] and st["state"] == "done"
        bp, S = b["init_step"], b["total_steps"]
        bm = s.read_metrics(b["id"])
        assert np.all(np.isnan(bm["loss"][:bp + 1]))  # the branch records only its own steps
        # started from the trunk's state: the same eval loss at the branch point, bit for bit
        assert bm["eval_loss"][bp] == tm["eval_loss"][bp]
        # tau continues the trunk's: trunk tau at the branch point + the branch's own lrs
        lrs = lr_table(_optim(b), S).astype(np.float64)  # the trainer sums tau in float64
        steps = np.flatnonzero(np.isfinite(bm["tau"]))
        np.testing.assert_allclose(bm["tau"][steps], tm["tau"][bp] + np.cumsum(lrs[bp:])[steps - bp - 1], rtol=1e-12)
        np.testing.assert_allclose(tm["tau"][bp], np.cumsum(lrs)[bp - 1], rtol=1e-12)
        assert bm["lr"][S] < bm["lr"][bp + 4] <= b["peak_lr"]
    t = E.export_table(str(store))
    assert set(t["role"][t["is_final"]]) == {"branch"} and t["is_final"].sum() == 2


def _optim(record):
    from scaling_grid.trainer.config import from_dict
    return from_dict(record["config"]).optim


@pytest.mark.slow
def test_shared_steps_padded_tables_change_nothing():
    """The launcher shares one Steps per shape and pads each cell's lr table to the longest run of its
    shape: one function serves every budget and schedule, and padding leaves every update bit for
    bit as with the cell's own exact-length table."""
    import jax

    from scaling_grid.grid.expand import expand
    from scaling_grid.grid.spec import parse_spec
    from scaling_grid.trainer.step import lr_table
    cells = []
    for schedule, budgets in (("cosine", [1024, 2048]), ("wsd", [2048])):  # 16 and 32 steps
        text = tiny_spec("t", {**AXES, "tokens": budgets}, root="/tmp/unused", optim={"schedule": schedule})
        cells += [c for c in expand(parse_spec(text), check_paths=False) if c.m == 16]
    from scaling_grid.trainer.compile import SharedSteps
    shared = SharedSteps()
    tables = launch.table_lengths(cells)
    assert len(cells) == 3 and set(tables.values()) == {32}
    rng = np.random.default_rng(0)
    for cell in cells:
        S, k, o = cell.steps, cell.config.train.steps_per_call, cell.config.optim
        steps = shared.get(cell.config, 256)
        own, padded = lr_table(o, S), lr_table(o, S, tables[cell.id])
        a, b = steps.init(jax.random.key(1)), steps.init(jax.random.key(1))
        for _ in range(0, S, k):  # the whole run: warmup, decay and the last steps
            x = jax.device_put(rng.integers(0, 256, (k, 4, 16)).astype(np.int32), steps.batch_sharding)
            a, ma = steps.train(a, x, x, own)
            b, mb = steps.train(b, x, x, padded)
            np.testing.assert_array_equal(np.asarray(ma["loss"]), np.asarray(mb["loss"]))
        for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
    assert len(shared.steps) == 1  # one Steps (one traced train step per table length) for all three


def test_a_new_optimizer_field_is_part_of_the_shape_unless_it_is_a_schedule_field():
    """The compile-sharing key is the optimizer config with its schedule fields reset: runs that
    differ in lr or schedule share a step, runs that differ in a compiled constant do not."""
    import dataclasses

    from scaling_grid.trainer.compile import shape_key
    from scaling_grid.trainer.configfile import load
    base = load(None, ["model.width=16", "model.heads=2", "model.depth=1"])
    key = shape_key(base, 256)
    assert shape_key(dataclasses.replace(base, optim=dataclasses.replace(
        base.optim, lr=1e-2, schedule="wsd", warmup_steps=3, decay_fraction=0.5, final_lr_ratio=0.0)), 256) == key
    for field, value in (("b2", 0.99), ("eps", 1e-6), ("weight_decay", 0.0), ("clip_norm", 0.5), ("b1", 0.8)):
        other = dataclasses.replace(base, optim=dataclasses.replace(base.optim, **{field: value}))
        assert shape_key(other, 256) != key, field


@pytest.mark.slow
def test_preempted_in_the_last_chunk_then_relaunch_evaluates_the_end(grid):
    """A one-chunk cell SIGTERMed while it trains saves its last step without its eval. The relaunch
    must evaluate it (before: the cell was 'done' with no final eval, and the launcher crashed)."""
    root, _ = grid
    spec = root / "last.yaml"
    spec.write_text(tiny_spec("last", {"tokens": [256000]}, root=str(root / "data"), model=ONE_SHAPE,
                           train={"steps_per_call": 4000, "log_every": 4000}, eval_every=4000, ckpt_every=4000,
                           keep=None))  # one chunk of 4000 steps
    store, S = root / "last", 4000
    s = G.Store(str(store))

    def in_chunk():
        ids = s.cell_ids() if s.exists() else []
        m = s.read_metrics(ids[0]) if ids else None
        return ids[0] if m is not None and np.isfinite(m["eval_loss"][0]) else None
    proc = _popen(spec, store)
    cid = _wait(in_chunk, proc, what="the step-0 eval")
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, log[-3000:]
    assert np.isnan(s.read_metrics(cid)["eval_loss"][S]) and s.status(cid)[0]["state"] == "preempted"
    p = _run(spec, store)
    assert "1 done" in p.stdout and "eval loss" in p.stdout
    final = s.read_metrics(cid)["eval_loss"][S]
    assert s.status(cid)[0]["eval_loss"] == final and GS.status_rows(str(store))[0]["eval_loss"] == final
    t = E.export_table(str(store))
    assert t["is_final"].sum() == 1 and t["eval_loss"][t["is_final"]][0] == final
    ref = root / "last-ref"
    _run(spec, ref)
    assert G.Store(str(ref)).read_metrics(cid)["eval_loss"][S] == final  # as if never interrupted


@pytest.mark.slow
def test_damaged_store_is_reported_by_name_and_repaired_by_run(grid, reference, tmp_path):
    """Damaged records are named by `status`, `export` refuses to drop them silently, and `run`
    repairs what can be repaired: the store then exports every cell with its reference final point.
    A metric's metadata that parses but gives another length is damage too (it was an IndexError)."""
    import shutil
    root, spec = grid
    ref_store, ref = reference
    store = tmp_path / "store"
    shutil.copytree(ref_store, store)
    (store / "store.json").write_text("{garbled")
    p = subprocess.run(_cmd("status", str(store)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "store.json is damaged" in p.stderr and "rewrites it" in p.stderr, p.stderr
    a, b, c, d = sorted(ref)
    (store / "cells" / a / "config.json").write_text("{garbled")
    (store / "cells" / b / "metrics" / "eval_loss" / "zarr.json").write_text("not json")
    tau_meta = store / "cells" / b / "metrics" / "tau" / "zarr.json"  # parses, but a shorter array
    meta = json.loads(tau_meta.read_text())
    meta["shape"][-1] //= 2
    tau_meta.write_text(json.dumps(meta))
    next((store / "cells" / c / "metrics" / "eval_loss" / "c").iterdir()).unlink()  # the final eval's chunk
    (store / "cells" / d / "status.json").write_bytes(b"\xff\xfe")
    _run(spec, store, "--dry-run", check_rc=None)  # a dry run writes nothing, repairs nothing
    p = subprocess.run(_cmd("status", str(store)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "store.json" in p.stderr  # store.json comes first
    (store / "store.json").write_text((ref_store / "store.json").read_text())
    p = subprocess.run(_cmd("status", str(store)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    damaged = p.stdout[p.stdout.index("DAMAGED"):]
    assert f"{a}: cells/{a}/config.json is damaged" in damaged.replace(str(store) + "/", "")
    assert f"{b}: metric array" in damaged and "tau: its metadata (zarr.json) is damaged (shape" in damaged
    assert f"{c}: done, but its final point" in damaged and "has no eval_loss" in damaged
    assert f"{d}: " in damaged and "status.json is damaged" in damaged and "repairs" in damaged
    p = subprocess.run(_cmd("export", str(store), "--out", str(tmp_path / "x.csv")), capture_output=True, text=True)
    assert p.returncode == 2 and not (tmp_path / "x.csv").exists(), p.stderr
    assert all(cid in p.stderr for cid in (a, b, c, d)) and "Traceback" not in p.stderr
    (store / "store.json").write_text("{garbled")
    p = _run(spec, store)
    assert f"{a}: its config.json was damaged; rewrote it" in p.stdout and f"{b}: rewrote damaged metric" in p.stdout
    assert f"{c}: done, but its final point" in p.stdout and "running it again" in p.stdout
    got, want = E.export_table(str(store)), E.export_table(str(ref_store))
    fin, ref_fin = got["is_final"], want["is_final"]
    assert list(got["cell"][fin]) == list(want["cell"][ref_fin]) and fin.sum() == N_CELLS
    np.testing.assert_array_equal(got["eval_loss"][fin], want["eval_loss"][ref_fin])  # bit for bit
    assert subprocess.run(_cmd("status", str(store)), capture_output=True, timeout=120).returncode == 0
    # A chunk lost in the middle of the record, the final point intact (status used to pass it, values blank):
    # status names it, and `run` recomputes it by training the cell again from before the gap.
    for chunk in (store / "cells" / b / "metrics" / "tau" / "c").iterdir():
        chunk.unlink()
    p = subprocess.run(_cmd("status", str(store)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and f"{b}: done, but values are missing from step" in p.stdout, p.stdout
    p = _run(spec, store)
    assert f"{b}: done, but values are missing" in p.stdout and "running it again from before step" in p.stdout
    assert np.array_equal(E.export_table(str(store))["tau_lr"], want["tau_lr"])  # every tau back, bit for bit
    next((store / "cells" / a / "metrics" / "loss" / "c").iterdir()).write_bytes(b"xx")  # values lost for good
    p = _run(spec, store, check_rc=1)  # nothing to train, but the grid is not whole: not exit 0
    assert f"{a}: DAMAGED" in p.stdout and f"1 cell(s) still DAMAGED (their values are lost; see above): {a}" in p.stdout


@pytest.mark.slow
def test_wsd_branch_whose_trunk_checkpoint_is_unreadable_reruns_the_trunk(grid, tmp_path):
    """A branch whose start checkpoint (in its trunk) does not restore: `run` says which, moves the
    trunk's checkpoints from there on aside, reruns the trunk from the one before, then the branch,
    and every curve equals the undamaged grid's."""
    import shutil
    root, _ = grid
    spec = root / "wsd2.yaml"
    spec.write_text(_wsd_spec("w2", root / "data"))
    ref_store, store = tmp_path / "ref", tmp_path / "store"
    _run(spec, ref_store)
    ref = _all_metrics(ref_store)
    shutil.copytree(ref_store, store)
    recs = {r["config"]["role"] + str(r["config"]["tokens"]): r["config"] for r in G.Store(str(store)).records()[0]}
    trunk = next(v for k, v in recs.items() if k.startswith("trunk"))
    branch = min((v for v in recs.values() if v["role"] == "branch"), key=lambda v: v["init_step"])
    bp = branch["init_step"]
    for path in (store / "cells" / branch["id"] / "metrics", store / "checkpoints" / branch["id"]):
        shutil.rmtree(path)
    (store / "cells" / branch["id"] / "status.json").unlink()
    for f in (store / "checkpoints" / trunk["id"] / str(bp)).rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    p = _run(spec, store)
    assert f"its trunk {trunk['id']}'s checkpoint at step {bp}, where this branch starts, is unreadable" in p.stdout
    assert "rerunning the trunk from its previous checkpoint" in p.stdout
    assert (store / "checkpoints" / f"{trunk['id']}.unreadable" / str(bp)).is_dir()
    _assert_same(ref, _all_metrics(store))
    assert {st["state"] for st in _states(store).values()} == {"done"}


def test_dry_run_and_status_fit_100_columns_on_the_demo_spec(tmp_path, capsys, monkeypatch):
    """Every line of `run --dry-run` and of `status` fits 100 columns on the demo grid (48 cells, long
    ids, long notes); --wide prints every column and whole notes."""
    from scaling_grid.grid import cli
    from scaling_grid.grid import expand as E
    from scaling_grid.grid import spec as S
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    store = tmp_path / "store"
    assert cli.main(["run", "configs/demo.yaml", "--store", str(store), "--dry-run", "--no-measure"]) == 0
    plan = capsys.readouterr().out
    assert "llama-w32-d4-t2.048M-s0-wsd-" in plan and "1600+400" in plan and "estimated ? (no" in plan
    assert max(len(line) for line in plan.splitlines()) <= 100, plan
    assert cli.main(["run", "configs/demo.yaml", "--store", str(store), "--dry-run", "--no-measure", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert "2.048M (from step 1600)" in wide and max(len(line) for line in wide.splitlines()) > 100
    assert not store.exists()  # a dry run writes nothing

    # A store of the demo spec's cells in every state a note is shown for (no training needed).
    spec = S.load_spec("configs/demo.yaml")
    cells = E.expand(spec, check_paths=False)
    records = grid_cells.records(cells, {})
    st = G.Store(str(store))
    st.init(spec.text, spec.hash, spec.name)
    message = "RuntimeError: " + "a long reason " * 20
    for i, c in enumerate(cells):
        st.put_config({**records[c.id], "config": c.config.to_dict(), "spec": spec.hash})
        state = ("running", "failed", "preempted", "diverged", "pending")[i % 5]
        if state != "pending":
            st.set_status(c.id, {"id": c.id, "state": state, "step": 1234, "total": c.steps, "pid": 1,
                                 "host": "node-0042.a-long-cluster-name.example.org", "loss": 2.12345,
                                 "eval_loss": 2.23456, "tokens_per_s": 123456.7, "message": message})
    assert cli.main(["status", str(store)]) == 0
    text = capsys.readouterr().out
    summary, hint = text.splitlines()[-2:]
    assert summary.startswith("48 cells: ") and hint == "(notes cut to 100 columns: --wide shows them whole)"
    assert all(f" {state}" in summary for state in ("pending", "running", "preempted", "diverged", "failed"))
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert cli.main(["status", str(store), "--wide"]) == 0
    assert message.strip() in capsys.readouterr().out  # whole


@pytest.mark.slow
def test_full_disk_in_a_grid_is_a_message_and_the_grid_finishes_after(grid, reference, tmp_path):
    """The store fills up at a checkpoint and the failure's own status write fails too (before: a
    traceback, the cell left 'running'): exit 2 with one message; with space again (the store moved
    to a roomy disk) the same command finishes every cell with the reference curves."""
    import shutil
    _, spec = grid
    with small_disk(tmp_path / "small", "400k") as mnt:
        p = _run(spec, mnt / "store", check_rc=None)
        assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
        assert "error: no space left on the device" in p.stderr and "Traceback" not in p.stderr
        shutil.copytree(mnt / "store", tmp_path / "store", symlinks=True)
    _run(spec, tmp_path / "store")  # the cell left 'running' by a dead process on this host is taken over
    _assert_same(reference[1], _all_metrics(tmp_path / "store"))
