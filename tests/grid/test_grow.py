"""Growing a grid (issue 23): a spec grown by larger budgets (and new widths and depths) keeps every
cell's id; in wsd mode the trunk is extended from its last checkpoint, not retrained, and the result is
the trunk trained to the larger length directly; a grown spec's new cells are pre-registered from the
finished cells' fit and scored by `report` once they train."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_spec

from scaling_grid.analysis.design import DEFAULT_PRIOR
from scaling_grid.grid.expand import expand
from scaling_grid.grid.grow import grow_spec, latest_spec, missing_ids, register_cells
from scaling_grid.grid.spec import parse_spec
from scaling_grid.trainer import ConfigError

ROOT = Path(__file__).resolve().parents[2]
WSD = {"width": [16, 32], "depth": [1], "tokens": [5120, 7680, 10240]}   # branches from steps 64, 96, 128


def _wsd(name="g", root="DATA", warmup=None, **kw):
    return tiny_spec(name, WSD, tokens_mode="wsd", root=root, optim={"decay_fraction": 0.2, "warmup_steps": warmup},
                     eval_every=16, ckpt_every=32, keep=None, **kw)


def _cells(text):
    return {c.id: c for c in expand(parse_spec(text), check_paths=False)}


def test_a_wsd_grid_grows_by_a_larger_budget_with_every_id_kept_and_its_trunk_extended():
    old = _wsd()
    new = grow_spec(old, add_tokens=["20.48k"])
    assert "grown_from:" in new and "  - [5.12k, 7.68k, 10.24k]" in new
    assert "tokens: [5120, 7680, 10240, 20.48k]" in new and new.startswith(old.split("axes:")[0])
    a, b = _cells(old), _cells(new)
    assert set(a) < set(b) and missing_ids(old, new) == []
    added = [b[i] for i in b if i not in a]
    assert sorted(c.role for c in added) == ["branch", "branch", "trunk", "trunk"]      # per width: one of each
    for ext in (c for c in added if c.role == "trunk"):
        trunk = a[ext.parent]
        assert trunk.role == "trunk" and trunk.parent is None and ext.init_step == trunk.steps == 128
        assert ext.steps == 256 and ext.train_steps == 128 and ext.keep_steps == (256,) and ext.group == trunk.id
        assert ext.name == trunk.name + "2"
        assert ext.config.optim.schedule == "constant" and ext.config.optim.warmup_steps == trunk.config.optim.warmup_steps
        (branch,) = [c for c in added if c.parent == ext.id]
        assert branch.init_step == 256 and branch.steps == 320 and branch.group == trunk.id
    # grown again, by a budget and a width: every cell of both earlier versions keeps its id
    third = grow_spec(new, add_tokens=[40960], add_widths=[24])
    assert third.count("  - [") == 2 and missing_ids(new, third) == [] and "width: [16, 32, 24]" in third
    c = _cells(third)
    w24 = [x for x in c.values() if x.m == 24]
    assert sorted((x.role, x.init_step or 0) for x in w24) == [           # a new shape grows in the same stages
        ("branch", 64), ("branch", 96), ("branch", 128), ("branch", 256), ("branch", 512),
        ("trunk", 0), ("trunk", 128), ("trunk", 256)]


def test_grow_keeps_comments_and_block_lists_and_refuses_what_would_retrain():
    text = _wsd().replace("  tokens: [5120, 7680, 10240]", "  tokens:      # budgets\n    - 5120\n    - 7680\n"
                          "    - 10240\ncells:\n  - {width: 16, depth: 1, tokens: 5120, seed: 1}\n"
                          "  - {width: 16, depth: 1, tokens: 7680, seed: 1}")
    new = grow_spec(text, add_tokens=[20480])
    assert "    - 10240\n    - 20.48k\n" in new and "# budgets" in new and missing_ids(text, new) == []
    assert new.index("grown_from:") < new.index("cells:")
    with pytest.raises(ConfigError, match="larger than its largest"):
        grow_spec(_wsd(), add_tokens=[6400])
    with pytest.raises(ConfigError, match="given twice"):
        grow_spec(_wsd(), add_widths=[16])
    with pytest.raises(ConfigError, match="no such axis"):
        grow_spec(tiny_spec("s", {"width": [16], "tokens": [5120]}, model={"depth": 1}), add_depths=[2])


def test_grown_from_is_checked():
    with pytest.raises(ConfigError, match="only a wsd grid"):
        parse_spec(tiny_spec("s", WSD) + "grown_from:\n  - [5120, 10240]\n")
    with pytest.raises(ConfigError, match=r"grown_from\[0\]\[1\]"):
        parse_spec(_wsd() + "grown_from:\n  - [5120, -3]\n")
    # a budget listed as earlier but inside the earlier trunk's span cannot be added later
    with pytest.raises(ConfigError, match="within the earlier trunk"):
        expand(parse_spec(_wsd() + "grown_from:\n  - [5120, 10240]\n"), check_paths=False)


def test_a_separate_grid_grows_by_axis_values_alone():
    old = tiny_spec("s", WSD)
    new = grow_spec(old, add_tokens=[20480], add_widths=[24], add_depths=[2])
    assert "grown_from" not in new and missing_ids(old, new) == []
    assert len(_cells(new)) == 3 * 2 * 4


def test_the_demo_spec_grows_with_every_id_kept():
    old = (ROOT / "configs" / "demo.yaml").read_text()
    new = grow_spec(old, add_tokens=["4096k"])
    a, b = _cells(old), _cells(new)
    assert set(a) < set(b) and len(b) - len(a) == 9 * 2  # the factorial's 9 trunks: an extension and a branch each
    assert "# seed noise" in new and "# The demo grid" in new


def test_the_grow_command_writes_the_grown_spec_and_says_why_it_cannot(tmp_path, capsys):
    from scaling_grid.grid.cli import main
    (tmp_path / "s.yaml").write_text(_wsd())
    assert main(["grow", str(tmp_path / "s.yaml"), "--tokens", "20480", "--widths", "24", "--out",
                 str(tmp_path / "g.yaml")]) == 0
    assert (tmp_path / "g.yaml").read_text() == grow_spec(_wsd(), add_tokens=[20480], add_widths=[24])
    assert "keeps its id" in capsys.readouterr().out
    assert main(["grow", str(tmp_path / "s.yaml"), "--tokens", "6400", "--out", str(tmp_path / "h.yaml")]) == 2
    assert "larger than its largest (10.24k)" in capsys.readouterr().err and not (tmp_path / "h.yaml").exists()
    assert main(["grow", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "h.yaml")]) == 2
    assert "nothing to add" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- slow: trained

def _run(spec, store, *extra):
    p = subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store", str(store),
                        "--no-progress", "--no-memory-check", *extra], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def _state(path):
    """The leaves of a checkpoint's train state (params, optimizer moments, step), as numpy arrays."""
    import jax
    import orbax.checkpoint as ocp
    return [np.asarray(x) for x in jax.tree.leaves(ocp.StandardCheckpointer().restore(path / "state"))]


