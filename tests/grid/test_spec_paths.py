"""Relative paths in a grid spec (data.paths, data.root) resolve against the spec file's folder, not
the current directory; the flags' (--store, with '..') against the current directory; cell ids do not
depend on either; `run --dry-run` prints every path resolved."""
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_spec

from scaling_grid.grid import cli
from scaling_grid.grid import expand as E
from scaling_grid.grid import spec as S

AXES = {"width": [16], "depth": [1], "tokens": [1024]}
DATA = "{source: text, paths: [corpus/*.txt], documents: lines, tokenizer: bytes, root: tokens}"


def _spec_in(folder: Path) -> Path:
    """A one-cell spec in `folder` whose corpus (corpus/*.txt) and token stores (tokens/) are written
    relative to it; the corpus is there."""
    (folder / "corpus").mkdir(parents=True)
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i * i}" for i in range(600)]
    (folder / "corpus" / "a.txt").write_text("\n".join(lines) + "\n")
    spec = folder / "t.yaml"
    spec.write_text(tiny_spec("t", AXES, root="tokens").replace(
        "{source: shakespeare, tokenizer: bytes, root: tokens}", DATA))
    assert "paths: [corpus/*.txt]" in spec.read_text()
    return spec


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """(the spec, in tmp/specs/; the current directory, tmp/work/, which holds neither corpus nor tokens)."""
    spec = _spec_in(tmp_path / "specs")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return spec


def test_spec_paths_resolve_against_its_folder_and_ids_do_not_move(elsewhere, tmp_path):
    spec = elsewhere
    cells = E.expand(S.load_spec("../specs/t.yaml"))  # checks data.paths: the corpus is found from here
    d = cells[0].config.data
    assert d.paths == (str(tmp_path / "specs" / "corpus" / "*.txt"),)
    assert d.root == str(tmp_path / "specs" / "tokens")
    # The ids hash the paths as written: the same from any folder, for a copy of the spec elsewhere,
    # and for the text alone.
    moved = _spec_in(tmp_path / "other" / "deeper")
    ids = [c.id for c in cells]
    assert [c.id for c in E.expand(S.load_spec(moved))] == ids
    assert [c.id for c in E.expand(S.parse_spec(spec.read_text()), check_paths=False)] == ids
    # Absolute paths, ~ and URLs are kept as written.
    text = spec.read_text().replace("paths: [corpus/*.txt]", f"paths: [{tmp_path}/specs/corpus/a.txt, ~/x.txt]")
    text = text.replace("root: tokens", "root: gs://bucket/tokens")
    (tmp_path / "specs" / "abs.yaml").write_text(text)
    d = E.expand(S.load_spec("../specs/abs.yaml"), check_paths=False)[0].config.data
    assert d.paths == (f"{tmp_path}/specs/corpus/a.txt", "~/x.txt") and d.root == "gs://bucket/tokens"


def test_dry_run_prints_the_resolved_paths(elsewhere, tmp_path, capsys):
    rc = cli.main(["run", "../specs/t.yaml", "--store", "../stores/kjv", "--dry-run", "--no-measure",
                   "--no-memory-check"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert f"store:       {tmp_path}/stores/kjv" in lines
    assert f"checkpoints: {tmp_path}/stores/kjv/checkpoints" in lines
    assert f"data.root:   {tmp_path}/specs/tokens" in lines
    assert f"data.paths:  {tmp_path}/specs/corpus/*.txt" in lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs", "work"]  # a dry run writes nothing


@pytest.mark.slow
def test_run_from_another_folder_with_a_relative_store_above_it(elsewhere, tmp_path):
    """`run ../specs/t.yaml --store ../stores/kjv` from tmp/work: the corpus and token stores are the
    spec's, the store is tmp/stores/kjv, and nothing is written into the current directory."""
    env_cli = [sys.executable, "-m", "scaling_grid.grid.cli"]
    p = subprocess.run([*env_cli, "run", "../specs/t.yaml", "--store", "../stores/kjv", "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert list((tmp_path / "specs" / "tokens").glob("text-bytes-*/meta.json"))
    st = subprocess.run([*env_cli, "status", "../stores/kjv"], capture_output=True, text=True, timeout=300)
    assert st.returncode == 0 and "1 cell: 1 done" in st.stdout, st.stdout + st.stderr
    assert list(Path().iterdir()) == []
