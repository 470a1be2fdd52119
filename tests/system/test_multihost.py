"""Multi-process runs for real: two local processes joined with `jax.distributed` (gloo collectives on
CPU), each one device. Every decision that leads into a collective must be taken by both together, or
the job hangs: so every process here runs under a hard timeout and a hang fails the test."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from floats import assert_reordered_curves_close
from procs import finish, free_port
from tiny import tiny_spec

from scaling_grid.trainer.metrics import read_metrics

pytestmark = pytest.mark.slow  # every test here starts processes

STEPS = 200
RUN = ["model.width=32", "model.depth=2", "model.heads=2", "model.seq_len=64", "train.batch_size=8",
       f"train.tokens={STEPS * 8 * 64}", "train.steps_per_call=2", "train.log_every=2", "train.eval_every=20",
       "train.ckpt_every=10", "train.eval_batches=2", "train.keep=50", "optim.warmup_steps=10"]
TIMEOUT = 240  # a hang is a failure, not a stuck CI


def _env(devices: int = 1) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env.pop("TQDM_DISABLE", None)
    return env


def _start(out: Path, data: Path, *extra: str, n: int = 2, devices: int = 1) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "scaling_grid.grid.cli", "train", "--distributed",
                              "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
                              f"out_dir={out}", f"data.root={data}", *RUN, *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(devices))
            for i in range(n)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Two processes, a time-based checkpoint due at almost every chunk (each process's own clock
    says so at different moments): the run must finish, not hang."""
    root = tmp_path_factory.mktemp("mp")
    (rc0, log0), (rc1, log1) = finish(_start(root / "run", root / "data", "train.ckpt_minutes=0.002"), TIMEOUT)
    assert rc0 == 0 and rc1 == 0, log0[-3000:] + log1[-3000:]
    return root, read_metrics(str(root / "run" / "metrics")), log0, log1


def test_two_processes_match_one_process_on_two_devices(two_process_run, tmp_path):
    root, m2, log0, log1 = two_process_run
    assert "prepared shakespeare-bytes" in log0 and "prepared" not in log1  # exactly one process tokenizes
    assert "jax 0.10" in log0 and "on cpu: 2 devices" in log0 and "done:" not in log1  # process 0 reports
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", f"out_dir={tmp_path / 'one'}",
                        f"data.root={root / 'data'}", *RUN], capture_output=True, text=True, timeout=TIMEOUT,
                       env=_env(devices=2))
    assert p.returncode == 0, p.stderr[-3000:]
    m1 = read_metrics(str(tmp_path / "one" / "metrics"))
    logged = np.isfinite(m1["loss"])
    assert logged.sum() == STEPS // 2 and np.array_equal(logged, np.isfinite(m2["loss"]))
    np.testing.assert_allclose(m2["loss"][logged], m1["loss"][logged], rtol=1e-6, atol=1e-6)
    ev = np.isfinite(m1["eval_loss"])
    np.testing.assert_allclose(m2["eval_loss"][ev], m1["eval_loss"][ev], rtol=1e-6, atol=1e-6)


def test_sigterm_to_one_process_stops_both_at_one_step(two_process_run, tmp_path):
    """The signal reaches process 1 only: both save at the same step and exit 143 (before, process 0
    trained on into the next all-reduce while process 1 waited in orbax's barrier). The relaunch
    finishes with the uninterrupted curve."""
    root, ref, _, _ = two_process_run
    out = tmp_path / "run"
    procs = _start(out, root / "data")
    t0 = time.time()
    while not (out / "checkpoints" / "30").is_dir():
        assert time.time() - t0 < TIMEOUT and all(p.poll() is None for p in procs), "no checkpoint 30"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    t_sig = time.time()
    (rc0, log0), (rc1, log1) = finish(procs, timeout=60)
    assert time.time() - t_sig < 60
    assert rc0 == 143 and rc1 == 143, log0[-2000:] + log1[-2000:]
    result = json.loads((out / "result.json").read_text())
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert result["status"] == "preempted" and steps[-1] == result["step"] < STEPS
    assert f"preempted: checkpoint saved at step {result['step']}" in log0
    (rc0, log0), (rc1, log1) = finish(_start(out, root / "data"), TIMEOUT)
    assert rc0 == 0 and rc1 == 0, log0[-3000:] + log1[-3000:]
    got = read_metrics(str(out / "metrics"))
    for field in ref:
        np.testing.assert_array_equal(got[field], ref[field], err_msg=field)


def _wait_for(path: Path, procs: list[subprocess.Popen]) -> None:
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < TIMEOUT and all(p.poll() is None for p in procs), f"no {path}"
        time.sleep(0.05)


