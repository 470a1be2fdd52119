"""`scaling-grid export`: every recorded point of a grid store (or of a `train` run folder) as one
tidy table, written as CSV or parquet."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError

from .damage import expected_of, missing_cells, missing_line
from .store import Store, StoreDamaged, lost, repair_hint

EXPORT_COLUMNS = ("variant", "cell", "m", "l", "N", "seed", "step", "tokens", "tau_lr", "lr", "peak_lr",
                  "train_loss", "eval_loss", "eval_stderr", "schedule", "role", "parent", "is_final",
                  "flops_per_token", "total_steps")
# parent: a wsd branch's trunk id (empty otherwise), so a bootstrap resamples a trunk with its branches.
_STR_COLUMNS = ("variant", "cell", "schedule", "role", "parent")
_INT_COLUMNS = ("m", "l", "N", "seed", "step", "flops_per_token", "total_steps")


def export_table(url: str) -> dict[str, np.ndarray]:
    """One tidy table of every recorded point of the store: columns EXPORT_COLUMNS, one row per step
    that has a train or eval record (NaN where a value is absent). ``is_final`` marks the last step of a
    done separate run or wsd branch (the points a final-loss fit uses). `url` may also be a `train`
    run folder: the same columns for its one run."""
    if T.is_run_folder(url):
        return _run_folder_table(url)
    store = Store(url)
    store.check_format()
    records, damage = store.records()
    data: dict[str, dict[str, np.ndarray] | None] = {}
    for rec in records:
        cfg, st = rec["config"], rec["status"]
        m, problems, fixable = store.checked_metrics(cfg["id"], int(cfg["total_steps"]), st.get("state", "pending"),
                                                     expected_of(cfg))
        problems = ([st["problem"]] if "problem" in st else []) + problems  # unknown state: is it final?
        damage += [f"cell {cfg['id']}: {p}" + ("" if fixable else f"; {lost(store, cfg['id'])}") for p in problems]
        data[cfg["id"]] = m
    damage += [f"cell {cid}: {missing_line(store, cid, key)}" for cid, key in missing_cells(store)]
    if damage:  # a fit must never silently lose a cell: stop and say what to do
        raise StoreDamaged(f"store {url!r} is damaged; no table written:\n  " + "\n  ".join(damage)
                           + f"\n{repair_hint(url)}")
    return _table([_export_rows(rec["config"], rec["status"].get("state"), data[rec["config"]["id"]])
                   for rec in records])


def _export_rows(cfg: Mapping[str, Any], state: str | None, m: dict[str, np.ndarray] | None
                 ) -> dict[str, np.ndarray] | None:
    """The export rows of one run: `cfg` is its config.json record, `m` its metric arrays."""
    if m is None:
        return None
    has = np.isfinite(m["tokens"]) | np.isfinite(m["eval_loss"]) | np.isfinite(m["loss"])
    steps = np.flatnonzero(has)
    if len(steps) == 0:
        return None
    n = len(steps)
    total = int(cfg["total_steps"])
    tau = m["tau"][steps].copy()
    tau[steps == 0] = 0.0
    final = (steps == total) & (state == "done") & (cfg["role"] in ("separate", "branch"))
    return {
        "variant": np.full(n, cfg["variant"], dtype=object), "cell": np.full(n, cfg["id"], dtype=object),
        "m": np.full(n, cfg["m"]), "l": np.full(n, cfg["l"]), "N": np.full(n, cfg["N"]),
        "seed": np.full(n, cfg["seed"]), "step": steps.astype(np.int64),
        "tokens": steps.astype(np.float64) * cfg["tokens_per_step"], "tau_lr": tau, "lr": m["lr"][steps],
        "peak_lr": np.full(n, float(cfg["peak_lr"])), "train_loss": m["loss"][steps],
        "eval_loss": m["eval_loss"][steps], "eval_stderr": m["eval_stderr"][steps],
        "schedule": np.full(n, cfg["schedule"], dtype=object), "role": np.full(n, cfg["role"], dtype=object),
        "parent": np.full(n, cfg.get("parent") or "", dtype=object), "is_final": final,
        "flops_per_token": np.full(n, cfg["flops_per_token"]),
        "total_steps": np.full(n, total),
    }


def _table(parts: Iterable[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    """Concatenate runs' rows into the columns of EXPORT_COLUMNS, with their dtypes (also when empty)."""
    kept = [p for p in parts if p is not None]
    out = {}
    for c in EXPORT_COLUMNS:
        if c in _STR_COLUMNS:
            dtype: Any = object
        elif c in _INT_COLUMNS:
            dtype = np.int64
        elif c == "is_final":
            dtype = bool
        else:
            dtype = np.float64
        out[c] = np.concatenate([p[c] for p in kept]).astype(dtype) if kept else np.zeros(0, dtype)
    return out


def _run_folder_table(url: str) -> dict[str, np.ndarray]:
    """The export of a `train` run folder: its one run, as a cell of a grid."""
    from . import spec as S
    cfg, st, m, problems, fixable = T.read_run_folder(url)
    if problems or cfg is None:
        raise StoreDamaged(f"run folder {url!r} is damaged; no table written:\n  " + "\n  ".join(problems)
                           + ("" if fixable else f"; {T.lost_run(url)}") + f"\n{repair_hint(url)}")
    name = T.run_name(url)
    cell = S.Cell(id=name, name=name, config=cfg, role="separate", variant=cfg.model.variant, m=cfg.model.width,
                  l=cfg.model.depth, seed=cfg.train.seed, tokens=cfg.train.tokens)
    # vocab: as the run recorded it (exact for a trained bpe); before its end, what the tokenizer gives
    record = S.derived(cell, st.get("vocab") or S.expected_vocab(cfg))
    return _table([_export_rows(record, st["state"], m)])



def write_table(table: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Any:
    """CSV (``.csv``) or parquet (``.parquet``); NaN is written as an empty CSV field. `path` may be a
    gs:// URL: the file is written locally, then copied there. Returns where it was written."""
    if T.is_remote(os.fspath(path)):
        import tempfile
        dest = T.path_of(path)
        with tempfile.TemporaryDirectory() as d:
            local = write_table(table, Path(d) / f"table{dest.suffix}")
            dest.write_bytes(local.read_bytes())
        return dest
    p = Path(T.local(path)) if T.is_url(os.fspath(path)) else Path(path)  # file:// is a local path
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        arrays = {c: pa.array(list(v) if v.dtype == object else v) for c, v in table.items()}
        pq.write_table(pa.table(arrays), p)
        return p
    if p.suffix != ".csv":
        raise ConfigError(f"--out={str(p)!r}: expected a .csv or .parquet file name")
    from scaling_grid.analysis.csvfile import write_csv  # here: the analysis face imports scipy and matplotlib
    return write_csv(table, p)
