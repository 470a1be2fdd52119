"""Bad input fails before any compute, naming the field, the value and what is allowed."""
import random
import subprocess
import sys

import pytest

from scaling_grid.trainer import config as C
from scaling_grid.trainer import configfile


def _load(tmp_path, *overrides):
    return configfile.load(None, [f"out_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}", *overrides])


def test_defaults_are_valid(tmp_path):
    cfg = _load(tmp_path)
    assert cfg.model.variant == "gpt2" and cfg.steps >= 1


def test_overrides_and_counts(tmp_path):
    cfg = _load(tmp_path, "model.width=256", "model.heads=4", "train.tokens=1.5M", "optim.lr=1e-3")
    assert (cfg.model.width, cfg.model.heads, cfg.train.tokens, cfg.optim.lr) == (256, 4, 1_500_000, 1e-3)
    assert C.parse_count("20M") == 20_000_000 and C.parse_count("1.5B") == 1_500_000_000
    assert C.format_count(20_000_000) == "20M" and C.format_count(1_500_000) == "1.5M"


@pytest.mark.parametrize("overrides,needles", [
    (["model.variant=gpt5"], ["model.variant", "gpt5", "gpt2", "llama"]),
    (["model.width=100", "model.heads=3"], ["model.width", "100", "divisible", "heads=3"]),
    (["model.width=0"], ["model.width", "positive"]),
    (["model.depth=-2"], ["model.depth", "-2", "positive"]),
    (["model.seq_len=0"], ["model.seq_len", "positive"]),
    (["model.unroll=-1"], ["model.unroll", "-1", "0 = auto"]),
    (["train.tokens=100"], ["train.tokens", "100", "below one batch"]),
    (["train.tokens=lots"], ["train.tokens", "lots", "20M"]),
    (["train.batch_size=0"], ["train.batch_size", "positive"]),
    (["train.batch_size=16", "train.grad_accum=3"], ["train.grad_accum", "divide"]),
    (["train.steps_per_call=4", "train.log_every=10"], ["train.log_every", "multiple", "steps_per_call=4"]),
    (["train.dtype=fp8"], ["train.dtype", "fp8", "bfloat16"]),
    (["data.tokenizer=sentencepiece"], ["data.tokenizer", "sentencepiece", "gpt2", "bytes"]),
    (["data.source=wikipedia"], ["data.source", "wikipedia", "fineweb", "parquet"]),
    (["data.source=parquet"], ["data.paths", "at least one"]),
    (["data.source=parquet", "data.paths=[/nonexistent/*.parquet]"], ["data.paths", "/nonexistent/*.parquet", "matches no file"]),
    (["data.val_fraction=1.5"], ["data.val_fraction", "1.5"]),
    (["optim.schedule=linear"], ["optim.schedule", "linear", "cosine", "wsd"]),
    (["optim.lr=-1"], ["optim.lr", "-1", "positive"]),
    (["optim.decay_fraction=0"], ["optim.decay_fraction", "(0, 1]"]),
    (["optim.warmup_steps=100000"], ["optim.warmup_steps", "exceeds"]),
    (["model.widht=128"], ["model.widht", "unknown", "width"]),
    (["trainer.lr=1"], ["unknown", "trainer"]),
    (["model.width=wide"], ["model.width", "wide", "integer"]),
    (["model.qk_norm=maybe"], ["model.qk_norm", "maybe", "true or false"]),
    (["no_equals_sign"], ["no_equals_sign", "key=value"]),
    (["data.documents="], ["data.documents=''", "blank_lines", "delimiter", "not empty"]),
    (["data.documents=lines"], ["data.documents='lines'", "source='text' only", "shakespeare"]),
    (["data.text_key="], ["data.text_key=''", "non-empty"]),
    (["data.source=text", "data.paths=[a.txt]", "data.text_key=body"], ["data.text_key='body'", "jsonl", "parquet"]),
    (["data.source=jsonl"], ["data.paths", "at least one"]),
    (["data.source=jsonl", "data.paths=[/nonexistent/*.jsonl]"],
     ["data.paths", "/nonexistent/*.jsonl", "matches no file"]),
])
def test_bad_fields_are_named(tmp_path, overrides, needles):
    with pytest.raises(C.ConfigError) as e:
        _load(tmp_path, *overrides)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_unwritable_out_dir(tmp_path):
    # /proc refuses new files even to root, whose permission bits are never checked.
    with pytest.raises(C.ConfigError, match="out_dir.*not writable"):
        configfile.load(None, ["out_dir=/proc/scaling-grid-run", f"data.root={tmp_path / 'data'}"])
    with pytest.raises(C.ConfigError, match="data.root.*not writable"):
        configfile.load(None, [f"out_dir={tmp_path / 'run'}", "data.root=/proc/scaling-grid-data"])