def test_fsdp_across_two_processes_resumes_on_one_process(two_process_run, tmp_path):
    """State sharded 4 ways over 2 processes x 2 devices, SIGTERM to one of them; the checkpoint then
    restores onto 1 process x 4 devices with parameters replicated, and training goes on. The
    uninterrupted run is another mesh (2 processes x 1 device, data parallel), so the curves agree to
    rounding, which chaotic training amplifies over the run (measured: 2.0e-4 by step 26, before any
    resume, since the validation split takes a share of the tokens): a wrong restore would jump at the
    resume step instead, so the 20 steps after it are held to 2e-3 (ten times that drift) and the rest
    to 0.05."""
    root, ref, _, _ = two_process_run
    out = tmp_path / "run"
    procs = _start(out, root / "data", "mesh.data=1", "mesh.fsdp=4", devices=2)
    _wait_for(out / "checkpoints" / "30", procs)
    procs[1].send_signal(signal.SIGTERM)
    (rc0, log0), (rc1, log1) = finish(procs, timeout=60)
    assert rc0 == 143 and rc1 == 143, log0[-2000:] + log1[-2000:]
    stopped = json.loads((out / "result.json").read_text())["step"]
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", f"out_dir={out}",
                        f"data.root={root / 'data'}", *RUN], capture_output=True, text=True, timeout=TIMEOUT,
                       env=_env(devices=4))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resuming at step {stopped:,}" in p.stdout + p.stderr
    got = read_metrics(str(out / "metrics"))
    logged = np.isfinite(ref["loss"])
    assert np.array_equal(logged, np.isfinite(got["loss"]))
    near = logged & (np.arange(len(logged)) <= stopped + 20)
    np.testing.assert_allclose(got["loss"][near], ref["loss"][near], rtol=0, atol=2e-3)
    np.testing.assert_allclose(got["loss"][logged], ref["loss"][logged], rtol=0, atol=0.05)
    ev = np.isfinite(ref["eval_loss"])
    np.testing.assert_allclose(got["eval_loss"][ev], ref["eval_loss"][ev], rtol=0, atol=0.05)


def test_batch_that_does_not_split_over_the_devices_is_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", f"out_dir={tmp_path / 'run'}",
                        f"data.root={tmp_path / 'data'}", *RUN, "train.batch_size=6"], capture_output=True,
                       text=True, timeout=TIMEOUT, env=_env(devices=4))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "train.batch_size=6: must split evenly over the 4 devices (mesh data x fsdp); use a multiple of 4" in p.stderr
    assert not (tmp_path / "run").exists()


def _wsd_grid(data: Path) -> str:
    """A wsd grid of 2 widths and 2 budgets: 6 cells (a trunk and 2 branches a width)."""
    return tiny_spec("mp", {"width": [16, 32], "tokens": [10240, 20480]}, tokens_mode="wsd", root=str(data),
                     model={"depth": 1}, optim={"decay_fraction": 0.2})


def _grid(spec: Path, store: Path, n: int = 2) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store", str(store),
                              "--no-memory-check", "--status-every", "0.5", "--distributed", "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
            for i in range(n)]


def test_grid_on_two_processes_sigterm_to_one_then_relaunch(tmp_path):
    """A 2-process grid: only process 0 writes the store; a SIGTERM to process 1 alone stops both
    (exit 143) within 60 s; the relaunch finishes every cell with the uninterrupted curves."""
    from scaling_grid.grid import store as G
    spec = tmp_path / "mp.yaml"
    spec.write_text(_wsd_grid(tmp_path / "data"))
    (rc0, log0), (rc1, log1) = finish(_grid(spec, tmp_path / "ref"), TIMEOUT)
    assert rc0 == 0 and rc1 == 0, log0[-3000:] + log1[-3000:]
    ref = G.Store(str(tmp_path / "ref"))
    statuses = [ref.status(c)[0] for c in ref.cell_ids()]
    assert len(statuses) == 6 and {s["state"] for s in statuses} == {"done"}
    assert len({st["pid"] for st in statuses}) == 1  # one writer: process 0
    store = tmp_path / "store"
    procs = _grid(spec, store)
    s = G.Store(str(store))
    t0 = time.time()
    while not (s.exists() and any(s.status(c)[0].get("state") == "done" for c in s.cell_ids())):
        assert time.time() - t0 < TIMEOUT and all(p.poll() is None for p in procs), "no cell done"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    t_sig = time.time()
    (rc0, log0), (rc1, log1) = finish(procs, timeout=60)
    assert time.time() - t_sig < 60 and rc0 == 143 and rc1 == 143, log0[-2000:] + log1[-2000:]
    assert {s.status(c)[0]["state"] for c in s.cell_ids()} != {"done"}  # stopped part-way
    (rc0, log0), (rc1, log1) = finish(_grid(spec, store), TIMEOUT)
    assert rc0 == 0 and rc1 == 0, log0[-3000:] + log1[-3000:]
    for cid in ref.cell_ids():
        a, b = ref.read_metrics(cid), s.read_metrics(cid)
        for field in a:
            np.testing.assert_array_equal(a[field], b[field], err_msg=f"{cid} {field}")


