"""Whole runs: kill-and-resume bit-exactness with real SIGKILLs, SIGTERM saves, corrupt-checkpoint
fallback, divergence. Every run is a tiny model on the embedded corpus, bytes tokenizer."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import small_disk

from scaling_grid.trainer import config as C
from scaling_grid.trainer import configfile, loop, traincmd
from scaling_grid.trainer.metrics import TensorStoreSink, read_metrics

STEPS = 120
TINY = ["model.width=32", "model.depth=2", "model.heads=2", "model.seq_len=64", "train.batch_size=8",
        f"train.tokens={STEPS * 8 * 64}", "train.steps_per_call=2", "train.log_every=2", "train.eval_every=20",
        "train.ckpt_every=10", "train.eval_batches=2", "train.keep=20", "optim.warmup_steps=10"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _overrides(out: Path, data_root: Path, *extra: str) -> list[str]:
    return [f"out_dir={out}", f"data.root={data_root}", *TINY, *extra]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scaling_grid.grid.cli", *args]


def _metrics(out: Path) -> dict[str, np.ndarray]:
    return read_metrics(str(out / "metrics"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root):
    """An uninterrupted run through the CLI, its output a file (as under a scheduler): (folder, metrics,
    the finished process)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_cli("prepare", *_overrides(out, data_root)), check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the bar must switch off by itself
    proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, _metrics(out), proc


@pytest.fixture(scope="module")
def reference(reference_run):
    """The curve every resumed run must reproduce bit for bit: (folder, metrics)."""
    return reference_run[:2]


def _assert_same_curves(a: dict, b: dict) -> None:
    for field in a:
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)  # NaN == NaN here: unwritten steps