def test_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(C.ConfigError, match="out_dir.*not writable"):
        configfile.load(None, [f"out_dir={f / 'run'}", f"data.root={tmp_path / 'data'}"])


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        configfile.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        configfile.load(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model: 3\n")
    with pytest.raises(C.ConfigError, match="model: expected a mapping"):
        configfile.load(nested)


def test_cli_reports_bad_input_without_compute(tmp_path):
    """The CLI exits 2 with the message, and creates nothing."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "train", f"out_dir={out}",
                           f"data.root={tmp_path / 'data'}", "model.width=100", "model.heads=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "model.width=100" in proc.stderr and "divisible" in proc.stderr
    assert not out.exists() and not (tmp_path / "data").exists()


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"

# (case, config file bytes with TMP for the test's folder (None: no file), overrides, message fragments)
BAD_RUN_CONFIGS = [
    ("top-level list", b"- model: {width: 64}\n- train: {tokens: 1M}\n", [], ["cfg.yaml", "expected a mapping", "list"]),
    ("top-level scalar", b"width 64\n", [], ["cfg.yaml", "expected a mapping", "str"]),
    ("latin-1 file", "model: {variant: gpt2}  # caf\xe9\n".encode("latin-1"), [],
     ["cfg.yaml", "not UTF-8 text", "byte 29"]),
    ("png file", PNG, [], ["cfg.yaml", "not UTF-8 text", "byte 0"]),
    ("random bytes", bytes(random.Random(0).randrange(256) for _ in range(512)), [], ["cfg.yaml", "not UTF-8 text"]),
    ("data.root under a file", b"data: {root: TMP/afile/data}\nout_dir: TMP/run\n", [],
     ["data.root=", "afile/data", "is a file, not a folder"]),
    ("empty out_dir in the file", b"out_dir: ''\ndata: {root: TMP/data}\n", [], ["out_dir='': must be a folder path"]),
    ("empty out_dir override", b"data: {root: TMP/data}\n", ["out_dir="], ["out_dir='': must be a folder path"]),
]


@pytest.mark.parametrize("command", ["train", "prepare"])
@pytest.mark.parametrize("case,content,overrides,needles", BAD_RUN_CONFIGS, ids=[c[0] for c in BAD_RUN_CONFIGS])
def test_cli_rejects_bad_run_config_files(tmp_path, monkeypatch, capsys, command, case, content, overrides, needles):
    """`scaling-grid train/prepare CONFIG` exits 2 with a message naming the problem: no traceback,
    and nothing written (run in tmp_path, so default out_dir and data.root would land there)."""
    from scaling_grid.grid import cli
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content.replace(b"TMP", str(tmp_path).encode()))
    rc = cli.main([command, str(cfg), *overrides])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"scaling-grid {command}: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cfg.yaml"]  # no run folder, no store


# ---------------------------------------------------------------- new fields keep ids; discovering fields

def test_new_data_fields_keep_to_dict_and_ids_at_their_defaults(tmp_path):
    """Cell ids and run fingerprints hash to_dict(): data.documents and data.text_key appear in it
    only when set, so every existing config gives the dict (and the ids) it gave before they existed."""
    d = C.RunConfig().to_dict()
    assert "documents" not in d["data"] and "text_key" not in d["data"]
    assert C.from_dict(d) == C.RunConfig()
    cfg = _load(tmp_path, "data.source=text", f"data.paths=[{__file__}]", "data.documents=<|endoftext|>")
    assert cfg.to_dict()["data"]["documents"] == "<|endoftext|>" and "text_key" not in cfg.to_dict()["data"]
    assert C.from_dict(cfg.to_dict()) == cfg


def _fields_in(text: str) -> dict[str, str]:
    """'section.field' (or 'out_dir') -> its comment, from `scaling-grid config`'s YAML."""
    out, section, last = {}, "", ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("# "):
            continue
        if line.strip().startswith("#"):  # a wrapped comment continues the last field's
            out[last] += " " + line.strip().removeprefix("# ")
            continue
        key, _, rest = line.partition(":")
        if not line.startswith(" "):
            section = key if not rest.strip() else ""
            if not rest.strip():
                continue
        last = f"{section}.{key.strip()}" if section else key
        out[last] = rest.partition(" # ")[2].strip() if " # " in rest else ""
    return out


def test_config_command_lists_every_field_with_default_and_meaning(capsys):
    import dataclasses

    import yaml

    from scaling_grid.grid import cli
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    listed = _fields_in(out)
    expected = {f"{s}.{f.name}" for s, cls in C.SECTIONS.items() for f in dataclasses.fields(cls)} | {"out_dir"}
    assert set(listed) == expected
    assert all(len(meaning) > 5 for meaning in listed.values()), listed
    assert "m = d_model" in listed["model.width"] and "gpt2, llama" in listed["model.variant"]
    defaults = dataclasses.asdict(C.RunConfig())
    defaults["data"]["paths"] = []
    assert yaml.safe_load(out) == defaults  # the listing is the default config, as YAML


def test_config_command_prints_the_resolved_config(tmp_path, capsys):
    import yaml

    from scaling_grid.grid import cli
    (tmp_path / "input.txt").write_text("one\n\ntwo\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{width: 64}}\ndata: {{source: text, paths: [{tmp_path / 'input.txt'}]}}\n"
                   f"out_dir: {tmp_path / 'run'}\n")
    assert cli.main(["config", str(cfg), "train.tokens=3M", "data.documents=<|endoftext|>", "optim.eps=1e-6",
                     f"data.root={tmp_path / 'data'}"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["model"]["width"] == 64 and resolved["model"]["depth"] == 4
    assert resolved["train"]["tokens"] == 3_000_000 and resolved["optim"]["eps"] == 1e-6
    assert resolved["data"]["documents"] == "<|endoftext|>"
    assert resolved["data"]["paths"] == [str(tmp_path / "input.txt")]
    assert C.from_dict(resolved) == configfile.load(cfg, ["train.tokens=3M", "data.documents=<|endoftext|>", "optim.eps=1e-6",
                                                 f"data.root={tmp_path / 'data'}"])
    listed = _fields_in(out)
    assert "(default: 128)" in listed["model.width"] and "default" not in listed["model.depth"]
    assert "(default: file)" in listed["data.documents"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "run.yaml"]  # nothing written
    # A bad field fails as train would: exit 2, the field named.
    assert cli.main(["config", "data.documents="]) == 2
    assert "data.documents=''" in capsys.readouterr().err


def test_version_and_train_help(capsys):
    from importlib.metadata import version

    from scaling_grid.grid import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"scaling-grid {version('scaling-grid')}\n"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "see `scaling-grid config` for every field" in " ".join(capsys.readouterr().out.split())
