"""Bad input to `train`, `run` and `export` (the command-line contract): exit 2, one message that names
the thing and the way out, no traceback, nothing written. Spec, config and fit cases live beside
their modules' tests (test_grid_validation, test_config, test_cli_fit, test_analysis_doubts)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scaling_grid.grid import cli

TINY = ["model.width=16", "model.depth=1", "model.heads=2", "model.seq_len=16", "train.batch_size=4",
        "train.tokens=2560", "train.steps_per_call=4", "train.log_every=4", "train.eval_every=20",
        "train.eval_batches=1", "optim.warmup_steps=4"]


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def _run_dir_with_bad_yaml(tmp: Path) -> Path:
    out = tmp / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: {width: [16\n")
    return out


def _folder(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def _regular_file(tmp: Path) -> Path:
    f = tmp / "afile"
    f.write_text("x")
    return f


# (name, argv as a function of tmp_path, fragments the message must contain)
CASES = [
    ("train: invalid YAML in out_dir/config.yaml",
     lambda t: ["train", f"out_dir={_run_dir_with_bad_yaml(t)}", f"data.root={t}/data", *TINY],
     ["run/config.yaml (the config this run folder was started with) is unreadable", "restore it"]),
    ("train: a model far beyond memory",
     lambda t: ["train", f"out_dir={t}/run", f"data.root={t}/data", *TINY, "model.width=16384", "model.depth=64",
                "model.heads=128"],
     ["parameters need at least", "GiB per device", "lower model.width or model.depth"]),
    ("train: a mesh that does not fit the devices",
     lambda t: ["train", f"out_dir={t}/run", f"data.root={t}/data", *TINY, "mesh.fsdp=3"],
     ["mesh={data: -1, fsdp: 3, tensor: 1}: the fixed axes (3 devices) do not divide the 1 devices"]),
    ("train: an eval set larger than the validation split (refused before out_dir exists)",
     lambda t: ["train", f"out_dir={t}/run", f"data.root={t}/data", *TINY, "train.eval_batches=100000"],
     ["train.eval_batches: the validation split", "but 400000 were asked"]),
    ("run: --status-every 0", lambda t: ["run", "configs/demo.yaml", "--store", f"{t}/s", "--status-every", "0"],
     ["--status-every=0: must be a positive number of seconds"]),
    ("run: negative --stale-after", lambda t: ["run", "configs/demo.yaml", "--store", f"{t}/s", "--stale-after", "-5"],
     ["--stale-after=-5: must be a positive number of seconds"]),
    ("status: a store path with '..' in it (TensorStore refuses those unless normalised)",
     lambda t: ["status", f"{_folder(t, 'sub')}/../nostore"], ["not a grid store (no store.json)"]),
    ("export: --out under a regular file",
     lambda t: ["export", f"{t}/store", "--out", f"{_regular_file(t)}/x.csv"], ["--out", "is a file, not a folder"]),
    ("export: --out with an unknown suffix", lambda t: ["export", f"{t}/store", "--out", f"{t}/x.txt"],
     ["--out=", "expected a .csv or .parquet file name"]),
    ("export: --out is a folder", lambda t: ["export", f"{t}/store", "--out", str(_folder(t, "x.csv"))],
     ["is a folder"]),
]


@pytest.mark.parametrize("name,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(name, argv, fragments, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    args = argv(tmp_path)
    before = _files(tmp_path)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"scaling-grid {args[0]}: error: " in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert {p: t for p, t in _files(tmp_path).items() if "data" not in p.parts} == \
        {p: t for p, t in before.items() if "data" not in p.parts}  # a token store may be prepared, nothing else


@pytest.mark.slow
def test_a_bucket_that_does_not_answer_is_refused_before_any_compute(tmp_path):
    """--checkpoints in a bucket that cannot be reached (no network, no credentials here): one message
    after the probe's wait, before any compute; never a local folder './gs:/b/ck' (what pathlib made of
    it before gs:// was supported). A subprocess with no emulator: TensorStore's retries stay in it."""
    spec = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORSTORE_GCS_HTTP_URL", "STORAGE_EMULATOR_HOST",
                                                             "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
    env["SCALING_GRID_BUCKET_TIMEOUT"] = "1"
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store",
                        str(tmp_path / "s"), "--checkpoints", "gs://bucket/ck", "--no-memory-check"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "--checkpoints='gs://bucket/ck': the bucket did not answer within 1 s" in p.stderr
    assert "Traceback" not in p.stderr and "jax" not in p.stdout  # nothing started: no backend line
    assert not (tmp_path / "gs:").exists() and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_refused_train_leaves_nothing_and_the_corrected_config_runs_in_the_same_out_dir(tmp_path, capsys,
                                                                                          monkeypatch):
    """A missing corpus, an eval set larger than the validation split and a refused W&B login each
    refuse `train` before out_dir exists (no metrics/, no .lock, no config.yaml to reject the next
    config); the corrected command then trains in that same out_dir."""
    out = tmp_path / "run"
    base = ["train", f"out_dir={out}", f"data.root={tmp_path}/data", *TINY]
    refused = [[*base, "data.source=jsonl", f"data.paths={tmp_path}/missing.jsonl"],
               [*base, "train.eval_batches=100000"]]
    for argv in refused:
        assert cli.main(argv) == 2
        assert "error: " in capsys.readouterr().err and not out.exists(), argv
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path), WANDB_SILENT="true")  # no login anywhere
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", *base, "--wandb", "refused"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert p.returncode == 2 and "wandb.init failed" in p.stderr, p.stderr[-2000:]
    assert not out.exists()
    monkeypatch.chdir(tmp_path)
    assert cli.main([*base, "--no-progress"]) == 0
    assert (out / "result.json").is_file() and '"status": "done"' in (out / "result.json").read_text()
