"""Grid specs expand to stable cell ids; wsd trunks and branches line up; shards are deterministic.
No training here: expansion is pure."""
import numpy as np
import pytest
from tiny import tiny_spec

from scaling_grid.grid import expand as E
from scaling_grid.grid import spec as S
from scaling_grid.trainer.config import ConfigError

AXES = {"width": [16, 32], "depth": [1, 2], "tokens": [2560, 5120]}
SEED_1 = {"width": 32, "depth": 2, "tokens": 5120, "seed": 1}


def unit_spec(axes: dict | None = None, **kw) -> str:
    """2 widths x 2 depths x 2 budgets and a second seed of the largest cell; `axes` and `kw` change it."""
    kw = {"root": None, "eval_every": 16, "keep": None, "cells": [SEED_1], **kw}
    return tiny_spec("unit", {**AXES, **(axes or {})}, **kw)


SPEC = unit_spec()

# The ids this spec must always give. If a deliberate change to the hashed config (a new trainer
# field, a changed default) moves them, old stores will not find their cells again: say so in the
# change's notes, then update this list.
EXPECTED_IDS = [
    "gpt2-w16-d1-t2.56k-s0-84c2b4",
    "gpt2-w16-d1-t5.12k-s0-ddca0b",
    "gpt2-w16-d2-t2.56k-s0-f494f0",
    "gpt2-w16-d2-t5.12k-s0-93e954",
    "gpt2-w32-d1-t2.56k-s0-dc2079",
    "gpt2-w32-d1-t5.12k-s0-06121f",
    "gpt2-w32-d2-t2.56k-s0-47dd57",
    "gpt2-w32-d2-t5.12k-s0-c2dfe4",
    "gpt2-w32-d2-t5.12k-s1-907dd6",
]


def _cells(text=SPEC):
    return E.expand(S.parse_spec(text), check_paths=False)


def test_expected_stable_ids():
    cells = _cells()
    assert [c.id for c in cells] == EXPECTED_IDS
    assert [c.id for c in _cells()] == EXPECTED_IDS  # same spec, same ids
    c = cells[0]
    assert (c.m, c.l, c.config.model.heads, c.steps, c.config.optim.warmup_steps) == (16, 1, 2, 40, 4)
    assert cells[-1].config.train.seed == cells[-1].config.train.data_seed == 1


def test_config_change_makes_new_ids_and_bookkeeping_does_not():
    base = {c.id for c in _cells()}
    wd = _cells(unit_spec(optim={"weight_decay": 0.05}))
    assert not base & {c.id for c in wd}  # every cell's curve changes: every id is new
    names = [c.name for c in wd]
    assert names == [i.rsplit("-", 1)[0] for i in EXPECTED_IDS]  # readable names stay
    ck = _cells(unit_spec(ckpt_every=32, keep=5))
    assert [c.id for c in ck] == EXPECTED_IDS  # checkpoint cadence does not change a curve
    more = _cells(unit_spec({"width": [16, 32, 48]}))
    assert base < {c.id for c in more} and len(more) == len(base) + 4
    # key order and formatting in the YAML do not matter
    reordered = unit_spec({"tokens": [5120, 2560]})
    assert sorted(c.id for c in _cells(reordered)) == sorted(EXPECTED_IDS)


def test_rules():
    cells = _cells(unit_spec(rules={"lr": {"rule": "width_scaled", "base_width": 16},
                                    "batch_size": {"rule": "by_tokens", "table": {2560: 4, 5120: 8}}}))
    by = {(c.m, c.l, c.tokens, c.seed): c for c in cells}
    assert by[(16, 1, 2560, 0)].config.optim.lr == pytest.approx(3e-3)
    assert by[(32, 1, 2560, 0)].config.optim.lr == pytest.approx(1.5e-3)
    assert by[(32, 1, 5120, 0)].config.train.batch_size == 8
    assert by[(32, 1, 5120, 0)].steps == 40


WSD = unit_spec({"tokens": [2560, 5120, 10240]}, tokens_mode="wsd",
                cells=[SEED_1, {"width": 32, "depth": 2, "tokens": 10240, "seed": 1}])


def test_wsd_trunks_and_branches():
    from scaling_grid.trainer.step import lr_table
    cells = _cells(WSD)
    trunks = [c for c in cells if c.role == "trunk"]
    assert len(trunks) == 5 and len(cells) == 5 + 4 * 3 + 2
    for t in trunks:
        branches = [c for c in cells if c.parent == t.id]
        assert cells.index(t) < min(cells.index(b) for b in branches)  # a trunk runs before its branches
        assert t.config.optim.schedule == "constant" and set(t.keep_steps) == {b.init_step for b in branches}
        assert t.steps == max(b.init_step for b in branches)
        t_lr = lr_table(t.config.optim, t.steps)
        for b in branches:
            k = b.config.train.steps_per_call
            assert b.config.optim.schedule == "wsd" and b.init_step % k == 0 and b.group == t.group
            decay = b.steps - b.init_step
            assert decay == max(1, round(b.config.optim.decay_fraction * b.steps))
            assert abs(decay - 0.2 * b.steps) < k  # decay_fraction honoured up to one chunk
            assert b.config.optim.warmup_steps == t.config.optim.warmup_steps == round(0.1 * 160)
            b_lr = lr_table(b.config.optim, b.steps)
            # the branch's lr (and so tau) equals the trunk's up to the branch point, then decays to 0
            np.testing.assert_array_equal(b_lr[:b.init_step], t_lr[:b.init_step])
            peak = b.config.optim.lr
            np.testing.assert_allclose(b_lr[b.init_step:], peak * (1 - np.arange(decay) / decay), rtol=1e-6)


def test_shards_are_deterministic_balanced_and_keep_groups_together():
    cells = _cells(WSD)
    for n in (1, 2, 3, 7):
        a, b = S.shard_of(cells, n), S.shard_of(list(reversed(cells)), n)
        assert a == b and set(a.values()) <= set(range(n))
        for c in cells:
            assert a[c.id] == a[c.group]
    sep = _cells()
    two = S.shard_of(sep, 2)
    assert sorted(two.values()).count(0) in (4, 5)


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"])
def test_bad_shard(bad):
    with pytest.raises(ConfigError, match="--shard"):
        S.parse_shard(bad)
    assert S.parse_shard("1/3") == (1, 3)
