"""Optional metric sinks (TensorBoard, Weights & Biases) and what `run` prints when its output is a
file: a tiny wsd grid run with --tensorboard and --wandb (offline) must give TensorBoard's own reader
and the offline W&B run files every cell's curves, equal to the store's; the packages are imported only
when asked for, and a missing one is an exit-2 message naming the pip install."""
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_spec

from scaling_grid.grid import cli
from scaling_grid.grid import store as G
from scaling_grid.trainer.config import approx_count
from scaling_grid.trainer.trackers import TensorBoardSink

TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "tau": "train/tau", "grad_norm": "train/grad_norm",
              "tokens": "train/tokens"}


def _spec(data: Path) -> str:
    """A wsd grid of 2 widths and 2 budgets: 6 cells (a trunk and 2 branches a width)."""
    return tiny_spec("sinks", {"width": [16, 32], "depth": [1], "tokens": [2560, 5120]}, tokens_mode="wsd",
                     root=str(data), optim={"decay_fraction": 0.2}, eval_every=16, keep=None)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # bars must switch off by themselves
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true")
    return env


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The grid run once into a store, with both sinks, its output captured (a file, not a terminal)."""
    root = tmp_path_factory.mktemp("sinks")
    spec = root / "s.yaml"
    spec.write_text(_spec(root / "data"))
    store, tb = root / "store", root / "tb"
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store", str(store),
                        "--no-memory-check", "--tensorboard", str(tb), "--wandb", "sinks-test"],
                       capture_output=True, text=True, timeout=600, env=_env(root), cwd=root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = G.Store(str(store))
    metrics = {cid: s.read_metrics(cid) for cid in s.cell_ids()}
    assert len(metrics) == 6  # 2 widths x (trunk + 2 branches)
    return root, store, tb, metrics, p


def _logged(a: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isfinite(a))


@pytest.mark.slow
def test_tensorboard_reads_every_cells_curves_equal_to_the_store(grid):
    from tensorboard.backend.event_processing import event_accumulator as ea
    _, _, tb, metrics, _ = grid
    assert sorted(p.name for p in tb.iterdir()) == sorted(metrics)  # one TensorBoard run per cell
    for cid, m in metrics.items():
        acc = ea.EventAccumulator(str(tb / cid), size_guidance={ea.SCALARS: 0})  # 0: keep every point
        acc.Reload()
        assert set(acc.Tags()["scalars"]) == {*TRAIN_TAGS.values(), "eval/loss", "eval/stderr"}
        curves = {**{tag: m[f] for f, tag in TRAIN_TAGS.items()}, "eval/loss": m["eval_loss"],
                  "eval/stderr": m["eval_stderr"]}
        for tag, want in curves.items():
            got = acc.Scalars(tag)
            steps = np.array([e.step for e in got])
            np.testing.assert_array_equal(steps, _logged(want), err_msg=f"{cid} {tag}")  # each step once
            # TensorBoard keeps float32: equal to the store's float64 rounded to float32
            np.testing.assert_array_equal(np.array([e.value for e in got], np.float32),
                                          want[steps].astype(np.float32), err_msg=f"{cid} {tag}")
        assert len(_logged(m["eval_loss"])) >= 2 and len(_logged(m["loss"])) >= 2  # a branch: 8 steps


def test_tensorboard_resume_shows_each_step_once(tmp_path):
    """A resumed run rewrites the steps after its checkpoint and re-evaluates the checkpoint's step:
    TensorBoard shows the new values from there, the old ones before, the checkpoint's train point (from
    the store), and no step twice."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    def write(sink, steps, offset):
        steps = np.array(steps)
        sink.write_train(steps, {f: steps + offset for f in TRAIN_TAGS})

    first = TensorBoardSink(tmp_path / "run")
    first.start(20, 0)
    first.write_eval(0, 5.0, 0.1)
    write(first, range(1, 9), 0.0)
    first.write_eval(8, 4.0, 0.1)
    write(first, range(9, 13), 0.0)  # killed at step 12; its checkpoint is at step 8
    first.close("failed", 12)
    again = TensorBoardSink(tmp_path / "run", recorded=lambda step: {f: float(step) for f in TRAIN_TAGS})
    again.start(20, 8)
    again.write_eval(8, 4.5, 0.1)  # a resume at an eval step evaluates it again
    write(again, range(9, 21), 0.5)
    again.write_eval(16, 3.5, 0.1)
    again.close("done", 20)
    acc = ea.EventAccumulator(str(tmp_path / "run"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in loss] == list(range(1, 21))
    assert dict(loss)[7] == 7.0 and dict(loss)[8] == 8.0 and dict(loss)[9] == 9.5 and dict(loss)[20] == 20.5
    assert [(e.step, e.value) for e in acc.Scalars("eval/loss")] == [(0, 5.0), (8, 4.5), (16, 3.5)]


@pytest.mark.slow
def test_train_with_tensorboard_and_wandb_then_run_again(tmp_path):
    """`train --tensorboard DIR --wandb P`: TensorBoard run DIR/<out_dir name>, W&B run id <name>-<hash>;
    training the finished run again (it re-evaluates its last step) leaves every step once."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    from scaling_grid.trainer import configfile, traincmd
    from scaling_grid.trainer.metrics import read_metrics
    out, tb = tmp_path / "myrun", tmp_path / "tb"
    args = [f"out_dir={out}", f"data.root={tmp_path}/data", "model.width=16", "model.depth=1", "model.heads=2",
            "model.seq_len=16", "train.batch_size=4", "train.tokens=2560", "train.steps_per_call=4",
            "train.log_every=4", "train.eval_every=16", "train.eval_batches=1", "optim.warmup_steps=4"]
    for _ in range(2):
        p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", *args, "--tensorboard", str(tb),
                            "--wandb", "sinks-test"], capture_output=True, text=True, timeout=300, env=_env(tmp_path),
                           cwd=tmp_path)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "already complete" in p.stdout
    m = read_metrics(str(out / "metrics"))
    assert [d.name for d in tb.iterdir()] == ["myrun"]
    acc = ea.EventAccumulator(str(tb / "myrun"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    for tag, want in {"train/loss": m["loss"], "eval/loss": m["eval_loss"], "train/tau": m["tau"]}.items():
        got = acc.Scalars(tag)
        assert [e.step for e in got] == list(_logged(want)), tag  # each step once, after two attempts
        np.testing.assert_array_equal([e.value for e in got], want[_logged(want)].astype(np.float32))
    name = traincmd.run_name(configfile.load(None, args))
    assert name.startswith("myrun-") and len(list((tmp_path / "wandb").glob(f"offline-run-*-{name}"))) == 2


def _wandb_records(path: Path) -> list:
    """Records of an offline .wandb file: a 7-byte header, then LevelDB-log framing (32 KiB blocks,
    7-byte chunk headers: crc32, length, type 1 full | 2 first | 3 middle | 4 last) of protobuf Records.
    wandb has no offline reader in Python; the framing is small enough to read here."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            break
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@pytest.mark.slow
def test_wandb_offline_run_per_cell_with_the_scalars(grid):
    root, store, _, metrics, _ = grid
    files = {cid: list((root / "wandb").glob(f"offline-run-*-{cid}/run-{cid}.wandb")) for cid in metrics}
    assert all(len(f) == 1 for f in files.values()), files  # one offline run per cell, its id the cell id
    for cid, m in metrics.items():
        records = _wandb_records(files[cid][0])
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_id == cid and run.display_name == cid
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        assert config["id"] == cid and config["config"]["model"]["width"] == config["m"]
        history: dict[int, dict] = {}
        for r in records:
            if r.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                history.setdefault(r.history.step.num, {}).update(row)
        for tag, want in {**{tag: m[f] for f, tag in TRAIN_TAGS.items()}, "eval/loss": m["eval_loss"]}.items():
            steps = [s for s in sorted(history) if tag in history[s]]
            assert steps == list(_logged(want)), (cid, tag)  # the sink saw every step, each once
            np.testing.assert_array_equal([history[s][tag] for s in steps], want[steps], err_msg=f"{cid} {tag}")


def _labels(store: Path) -> dict[str, dict]:
    """Per cell, what its W&B run and TensorBoard hparams must carry, from the store's records."""
    return {r["config"]["id"]: {"variant": r["config"]["variant"], "width": r["config"]["m"], "depth": r["config"]["l"],
                                "tokens": r["config"]["config"]["train"]["tokens"],
                                "peak_lr": r["config"]["peak_lr"], "role": r["config"]["role"]}
            for r in G.Store(str(store)).records()[0]}


@pytest.mark.slow
def test_wandb_runs_are_grouped_by_spec_tagged_and_carry_flat_keys(grid):
    """W&B group = the spec's name; tags variant, width, depth, tokens, lr, role; flat config keys."""
    root, store, _, metrics, _ = grid
    labels = _labels(store)
    assert sorted(labels) == sorted(metrics) and {v["role"] for v in labels.values()} == {"trunk", "branch"}
    for cid, want in labels.items():
        (path,) = (root / "wandb").glob(f"offline-run-*-{cid}/run-{cid}.wandb")
        run = next(r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run")
        assert run.run_group == "sinks"
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        assert {k: config[k] for k in want} == want
        assert list(run.tags) == [f"variant={want['variant']}", f"width={want['width']}", f"depth={want['depth']}",
                                  f"tokens={approx_count(want['tokens'])}", f"lr={want['peak_lr']:g}",
                                  f"role={want['role']}"]


@pytest.mark.slow
def test_tensorboard_hparams_per_cell(grid):
    """Each cell's TensorBoard run holds its hparams (TensorBoard's hparams plugin data, read back with
    TensorBoard's own reader), with eval and train loss as the metrics."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import metadata as hp
    _, store, tb, _, _ = grid
    for cid, want in _labels(store).items():
        acc = ea.EventAccumulator(str(tb / cid))
        acc.Reload()
        content = acc.PluginTagToContent(hp.PLUGIN_NAME)
        start = hp.parse_session_start_info_plugin_data(content[hp.SESSION_START_INFO_TAG])
        got = {k: (v.string_value or v.number_value) for k, v in start.hparams.items()}
        assert got == want, (cid, got)
        experiment = hp.parse_experiment_plugin_data(content[hp.EXPERIMENT_TAG])
        assert [m.name.tag for m in experiment.metric_infos] == ["eval/loss", "train/loss"]


@pytest.mark.slow
def test_train_wandb_group_is_given_by_flag_and_its_labels_say_single(tmp_path):
    """`train --wandb P --wandb-group G`: the W&B run in group G, tagged and keyed like a grid's cell
    with role single; its TensorBoard run holds the same labels as hparams."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import metadata as hp
    args = [f"out_dir={tmp_path}/one", f"data.root={tmp_path}/data", "model.width=16", "model.depth=1",
            "model.heads=2", "model.seq_len=16", "train.batch_size=4", "train.tokens=640", "train.eval_every=10",
            "train.eval_batches=1", "optim.warmup_steps=2"]
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", *args, "--wandb", "sinks-test",
                        "--wandb-group", "my-sweep", "--tensorboard", str(tmp_path / "tb")],
                       capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (path,) = (tmp_path / "wandb").glob("offline-run-*-one-*/run-one-*.wandb")
    run = next(r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run")
    want = {"variant": "gpt2", "width": 16, "depth": 1, "tokens": 640, "peak_lr": 3e-3, "role": "single"}
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert run.run_group == "my-sweep" and {k: config[k] for k in want} == want
    assert list(run.tags) == ["variant=gpt2", "width=16", "depth=1", "tokens=640", "lr=0.003", "role=single"]
    acc = ea.EventAccumulator(str(tmp_path / "tb" / "one"))
    acc.Reload()
    start = hp.parse_session_start_info_plugin_data(acc.PluginTagToContent(hp.PLUGIN_NAME)[hp.SESSION_START_INFO_TAG])
    assert {k: (v.string_value or v.number_value) for k, v in start.hparams.items()} == want


@pytest.mark.slow
def test_run_log_is_plain_lines_with_the_backend_first(grid):
    """Not a terminal: no bar redraws (no carriage return), one line per cell, the backend first."""
    _, _, _, metrics, p = grid
    assert "\r" not in p.stdout + p.stderr
    lines = p.stdout.splitlines()
    import jax
    assert lines[0] == f"jax {jax.__version__} on cpu: 1 device (cpu)"
    assert all(sum(line.startswith(f"{cid}: done in ") for line in lines) == 1 for cid in metrics)
    assert len(p.stdout) + len(p.stderr) < 4000, p.stdout + p.stderr


@pytest.mark.slow
def test_wandb_without_a_login_stops_the_grid_with_exit_2(tmp_path):
    """Online W&B without an API key: one message and exit 2 at the first cell (recorded as failed),
    not every cell failing alike."""
    spec = tmp_path / "s.yaml"
    spec.write_text(_spec(tmp_path / "data"))
    env = {k: v for k, v in _env(tmp_path).items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc, no wandb settings: not logged in
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store",
                        str(tmp_path / "st"), "--no-memory-check", "--wandb", "sinks-test"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "scaling-grid run: error: --wandb sinks-test: wandb.init failed" in p.stderr and "wandb login" in p.stderr
    states = [r["status"].get("state") for r in G.Store(str(tmp_path / "st")).records()[0]]
    assert sorted(states) == ["failed"] + ["pending"] * 5, states


def test_sink_packages_are_imported_only_when_asked_for():
    code = ("import sys; import scaling_grid.grid.cli, scaling_grid.grid.launch, scaling_grid.trainer.traincmd; "
            "assert not {'tensorboardX', 'wandb', 'tensorboard'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("command,flag,package", [("train", "--tensorboard", "tensorboardX"),
                                                  ("train", "--wandb", "wandb"),
                                                  ("run", "--tensorboard", "tensorboardX"),
                                                  ("run", "--wandb", "wandb")])
def test_missing_sink_package_is_exit_2_naming_the_install(command, flag, package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    if command == "train":
        argv = ["train", f"out_dir={tmp_path}/run", f"data.root={tmp_path}/data", "model.width=16", "model.depth=1",
                "model.heads=2", flag, str(tmp_path / "x")]
    else:
        argv = ["run", "configs/demo.yaml", "--store", str(tmp_path / "store"), flag, str(tmp_path / "x")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"scaling-grid {command}: error: {flag} needs the Python package {package}, which is not installed: " \
           f"pip install {package}" in err, err
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


def test_log_lines_show_an_eval_only_where_it_was_measured_with_speed_and_mfu():
    """Timed lines carry step, loss, ms/step, tok/s and (with a known peak) MFU, never a stale eval;
    an eval has its own line at its step; behind a long grid cell id a line wraps within 100 columns."""
    import time

    from scaling_grid.trainer.logsinks import LogLineSink
    from scaling_grid.trainer.peaks import device_peak_tflops
    prefix = "llama-w128-d24-s0-trunk-ba51f7: "
    lines: list[str] = []
    sink = LogLineSink(8192, prefix=prefix, every_s=0, out=lines.append, flops_per_token=6e9, peak_flops=8e17,
                       origin=99_900)
    sink.start(1_000_000, 99_900)
    for step, loss in ((100_000, 3.25), (100_100, 3.0)):
        time.sleep(0.05)
        sink.write_train(np.array([step]), {"loss": np.array([loss])})
        if step == 100_000:
            sink.write_eval(step, 3.1, 0.0123)
    timed, ev, later = lines
    assert timed.startswith(prefix + "step 100,000/1,000,000 loss 3.2500 ") and "eval" not in timed
    assert " ms/step " in timed and " tok/s MFU " in timed and timed.endswith("%")
    assert ev == prefix + "step 100,000/1,000,000 eval 3.1000 (se 0.0123)"
    assert "eval" not in later and later.startswith(prefix + "step 100,100/1,000,000 loss 3.0000")
    assert all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    wrapped: list[str] = []
    long = LogLineSink(8192, prefix="gpt2-w16-d1-t14.336k-s1-lr0.003-305f32: " * 2, every_s=0, out=wrapped.append)
    long.start(10, 0)
    time.sleep(0.01)
    long.write_train(np.array([5]), {"loss": np.array([3.0])})
    assert len(wrapped) == 2 and all(len(line) <= 100 for line in wrapped) and wrapped[1].startswith("    ")
    assert "MFU" not in " ".join(wrapped) and "tok/s" in " ".join(wrapped)  # no peak known: no MFU, never a guess
    assert device_peak_tflops("NVIDIA H100 80GB HBM3", np.float32) == 66.9 and device_peak_tflops("cpu", "float32") is None


# The XLA runtime's C++ log lines and JAX plugins' notes (not the trainer's or the launcher's own)
THIRD_PARTY = re.compile(r"^([IWE]\d{4} |WARNING: All log messages|WARNING:jax_plugins)")


def _ours(p: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (p.stdout + p.stderr).splitlines() if not THIRD_PARTY.match(line)]


@pytest.mark.slow
def test_every_line_of_a_grid_and_a_train_fits_100_columns_and_evals_show_where_measured(tmp_path):
    """A tiny grid and a `train` into a deep out_dir, as a log file sees them: every line of theirs
    within 100 columns (prepared, done, progress, the model line); each eval value on one line, at the
    step it was measured, equal to the stored one."""
    from scaling_grid.trainer.metrics import read_metrics
    spec = tmp_path / "s.yaml"
    spec.write_text(tiny_spec("a-grid-with-a-rather-long-name", {"width": [16, 32], "depth": [1], "tokens": [2560],
                                                                 "lr": ["3e-3"]}, root=str(tmp_path / "data"), pack=2))
    grid = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store", "st",
                           "--no-memory-check"], capture_output=True, text=True, timeout=600, env=_env(tmp_path),
                          cwd=tmp_path)
    assert grid.returncode == 0, grid.stdout[-2000:] + grid.stderr[-2000:]
    out = tmp_path / "runs-of-this-test" / "a-run-folder-named-at-length-as-people-do"
    train = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", f"out_dir={out}",
                            f"data.root={tmp_path}/data", "model.width=16", "model.depth=1", "model.heads=2",
                            "model.seq_len=16", "train.batch_size=4", "train.tokens=2560", "train.eval_every=20",
                            "train.eval_batches=1", "optim.warmup_steps=4"], capture_output=True, text=True,
                           timeout=600, env=_env(tmp_path), cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    lines = _ours(grid) + _ours(train)
    assert len(max(lines, key=len)) <= 100, max(lines, key=len)
    assert any(line.startswith("prepared ") for line in lines) and any(line.startswith("done: ") for line in lines)

    store = G.Store(str(tmp_path / "st"))
    done = [line for line in _ours(grid) if ": done in " in line]
    assert len(done) == 2
    for line in done:  # a cell's eval: its last step's, on its done line only
        cid = line.split(":")[0]
        m = store.read_metrics(cid)
        last = _logged(m["eval_loss"])[-1]
        assert last == len(m["eval_loss"]) - 1 and f"eval loss {m['eval_loss'][last]:.4f}" in line
    assert sum("eval" in line for line in _ours(grid)) == 2

    m = read_metrics(str(out / "metrics"))
    shown = [re.fullmatch(r"step ([\d,]+)/40 eval (\d\.\d{4}) \(se \d\.\d{4}\)", line) for line in _ours(train)]
    evals = [(int(x[1].replace(",", "")), x[2]) for x in shown if x]
    assert evals == [(int(s), f"{m['eval_loss'][s]:.4f}") for s in _logged(m["eval_loss"])]  # each once
    assert [s for s, _ in evals] == [0, 20, 40]
    others = [line for line, x in zip(_ours(train), shown) if not x and "eval" in line]
    assert len(others) == 1 and others[0].startswith("done: 40 steps in ") and f"eval loss {evals[-1][1]}" in others[0]
