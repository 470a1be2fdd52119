"""A bucket outage mid-run (trainer/bucket.py): with the emulator killed under a running gs:// grid, the
launcher exits 1 within SCALING_GRID_BUCKET_TIMEOUT with one line naming the URL; a SIGTERM while it
waits on the dead bucket is exit 143 within seconds; once the bucket is back (fake-gcs-server's
filesystem backend keeps the objects across the restart) the same command resumes to the uninterrupted
curves bit for bit. Times to exit are printed (pytest -s)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gcs import BUCKET, Emulator
from tiny import tiny_spec

from scaling_grid.grid import launch
from scaling_grid.grid import store as G
from scaling_grid.trainer.metrics import EVAL_FIELDS, TRAIN_FIELDS

pytestmark = pytest.mark.slow  # starts processes and an emulator
BOUND = 10  # SCALING_GRID_BUCKET_TIMEOUT in the launches here


def _spec(data: str) -> str:
    """One cell of 320 steps, a checkpoint every 16: long enough to lose the bucket mid-run."""
    return tiny_spec("outage", {"tokens": [20480]}, root=data, model={"width": 16, "depth": 1})


def _checkpoints(folder: Path) -> list[int]:
    """The committed checkpoint steps, read from the emulator's own folder (the bucket may be down)."""
    return sorted(int(p.parent.name) for p in folder.rglob("commit_success.txt") if p.parent.name.isdigit())


def _launch(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scaling_grid.grid.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outage(emulator: Emulator, args: list[str], cwd: Path, env: dict[str, str], after: int,
            sigterm: bool) -> tuple[subprocess.CompletedProcess, float]:
    """Launch, wait for a checkpoint past `after`, kill the emulator (and, with `sigterm`, SIGTERM the
    launcher 3 s later, while it waits on the bucket): (the launch's result, seconds from the kill, or
    from the SIGTERM, to its exit)."""
    proc = _launch(args, cwd, env)
    try:
        deadline = time.time() + 240
        while max(_checkpoints(emulator.folder), default=0) <= after:
            assert proc.poll() is None, f"run ended (rc {proc.returncode}) before a checkpoint: {proc.stderr.read()}"
            assert time.time() < deadline, "no checkpoint in the bucket within 240 s"
            time.sleep(0.05)
        emulator.stop(kill=True)
        t0 = time.monotonic()
        if sigterm:
            time.sleep(3)
            assert proc.poll() is None, "exited before the SIGTERM"
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
        out, err = proc.communicate(timeout=BOUND + 60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err), took


def test_a_bucket_outage_ends_the_launch_in_time_and_the_relaunch_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local.yaml"
    local.write_text(_spec(str(tmp_path / "data")))
    assert launch.run(str(local), launch.Options(store=str(tmp_path / "ref"), memory_check=False,
                                                 progress=False, out=lambda s: None)) == launch.EXIT_OK
    ref = G.Store(str(tmp_path / "ref"))
    reference = {cid: ref.read_metrics(cid) for cid in ref.cell_ids()}

    emulator = Emulator(tmp_path / "gcs", backend="filesystem")
    emulator.start()
    try:
        env = {**os.environ, **emulator.env, "SCALING_GRID_BUCKET_TIMEOUT": str(BOUND)}
        root = f"gs://{BUCKET}/grid"
        spec = tmp_path / "cloud.yaml"
        spec.write_text(_spec(f"{root}/data"))
        store, ck = f"{root}/store", f"{root}/ck"
        args = ["run", str(spec), "--store", store, "--checkpoints", ck, "--no-progress", "--no-memory-check",
                "--status-every", "0.5"]

        # the bucket stops answering: exit 1 within the bound, one line naming a URL in it
        p, took = _outage(emulator, args, tmp_path, env, after=0, sigterm=False)
        print(f"\noutage: exit {p.returncode} {took:.1f} s after the emulator was killed (bound {BOUND} s)")
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 1 and took < BOUND + 15, p.stderr[-3000:]
        assert last.startswith(f"scaling-grid run: error: gs://{BUCKET}/grid/") and \
            f"did not answer within {BOUND} s" in last, p.stderr[-3000:]
        assert "Traceback" not in p.stderr, p.stderr[-3000:]

        # back, and down again: a SIGTERM while the launcher waits on it is exit 143 within seconds
        emulator.start()
        p, took = _outage(emulator, args, tmp_path, env, after=max(_checkpoints(emulator.folder)), sigterm=True)
        print(f"SIGTERM during the outage: exit {p.returncode} {took:.1f} s after the signal")
        assert p.returncode == 143 and took < 8, p.stderr[-3000:]
        last = p.stderr.strip().splitlines()[-1]
        assert f"gs://{BUCKET}/grid/" in last and "stopped by SIGTERM while the bucket did not answer" in last, last
        assert "Traceback" not in p.stderr, p.stderr[-3000:]

        # back for good: the same command resumes to the uninterrupted curves, bit for bit
        emulator.start()
        monkeypatch.setenv("SCALING_GRID_BUCKET_TIMEOUT", str(BOUND))
        for k, v in emulator.env.items():
            monkeypatch.setenv(k, v)
        done = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        s = G.Store(store)
        (cid,) = s.cell_ids()
        assert s.status(cid)[0]["state"] == "done"
        got = {cid: s.read_metrics(cid)}
        assert sorted(got) == sorted(reference)
        for f in TRAIN_FIELDS + EVAL_FIELDS:
            np.testing.assert_array_equal(got[cid][f], reference[cid][f], err_msg=f)
    finally:
        emulator.stop()
