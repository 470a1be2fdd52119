"""Malformed grid specs are rejected before any compute, in under a second, with a message that names
the field and the fix, and nothing is written to the store."""
import time

import pytest
from tiny import tiny_spec

from scaling_grid.grid import cli

# data.root DATA: each test writes the spec with a folder under its tmp_path
GOOD = tiny_spec("v", {"width": [16, 32], "depth": [1, 2], "tokens": [2560, 5120]}, eval_every=16, keep=None)

# (name, spec text (or bytes, written as they are), fragment(s) the error message must contain)
BAD = [
    ("non-mapping YAML", "- width: 16\n- depth: 2\n", "expected a mapping"),
    ("invalid YAML", "axes: {width: [16, 32\n", "not valid YAML"),
    ("unknown top-level key", GOOD + "widths: [1, 2]\n", "unknown top-level key(s) ['widths']"),
    ("unknown variant", GOOD.replace("  width: [16, 32]", "  variant: [gpt5]\n  width: [16, 32]"),
     "axes.variant[0]='gpt5': unknown variant"),
    ("width not divisible by head_dim", GOOD.replace("width: [16, 32]", "width: [16, 20]"),
     "width=20 is not divisible by rules.heads.head_dim=8"),
    ("non-positive size", GOOD.replace("depth: [1, 2]", "depth: [0, 2]"), "axes.depth[0]=0: must be a positive"),
    ("budget below one batch", GOOD.replace("tokens: [2560, 5120]", "tokens: [32, 5120]"),
     "tokens=32 is below one batch"),
    ("empty axis", GOOD.replace("depth: [1, 2]", "depth: []"), "axes.depth: empty list"),
    ("duplicate axis values", GOOD.replace("width: [16, 32]", "width: [16, 16]"), "axes.width: duplicate value"),
    ("bad tokens string", GOOD.replace("tokens: [2560, 5120]", "tokens: [2560, 5Q]"), "axes.tokens[1]='5Q'"),
    ("wsd with one budget", GOOD.replace("name: v", "name: v\ntokens_mode: wsd").replace(
        "tokens: [2560, 5120]", "tokens: [5120]"), "tokens_mode=wsd needs at least 2 token budgets"),
    ("decay_fraction out of range", GOOD.replace("name: v", "name: v\ntokens_mode: wsd").replace(
        "optim: {lr: 3e-3}", "optim: {lr: 3e-3, decay_fraction: 1.5}"), "base.optim.decay_fraction=1.5"),
    ("unknown rule kind", GOOD.replace("rule: head_dim, head_dim: 8", "rule: sqrt, head_dim: 8"),
     "rules.heads.rule='sqrt': unknown rule"),
    ("unknown rule name", GOOD + "  # \n".replace("  # \n", "") + "", None),  # replaced below
    ("unknown tokens mode", GOOD.replace("name: v", "name: v\ntokens_mode: chinchilla"), "tokens_mode='chinchilla'"),
    ("missing data files", GOOD.replace("{source: shakespeare, tokenizer: bytes, root: DATA}",
                                        "{source: text, paths: [/nonexistent/corpus/*.txt], root: DATA}"),
     "data.paths='/nonexistent/corpus/*.txt': matches no file"),
    ("unknown base key", GOOD.replace("seq_len: 16", "seq_len: 16, widht: 3"), "base: unknown key(s) ['model.widht']"),
    ("out_dir in base", GOOD.replace("  optim: {lr: 3e-3}", "  optim: {lr: 3e-3}\n  out_dir: runs/x"), "base.out_dir"),
    ("bad base value", GOOD.replace("optim: {lr: 3e-3}", "optim: {lr: -1}"), "optim.lr=-1.0"),
    ("unknown cell key", GOOD + "cells:\n  - {width: 16, depth: 1, tokens: 2560, heads: 3}\n",
     "cells[0]: unknown key(s) ['heads']"),
    ("duplicate cell", GOOD + "cells:\n  - {width: 16, depth: 1, tokens: 2560}\n", "duplicate cell gpt2-w16-d1-t2.56k-s0"),
    ("warmup fraction out of range", GOOD.replace("fraction: 0.1", "fraction: 1.5"),
     "rules.warmup.fraction=1.5"),
    ("heads given twice", GOOD.replace("seq_len: 16", "seq_len: 16, heads: 2"), "base.model.heads and rules.heads"),
    ("no cells", GOOD[:GOOD.index("axes:")], "no cells"),
    ("cooldown inside warmup", GOOD.replace("name: v", "name: v\ntokens_mode: wsd").replace(
        "fraction: 0.1", "fraction: 0.9"), "before the end of warmup"),
]
BAD += [
    ("scalar YAML", "just words\n", "expected a mapping"),
    ("latin-1 file", ("# caf\xe9\n" + GOOD).encode("latin-1"), "spec.yaml' is not UTF-8 text (byte 5"),
    ("png file", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "spec.yaml' is not UTF-8 text (byte 0"),
    ("data.root under a file", GOOD.replace("root: DATA", "root: AFILE/data"),
     ("base: data.root='", "afile/data': is not writable", "afile' is a file, not a folder")),
    ("data.root is a file", GOOD.replace("root: DATA", "root: AFILE"), "afile' is a file, not a folder"),
]
BAD[13] = ("unknown rule name", GOOD.replace("rules:", "rules:\n  dropout: {rule: fixed}"), "rules.dropout: unknown rule")


