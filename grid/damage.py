"""What a grid store's records lost, judged on the whole record: the points a done cell records (its
schedule, from its config), the cells a stored spec lists whose folders are gone, and the step a
damaged cell must run again from. Reading and repairing are elsewhere (store, status, export, repair).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError

from . import expand as E
from . import spec as S
from .store import Store


def expected_of(record: Mapping[str, Any]) -> T.Expected | None:
    """The steps a cell records, from its config.json record (None for a record without its run config)."""
    try:
        train = record["config"]["train"]
        return T.expected_steps(int(record["total_steps"]), int(train["log_every"]), int(train["eval_every"]),
                                int(record.get("init_step") or 0))
    except (KeyError, TypeError, ValueError):
        return None


def expected_of_cell(cell: S.Cell) -> T.Expected:
    t = cell.config.train
    return T.expected_steps(cell.config.steps, t.log_every, t.eval_every, cell.init_step or 0)


def missing_cells(store: Store) -> list[tuple[str, str]]:
    """(cell id, spec key) of each cell a spec launched into the store lists (a launch records all of
    its cells' configs) that has no config.json: its folder was deleted, and its values with it. A spec
    none of whose cells has a folder is another version's (a new run-config field changes every id) or
    was never recorded; its cells count only where their checkpoints show that they trained."""
    have = set(store.cell_ids())
    trained: set[str] | None = None
    out: dict[str, str] = {}
    keys = store.kv.list(ts.KvStore.KeyRange(inclusive_min="specs/", exclusive_max="specs0")).result()
    for key in sorted(k.decode() for k in keys):
        text, _ = store.read_bytes(key)
        try:
            ids = [c.id for c in E.expand(S.parse_spec((text or b"").decode(), key), check_paths=False)]
        except (ConfigError, UnicodeDecodeError):  # a spec this version cannot read names no cells
            continue
        if not have.intersection(ids):
            trained = _checkpointed(store) if trained is None else trained
            ids = [i for i in ids if i in trained]
        out.update({i: key for i in ids if i not in have and i not in out})
    return sorted(out.items())


def _checkpointed(store: Store) -> set[str]:
    """The cells with a checkpoint folder in the store (one listing of <store>/checkpoints)."""
    try:
        return {p.name for p in (T.path_of(store.url) / "checkpoints").iterdir()}
    except OSError:  # no checkpoints there (or under --checkpoints elsewhere)
        return set()


def missing_line(store: Store, cid: str, key: str) -> str:
    return f"its folder {store.root}/cells/{cid}/ is missing ({store.root}/{key} lists it)"


def rerun_from(m: dict[str, np.ndarray] | None, expected: T.Expected) -> int | None:
    """The first step whose checkpoint must not be resumed from, to recompute every lost point: a lost
    train point at step t needs the state before t; a lost eval at step e, the state at e (a resume at
    an eval step evaluates it). 0: from scratch. None: nothing lost."""
    if m is None:
        return 0
    cuts = [s if f in T.TRAIN_FIELDS else s + 1 for f, s, _ in T.lost_points(m, expected)]
    gap = T.first_lost_step(m)
    return min(cuts + ([gap] if gap is not None else []), default=None)