@pytest.mark.slow
def test_reference_run_learns(reference):
    _, m = reference
    logged = np.flatnonzero(~np.isnan(m["loss"]))
    assert list(logged) == list(range(2, STEPS + 1, 2))  # every logged step recorded, nothing else
    evals = np.flatnonzero(~np.isnan(m["eval_loss"]))
    assert list(evals) == list(range(0, STEPS + 1, 20))
    assert abs(m["eval_loss"][0] - math.log(256)) < 0.1  # ln(vocab) at init
    assert m["eval_loss"][STEPS] < 3.6  # bytes of Shakespeare: well below ln 256 = 5.55
    assert m["tokens"][STEPS] == STEPS * 8 * 64
    assert np.all(np.diff(m["tau"][logged]) > 0) and np.all(np.isfinite(m["grad_norm"][logged]))


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, at_least: int, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = out / "checkpoints"
        steps = [int(p.name) for p in ck.iterdir() if p.name.isdigit()] if ck.exists() else []
        if steps and max(steps) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before checkpoint {at_least}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for a checkpoint")


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_exact(reference, tmp_path, data_root):
    """SIGKILL at three different points (after a checkpoint, mid-chunk, right at start), resume each
    time: the finished curve equals the uninterrupted one bit for bit, every step recorded once."""
    ref_out, ref = reference
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    for at_least in (20, 60, 90):
        proc = subprocess.Popen(_cli("train", *_overrides(out, data_root)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _wait_for_checkpoint(out, proc, at_least)
        time.sleep(float(rng.uniform(0, 0.3)))  # land somewhere after the checkpoint, not on it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curves(ref, _metrics(out))


@pytest.mark.parametrize("as_url", [False, True], ids=["paths", "file-urls"])
@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(reference, tmp_path, data_root, as_url):
    """With file-urls, out_dir and data.root are file:// URLs (the token store is found again)."""
    _, ref = reference
    out = tmp_path / "run"
    args = _overrides(f"file://{out}", f"file://{data_root}") if as_url else _overrides(out, data_root)
    stores = sorted(data_root.rglob("*meta.json"))
    proc = subprocess.Popen(_cli("train", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(out, proc, 30)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "preempted" and "run again to resume" in err
    saved = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == result["step"] and saved >= 30  # the save happened at the step it stopped on
    proc = subprocess.run(_cli("train", *args), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curves(ref, _metrics(out))
    if as_url:
        assert sorted(data_root.rglob("*meta.json")) == stores  # the reference's token store, found through file://
        assert not list(tmp_path.rglob("file:")) and not Path("file:").exists()


def _cfg(out: Path, data_root: Path, *extra: str) -> C.RunConfig:
    return configfile.load(None, _overrides(out, data_root, *extra))


@pytest.mark.slow
def test_sigterm_during_eval(reference, tmp_path, data_root):
    """A SIGTERM that lands while the eval runs: the eval is abandoned, the state saved at that step,
    and the resumed run redoes that eval; the curve still matches the uninterrupted run."""
    _, ref = reference
    out = tmp_path / "run"
    cfg = _cfg(out, data_root)
    from scaling_grid.trainer import step, tokenstore
    from scaling_grid.trainer.model import make_arch
    store = tokenstore.prepare(cfg.data, progress=False)
    steps = step.build(make_arch(cfg.model, store.vocab_size), cfg.optim)
    calls = {"n": 0}

    def eval_then_signal(params, seqs):
        calls["n"] += 1
        if calls["n"] == 3:  # evals: step 0 uses batches 1-2; step 20's first batch is call 3
            os.kill(os.getpid(), signal.SIGTERM)
        return steps.eval(params, seqs)

    sink = TensorStoreSink(str(out / "metrics"), cfg.steps)
    r = loop.train(cfg, sink, out / "checkpoints", store=store, steps=steps._replace(eval=eval_then_signal))
    assert (r.status, r.step) == ("preempted", 20)
    m = _metrics(out)
    assert math.isnan(m["eval_loss"][20]) and not math.isnan(m["loss"][20])
    r = loop.train(cfg, TensorStoreSink(str(out / "metrics"), cfg.steps), out / "checkpoints", store=store, steps=steps)
    assert r.status == "done"
    _assert_same_curves(ref, _metrics(out))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back(reference, tmp_path, data_root):
    """Corrupt the newest checkpoint of a finished run: the next run says so, resumes from the one
    before, retrains the missing steps and ends with the same curve."""
    ref_out, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    latest = out / "checkpoints" / str(STEPS)
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage" * 4)
    warnings: list[str] = []
    cfg = _cfg(out, data_root)
    r = loop.train(cfg, TensorStoreSink(str(out / "metrics"), cfg.steps), out / "checkpoints", warn=warnings.append)
    assert r.status == "done"
    assert any(f"checkpoint at step {STEPS} is unreadable" in w and f"falling back to step {STEPS - 10}" in w
               for w in warnings), warnings
    _assert_same_curves(ref, _metrics(out))


@pytest.mark.slow
def test_divergence_stops_with_clear_message(tmp_path, data_root):
    out = tmp_path / "run"
    proc = subprocess.run(_cli("train", *_overrides(out, data_root, "optim.lr=1e30", "optim.clip_norm=0")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged" and "not finite at step" in proc.stderr
    m = _metrics(out)
    assert np.isnan(m["loss"][result["step"]]) or np.isinf(m["loss"][result["step"]])
    assert np.all(np.isnan(m["loss"][result["step"] + 1:]))  # nothing recorded past the divergence


@pytest.mark.slow
def test_changed_config_in_same_out_dir_is_refused(reference, tmp_path, data_root):
    ref_out, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    with pytest.raises(C.ConfigError, match="different config.*optim.lr"):
        traincmd.train_cli(_cfg(out, data_root, "optim.lr=1e-2"))


@pytest.mark.slow
def test_preempted_in_the_last_chunk_then_resume_owes_the_final_eval(tmp_path, data_root):
    """One chunk of 4000 steps SIGTERMed while it trains: the state at the last step is saved but its
    eval is not. The resumed run must evaluate it (before: 'already complete', eval NaN, invalid JSON)."""
    out, S = tmp_path / "run", 4000
    one_chunk = _overrides(out, data_root, "model.seq_len=16", "train.batch_size=4", f"train.tokens={S * 64}",
                           f"train.steps_per_call={S}", f"train.log_every={S}", f"train.eval_every={S}",
                           f"train.ckpt_every={S}", "train.eval_batches=1")
    proc = subprocess.Popen(_cli("train", *one_chunk), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def step0_evaluated():
        try:
            return np.isfinite(_metrics(out)["eval_loss"][0])
        except ValueError:  # arrays not created yet
            return False
    t0 = time.time()
    while not step0_evaluated():
        assert proc.poll() is None and time.time() - t0 < 300, "the run ended before its first eval"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # now inside the one and only chunk
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, log[-3000:]
    assert np.isnan(_metrics(out)["eval_loss"][S]) and np.isfinite(_metrics(out)["loss"][S])
    proc = subprocess.run(_cli("train", *one_chunk), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete; final eval loss" in proc.stdout
    final = _metrics(out)["eval_loss"][S]
    result = json.loads((out / "result.json").read_text())  # strict JSON: no NaN
    assert result["status"] == "done" and result["eval_loss"] == final and final < _metrics(out)["eval_loss"][0]
    ref = tmp_path / "ref"  # the same eval as an uninterrupted run, bit for bit
    ref_args = [a.replace(str(out), str(ref)) for a in one_chunk]
    assert subprocess.run(_cli("train", *ref_args), capture_output=True, timeout=300).returncode == 0
    assert _metrics(ref)["eval_loss"][S] == final


@pytest.mark.slow
def test_second_train_on_one_out_dir_is_refused(reference, tmp_path, data_root):
    """A run folder is locked while a run trains in it: a second `train` exits 2 and names the holder."""
    ref_out, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with traincmd.exclusive(out):  # the lock a running `train` holds
        proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"is in use by pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {p: t for p, t in before.items() if p.name != ".lock"}


@pytest.mark.slow
def test_unreadable_checkpoint_is_set_aside_and_saved_anew(reference, tmp_path, data_root):
    """After falling back from a corrupt checkpoint, the retrained step is saved again (before, the
    corrupt step stayed, so every later resume fell back again) and the corrupt one is kept aside."""
    ref_out, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    for f in (out / "checkpoints" / str(STEPS) / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # data files gone: orbax's restore fails mid-flight, which
            f.unlink()                            # printed dozens of 'Event loop is closed' tracebacks
    proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint at step {STEPS} is unreadable" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "checkpoints.unreadable" / str(STEPS)).is_dir()
    warnings: list[str] = []
    cfg = _cfg(out, data_root)
    r = loop.train(cfg, TensorStoreSink(str(out / "metrics"), cfg.steps), out / "checkpoints", warn=warnings.append)
    assert r.status == "done" and not warnings  # the new checkpoint at the last step reads
    _assert_same_curves(ref, _metrics(out))


@pytest.mark.slow
def test_damaged_metric_arrays_of_a_run_folder(reference, tmp_path, data_root):
    """Damaged metadata is rewritten from the config (the data chunks beside it are kept); a damaged
    data chunk is an exit-2 message naming the array, not a traceback."""
    ref_out, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    (out / "metrics" / "eval_loss" / "zarr.json").write_text("{garbled")
    for s in range(70, STEPS + 1, 10):  # resume from step 60, so metrics are written again
        shutil.rmtree(out / "checkpoints" / str(s))
    proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metrics/eval_loss: its metadata (zarr.json) is damaged" in proc.stderr and "rewrote" in proc.stderr
    _assert_same_curves(ref, _metrics(out))
    chunk = next((out / "metrics" / "loss" / "c").iterdir())
    chunk.write_bytes(b"xx")
    for s in range(70, STEPS + 1, 10):
        shutil.rmtree(out / "checkpoints" / str(s))
    proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "metrics/loss: a data chunk is damaged" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_full_disk_is_a_message_and_the_run_resumes_after(reference, tmp_path, data_root):
    """A run folder on a 600 KiB tmpfs fills up at its second checkpoint: exit 2 with one message
    (before: a 458-line orbax traceback); with space again the run resumes and matches the reference."""
    _, ref = reference
    with small_disk(tmp_path / "small", "600k") as mnt:
        out = mnt / "run"
        proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        # the path, where the failing write names it: orbax's metadata thread sometimes meets the full
        # disk first and raises a bare OSError (errno 28, no filename); then the message has no path
        msg = next(ln for ln in proc.stderr.splitlines() if "error: no space left on the device" in ln)
        assert " writing " not in msg or " writing " + str(out) in msg, msg
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 15, proc.stderr[-3000:]
        shutil.copytree(out, tmp_path / "run", symlinks=True)  # "free some space": move the folder
    out = tmp_path / "run"
    proc = subprocess.run(_cli("train", *_overrides(out, data_root)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curves(ref, _metrics(out))


def test_a_changed_field_that_to_dict_omits_at_its_default_is_named(tmp_path, data_root):
    """data.documents is left out of the config dict at its default (stable ids); changing it in an
    existing run folder is still refused with the field named (before: KeyError)."""
    corpus = tmp_path / "input.txt"
    corpus.write_text("one\n\ntwo\n")
    out = tmp_path / "run"
    base = [f"out_dir={out}", f"data.root={data_root}", "data.source=text", f"data.paths=[{corpus}]"]
    out.mkdir()
    (out / "config.yaml").write_text(__import__("yaml").safe_dump(configfile.load(None, base).to_dict()))
    with pytest.raises(C.ConfigError, match=r"data.documents: '\(default\)' -> 'blank_lines'"):
        traincmd.train_cli(configfile.load(None, [*base, "data.documents=blank_lines"]))


@pytest.mark.slow
def test_log_without_a_terminal_is_plain_lines(reference_run):
    """Output to a file: the JAX backend first, no progress-bar redraws, one plain line per eval."""
    import jax
    _, _, proc = reference_run
    assert "\r" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"jax {jax.__version__} on cpu: 1 device (cpu)"
    evals = [line.split()[1] for line in lines if line.startswith("step ") and " eval " in line]
    assert evals == [f"{s}/{STEPS}" for s in range(0, STEPS + 1, 20)]
    assert lines[-1].startswith("done: ") and len(lines) < 15


@pytest.mark.slow
def test_status_and_export_of_a_run_folder(reference_run, tmp_path, capsys):
    """`status` and `export` read a `train` folder as a grid of one run, with the grid store's checks."""
    from scaling_grid.grid import cli
    from scaling_grid.grid import export as E
    from scaling_grid.grid import status as GS
    ref_out, ref, proc = reference_run
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    assert cli.main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[1].split()[:5] == ["run", "done", f"{STEPS}/{STEPS}",
                                                f"{ref['loss'][STEPS]:.4f}", f"{ref['eval_loss'][STEPS]:.4f}"]
    assert cli.main(["export", str(out), "--out", str(tmp_path / "x.csv")]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(out), "--out", "/proc/sg-bar/x.csv"]) == 2  # root may, /proc does not
    assert "--out='/proc/sg-bar/x.csv': its folder cannot be created" in capsys.readouterr().err
    t = E.export_table(str(out))
    assert tuple(t) == E.EXPORT_COLUMNS and (tmp_path / "x.csv").read_text().count("\n") == len(t["step"]) + 1
    steps = np.flatnonzero(np.isfinite(ref["loss"]) | np.isfinite(ref["eval_loss"]))
    np.testing.assert_array_equal(t["step"], steps)
    for col, field in (("train_loss", "loss"), ("eval_loss", "eval_loss"), ("eval_stderr", "eval_stderr"),
                       ("lr", "lr")):
        np.testing.assert_array_equal(t[col], ref[field][steps], err_msg=col)
    assert set(t["cell"]) == {"run"} and set(t["role"]) == {"separate"} and set(t["total_steps"]) == {STEPS}
    assert list(t["step"][t["is_final"]]) == [STEPS]
    n = int(proc.stdout.split(" non-embedding params")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert set(t["N"]) == {n} and set(t["m"]) == {32} and set(t["l"]) == {2}  # as `train` printed them
    with traincmd.exclusive(out):  # a `train` holds the folder
        assert GS.status_rows(str(out))[0]["state"] == "running"
    result = (out / "result.json").read_text()
    (out / "result.json").unlink()  # killed: metrics, no result
    assert GS.status_rows(str(out))[0]["state"] == "partial"
    (out / "result.json").write_text(result)
    shutil.rmtree(out / "metrics" / "eval_loss" / "c")  # the final eval lost
    assert cli.main(["status", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"done, but its final point (step {STEPS}) has no eval_loss" in text and "same `scaling-grid train`" in text
    (out / "metrics" / "loss" / "zarr.json").write_text("{garbled")
    assert cli.main(["export", str(out), "--out", str(tmp_path / "y.csv")]) == 2
    err = capsys.readouterr().err
    assert "metrics/loss: its metadata (zarr.json) is damaged" in err and not (tmp_path / "y.csv").exists()