@pytest.fixture
def workdir(tmp_path):
    data = tmp_path / "data"
    (tmp_path / "afile").write_text("x")  # a regular file, for paths that run through it
    return tmp_path, data


def _run(capsys, spec_text, tmp, data, *extra, name="spec.yaml"):
    """Run `scaling-grid run` on a spec: text (DATA and AFILE replaced by paths under tmp) or raw bytes."""
    spec = tmp / name
    if isinstance(spec_text, bytes):
        spec.write_bytes(spec_text)
    else:
        spec.write_text(spec_text.replace("DATA", str(data)).replace("AFILE", str(tmp / "afile")))
    store = tmp / "store"
    t0 = time.perf_counter()
    rc = cli.main(["run", str(spec), "--store", str(store), "--no-memory-check", "--no-progress", *extra])
    dt = time.perf_counter() - t0
    err = capsys.readouterr().err
    return rc, err, dt, store


def test_good_spec_dry_run_passes(capsys, workdir):
    tmp, data = workdir
    spec = tmp / "spec.yaml"
    spec.write_text(GOOD.replace("DATA", str(data)))
    rc = cli.main(["run", str(spec), "--store", str(tmp / "store"), "--dry-run", "--no-measure", "--no-memory-check"])
    out = capsys.readouterr().out
    assert rc == 0 and "8 cells" in out and "separate" in out and "wsd" in out
    assert not (tmp / "store").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name,text,fragment", BAD, ids=[b[0] for b in BAD])
def test_malformed_spec_rejected(capsys, workdir, name, text, fragment):
    tmp, data = workdir
    cli.main(["run", "/nonexistent.yaml", "--store", str(tmp / "warm")])  # imports warm, not timed
    capsys.readouterr()
    rc, err, dt, store = _run(capsys, text, tmp, data)
    assert rc == 2, err
    for f in fragment if isinstance(fragment, tuple) else (fragment,):
        assert f in err, (f, err)
    assert err.startswith("scaling-grid run: error: ") and len(err.splitlines()) <= 10
    assert dt < 1.0, f"validation took {dt:.2f}s"
    assert not store.exists() and not data.exists()  # nothing written: no store, no data prepared


def test_other_rejections(capsys, workdir):
    tmp, data = workdir
    (tmp / "afile").write_text("x")
    cases = [
        (["--store", str(tmp / "afile" / "store")], "is not writable"),   # unwritable store
        (["--store", str(tmp / "afile")], "is a file, not a directory"),
        (["--shard", "2/2"], "--shard='2/2'"),
        (["--shard", "x"], "--shard='x'"),
    ]
    spec = tmp / "spec.yaml"
    spec.write_text(GOOD.replace("DATA", str(data)))
    for extra, fragment in cases:
        args = ["run", str(spec), "--store", str(tmp / "store"), "--no-memory-check", *extra]
        rc = cli.main(args)
        err = capsys.readouterr().err
        assert rc == 2 and fragment in err, (extra, err)
    rc = cli.main(["run", str(tmp / "missing.yaml"), "--store", str(tmp / "store")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp / "store").exists()


def test_eval_set_larger_than_validation_split(capsys, workdir):
    """Needs the data (prepared once, outside the store); still rejected before the store is touched."""
    tmp, data = workdir
    rc, err, _, store = _run(capsys, GOOD.replace("eval_batches: 1", "eval_batches: 5000"), tmp, data)
    assert rc == 2 and "train.eval_batches" in err and "but 20000 were asked" in err
    assert not store.exists()


@pytest.mark.slow
def test_cell_too_big_for_memory(capsys, workdir):
    """Ahead-of-time compile of the largest cell against this machine's memory (no allocation)."""
    tmp, data = workdir
    big = GOOD.replace("width: [16, 32]", "width: [16, 8192]").replace("depth: [1, 2]", "depth: [1, 48]").replace(
        "seq_len: 16", "seq_len: 2048").replace("tokens: [2560, 5120]", "tokens: [1M]").replace(
        "batch_size: 4", "batch_size: 32")
    spec = tmp / "big.yaml"
    spec.write_text(big.replace("DATA", str(data)))
    rc = cli.main(["run", str(spec), "--store", str(tmp / "store"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "gpt2-w8192-d48" in err and "GiB per device" in err and "grad_accum" in err, err
    assert not (tmp / "store").exists()