def _metrics(store):
    from scaling_grid.grid.store import Store
    s = Store(str(store))
    recs = {r["config"]["id"]: r for r in s.records()[0]}
    return recs, {cid: s.read_metrics(cid) for cid in recs}


@pytest.mark.slow
def test_an_extended_trunk_is_the_trunk_trained_to_its_length_directly_and_its_new_budgets_are_preregistered(
        tmp_path, capsys):
    from scaling_grid.grid.cli import main
    fixed = {"warmup": {"rule": "fixed"}}  # the direct run below has the grown run's warmup
    old = _wsd(root=str(tmp_path / "data"), rules=fixed, warmup=8)
    old = old.replace("depth: [1]", "depth: [1, 2]")
    (tmp_path / "old.yaml").write_text(old)
    store = tmp_path / "store"
    _run(tmp_path / "old.yaml", store)
    assert latest_spec(str(store)) == old
    # `design --from` proposes the larger budget (not the smaller one: its cooldown would start inside
    # the trunk), writes the grown spec and records its new cells, not trained
    # (the prior: a published fit's JSON; this tiny grid's own fit puts c_l at 0, where (m/l)* is undefined)
    prior = {"variants": {"llama": {"params": {k: {"value": v} for k, v in DEFAULT_PRIOR.items() if "alpha" not in k},
                                    "fit": {"rms_rel_error": 0.01}}}}
    (tmp_path / "prior.json").write_text(json.dumps(prior))
    assert main(["design", "--from", str(store), "--budget", "1e12", "--tokens", "6400,20480", "--simulate", "0",
                 "--prior", str(tmp_path / "prior.json"), "--out", str(tmp_path / "grown.yaml")]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")
    assert "16 of 16 cells done" in out and "grow by: tokens 20.48k (8 new cells" in out, out
    assert "cannot add tokens 6400" in out and "8 cell(s) recorded" in out, out
    grown = (tmp_path / "grown.yaml").read_text()
    assert grown == grow_spec(old, add_tokens=[20480])
    assert latest_spec(str(store)) == grown               # what the next `design --from STORE` grows
    law = ["--law", "E + A/tau^0.5 + B/m + C/l", "--boot", "50"]
    assert main(["report", str(store), *law, "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")
    assert "predicted the final loss of 4 unfinished cell(s)" in out and "kept in the store" in out
    (rec_path,) = (store / "predictions").iterdir()
    rec = json.loads(rec_path.read_text())
    assert all(p["tokens"] == 20480 for p in rec["predictions"])

    # the grown spec runs: the old cells are skipped, the trunks extended from step 128 (not retrained)
    log = _run(tmp_path / "grown.yaml", store)
    assert "grid 'g': 24 cells; 16 done, 0 diverged/final, 8 to run" in log
    recs, m = _metrics(store)
    exts = [r for r in recs.values() if r["config"]["role"] == "trunk" and r["config"]["parent"]]
    assert len(exts) == 4
    for r in exts:
        assert r["config"]["init_step"] == 128 and r["status"]["trained_steps"] == 128
        assert np.all(np.isnan(m[r["config"]["id"]]["loss"][:129])) and np.isfinite(m[r["config"]["id"]]["loss"][256])

    # ... and gives what the trunk trained to the larger budget directly gives
    direct = old.replace("tokens: [5120, 7680, 10240]", "tokens: [5120, 7680, 10240, 20480]")
    (tmp_path / "direct.yaml").write_text(direct)
    _run(tmp_path / "direct.yaml", tmp_path / "direct")
    drecs, dm = _metrics(tmp_path / "direct")
    key = {"trunk": lambda c: (c["m"], c["l"], 0), "branch": lambda c: (c["m"], c["l"], c["tokens"])}
    mine = {key[r["config"]["role"]](r["config"]): r["config"]["id"] for r in recs.values()
            if r["config"]["role"] == "branch" and r["config"]["tokens"] == 20480} | {
        key["trunk"](r["config"]): r["config"]["id"] for r in exts}
    theirs = {key[r["config"]["role"]](r["config"]): r["config"]["id"] for r in drecs.values()
              if r["config"]["role"] == "trunk" or r["config"]["tokens"] == 20480}
    assert sorted(mine) == sorted(theirs)
    for k, cid in mine.items():
        a, b = m[cid], dm[theirs[k]]
        for f in ("loss", "grad_norm", "eval_loss", "tau", "lr"):
            ok = np.isfinite(a[f]) & np.isfinite(b[f])
            ok[:129] = False
            assert ok.sum() >= 4, (k, f)
            np.testing.assert_allclose(a[f][ok], b[f][ok], rtol=1e-5, err_msg=f"{k} {f}")
        # and the same parameters and optimizer state at its last step (bit for bit on CPU; tolerance kept)
        step = str(256 if k[2] == 0 else 320)
        x, y = _state(store / "checkpoints" / cid / step), _state(tmp_path / "direct" / "checkpoints" / theirs[k] / step)
        assert len(x) == len(y) > 10
        for u, v in zip(x, y):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7, err_msg=str(k))

    # the report scores the pre-registered predictions of the new budget
    assert main(["report", str(store), *law, "--out", str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")
    assert f"predictions made {rec['made']} ({rec['key']}): 4 of 4 cells finished since" in out


@pytest.mark.slow  # no process, no training, but 8 s of token store and record writes on a busy 2-core machine
def test_register_records_a_growth_of_the_store_spec_and_refuses_another_spec(tmp_path):
    old = _wsd(root=str(tmp_path / "data"))
    store = str(tmp_path / "store")
    (tmp_path / "old.yaml").write_text(old)
    assert len(register_cells(str(tmp_path / "old.yaml"), store)) == 8     # recorded, nothing trained
    grown = grow_spec(old, add_tokens=[20480])
    (tmp_path / "grown.yaml").write_text(grown)
    assert len(register_cells(str(tmp_path / "grown.yaml"), store)) == 12
    assert latest_spec(store) == grown
    (tmp_path / "other.yaml").write_text(old.replace("width: [16, 32]", "width: [16, 24]"))
    with pytest.raises(ConfigError, match="holds 8 cell.*not a growth of the spec the store ran"):
        register_cells(str(tmp_path / "other.yaml"), store)
