"""What a launch knows of its cells before any of them runs: the spec loaded and its store checked,
this shard's share, each cell's derived record and cost, its lr-table length, the token stores, and
the compiled steps the whole launch shares."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError, SharedSteps, barrier, is_writer

from . import expand as E
from . import spec as S
from .options import Options
from .store import Store, check_writable

SHARED = SharedSteps()  # one compiled step per shape for the whole launch (trainer/compile.py)


def load_cells(spec_path: str, opts: Options, check_paths: bool = True) -> tuple[S.GridSpec, list[S.Cell]]:
    """The spec and its cells; the store (and checkpoint root) must be writable, before any compute."""
    spec = S.load_spec(spec_path)
    cells = E.expand(spec, check_paths=check_paths)
    check_writable(opts.store)
    if opts.checkpoints is not None:  # a bucket that cannot be reached fails here, before any compute
        check_writable(opts.checkpoints, "--checkpoints")
    return spec, cells


def mine(cells: Sequence[S.Cell], shard: tuple[int, int], cost: dict[str, float] | None = None) -> list[S.Cell]:
    """The cells of shard i of n."""
    i, n = shard
    where = S.shard_of(cells, n, cost)
    return [c for c in cells if where[c.id] == i]


def records(cells: Sequence[S.Cell], vocab: dict[Any, int]) -> dict[str, dict[str, Any]]:
    """Each cell's derived record (spec.derived) at its data's vocabulary (expected where not prepared)."""
    return {c.id: S.derived(c, vocab.get(c.config.data, S.expected_vocab(c.config))) for c in cells}


def record_cells(store: Store, spec: S.GridSpec, cells: Sequence[S.Cell], recs: dict[str, dict[str, Any]],
                 out: Callable[[str], None]) -> None:
    """The spec and every cell's resolved config into the store (a damaged config.json is rewritten)."""
    store.init(spec.text, spec.hash, spec.name)
    for c in cells:
        rec = dict(recs[c.id])
        rec["config"] = c.config.to_dict()
        rec["config"]["out_dir"] = f"{store.root}/cells/{c.id}"
        rec["spec"] = spec.hash
        if store.put_config(rec):
            out(f"{c.id}: its config.json was damaged; rewrote it from the spec")


def costs(records: dict[str, dict[str, Any]], cells: Sequence[S.Cell]) -> dict[str, float]:
    """Each cell's training FLOPs."""
    return {c.id: float(c.train_tokens) * records[c.id]["flops_per_token"] for c in cells}


def table_lengths(cells: Sequence[S.Cell], vocab: dict[Any, int] | None = None) -> dict[str, int]:
    """Per cell, the lr-table length of its shape: the longest run of that shape in the grid."""
    return T.table_lengths({c.id: c.config for c in cells},
                           {c.id: (vocab or {}).get(c.config.data, S.expected_vocab(c.config)) for c in cells})


def prepare_data(cells: Sequence[S.Cell]) -> dict[Any, Any]:
    """One token store per distinct data config (shared by every cell that uses it), then the checks
    that need the data: the validation split holds each cell's eval set, the train split a window."""
    if not is_writer():  # process 0 tokenizes; the others open what it wrote (on a shared data.root)
        barrier("token stores prepared")
    stores = {}
    for c in cells:
        d = c.config.data
        if d not in stores:
            stores[d] = T.prepare(d)
    if is_writer():
        barrier("token stores prepared")
    check_data(cells, stores)
    return stores


def check_data(cells: Sequence[S.Cell], stores: dict[Any, Any]) -> None:
    """Each cell's eval set and a train window fit its (prepared) token store."""
    for c in cells:
        st, t = stores.get(c.config.data), c.config.train
        if st is None:
            continue
        try:
            st.check_fits(t.eval_batches * t.batch_size, c.config.model.seq_len)
        except ConfigError as e:
            raise ConfigError(f"cell {c.name}: {e}") from None