def test_a_failure_in_one_process_fails_the_cell_in_both_and_the_grid_goes_on(tmp_path):
    """Process 0 alone writes metrics; one cell's metric chunk cannot be written (its key is a folder),
    so process 0 fails in the middle of that cell while process 1 is ready for the next train step.
    Both fail the cell together, finish the other cells, and exit 1 (before: process 1 waited in the
    step's all-reduce until the job's heartbeat gave up)."""
    from scaling_grid.grid import expand as E
    from scaling_grid.grid import spec as S
    from scaling_grid.grid import store as G
    spec = tmp_path / "mp.yaml"
    spec.write_text(_wsd_grid(tmp_path / "data"))
    cells = E.expand(S.load_spec(spec))
    target = max((c for c in cells if c.role == "branch"), key=lambda c: (c.config.model.width, c.steps))
    store = tmp_path / "store"
    procs = _grid(spec, store)
    _wait_for(store / "store.json", procs)  # before any cell starts: data is prepared after this
    (store / "cells" / target.id / "metrics" / "loss" / "c" / "0").mkdir(parents=True)
    (rc0, log0), (rc1, log1) = finish(procs, TIMEOUT)
    assert rc0 == 1 and rc1 == 1, log0[-3000:] + log1[-3000:]
    s = G.Store(str(store))
    states = {c: s.status(c)[0] for c in s.cell_ids()}
    assert states[target.id]["state"] == "failed"
    assert 0 < (states[target.id].get("step") or 0) < target.steps  # it failed part-way, not at setup
    assert {st["state"] for c, st in states.items() if c != target.id} == {"done"}
    assert f"{target.id}: FAILED" in log0 and f"{target.id}: FAILED: another process" in log1


def test_a_packed_grid_on_two_processes_sigterm_to_one_then_relaunch(tmp_path):
    """Packs across processes: 4 cells (2 seeds x 2 budgets) in one pack of 4 on 2 processes x 1 device;
    SIGTERM to process 1 alone once the pack has a checkpoint stops both (143); the relaunch finishes,
    and every cell's curves equal the unpacked grid's on one process with 2 devices."""
    from scaling_grid.grid import store as G
    from scaling_grid.trainer.checkpoint import saved_steps
    spec, plain = tmp_path / "packed.yaml", tmp_path / "plain.yaml"
    for path, pack in ((spec, 4), (plain, None)):
        path.write_text(tiny_spec("mp", {"width": [16], "seed": [0, 1], "tokens": [10240, 14336]},
                                  root=str(tmp_path / "data"), model={"depth": 1}, optim={"decay_fraction": 0.2},
                                  ckpt_every=8, pack=pack))
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(plain), "--store",
                        str(tmp_path / "ref"), "--no-memory-check", "--no-progress"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=_env(devices=2))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ref = G.Store(str(tmp_path / "ref"))
    store, ckpts = tmp_path / "store", tmp_path / "store" / "checkpoints"
    procs = _grid(spec, store)
    t0 = time.time()
    while not (ckpts.exists() and any(saved_steps(d) for d in ckpts.iterdir())):
        assert time.time() - t0 < TIMEOUT and all(p.poll() is None for p in procs), "no checkpoint"
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    (rc0, log0), (rc1, log1) = finish(procs, timeout=60)
    assert rc0 == 143 and rc1 == 143, log0[-2000:] + log1[-2000:]
    s = G.Store(str(store))
    assert {s.status(c)[0]["state"] for c in s.cell_ids()} == {"preempted"}  # one pack, stopped together
    (rc0, log0), (rc1, log1) = finish(_grid(spec, store), TIMEOUT)
    assert rc0 == 0 and rc1 == 0, log0[-3000:] + log1[-3000:]
    assert "in a pack of 4" in log0
    assert sorted(s.cell_ids()) == sorted(ref.cell_ids())
    for cid in ref.cell_ids():  # gloo's all-reduce and vmap sum in another order (tests/floats.py)
        assert_reordered_curves_close(ref.read_metrics(cid), s.read_metrics(cid), cid)
