"""Tables of points in, the valid points of a fit out.

A *table* is a dict of equal-length 1-D numpy arrays (columns). It comes from a store export (the CLI
builds it) or from a CSV/parquet file (:func:`load_table`, with a column mapping). Columns:

==================  ===========================================================================
column              meaning (who needs it)
==================  ===========================================================================
variant             architecture variant (str). Absent: one variant, ``all``. Fits are per variant.
cell                grid cell id (str). Used for exclusions and, with seed, as the bootstrap unit.
run                 optional explicit bootstrap unit (str): points of one run are resampled
                    together. Default: (variant, cell, seed); without cell: rows sharing
                    (variant, m, l) or (variant, N) form one run (conservative).
parent              optional (str): a wsd branch's trunk cell; branches are then resampled
                    together with their trunk (they share its trajectory). Empty for other cells.
role                separate | trunk | branch (carried; not needed).
m, l                width d_model and depth (blocks) (universality laws).
N                   non-embedding parameters (chinchilla law; default 12 m^2 l).
seed                init seed (part of the run id).
step                optimizer step (time=steps).
tokens              tokens seen (time=tokens; the tau -> tokens conversion; the frontier).
tau_lr              sum of lr over the steps so far, warmup included (time=tau_lr, the default).
lr                  lr at that step (to find constant-lr points along a curve).
peak_lr             ADDED, optional: the run's peak lr. Absent: the largest lr of the run's rows.
train_loss          train loss (loss=train).
eval_loss           eval loss (loss=eval, the default).
eval_stderr         standard error of eval_loss (carried; shown in plots).
schedule            cosine | wsd | constant.
is_final            bool: last step of a run, or the post-cooldown point of a wsd branch.
flops_per_token     real training FLOPs per token (head and attention included): numerical frontier.
total_steps         planned steps of the run (carried).
loss, tau, D        aliases for files: ``loss`` is used when eval_loss is absent; ``tau`` when
                    tau_lr is absent; ``D`` when tokens is absent.
==================  ===========================================================================

Which points are valid (``points=``):

- ``final`` (default, safe): rows with ``is_final`` -- endpoints of separate runs and post-cooldown
  points of wsd branches.
- ``constant-lr``: along-the-curve rows where the lr equals the run's peak in a ``constant`` run or
  the stable phase of a ``wsd`` run (warmup and cooldown rows are not valid).
- ``final+constant-lr``: both (caution: post-cooldown points carry a cooldown bonus that
  c_tau/tau^(1/3) does not describe).
- ``all``: every row, unfiltered (unsafe on a store export; for a curated file).

A table without ``is_final`` (a published file) is taken as it is: every row is a point.
Rows whose time variable is 0 (the step-0 row of every run in a store) are not points of a power law
in time: they are dropped and recorded (rule ``zero time``), not an error.
Every row dropped, and why, is recorded in ``Points.exclusions``; what was chosen in ``Points.notes``.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AnalysisError
from .laws import Law

SCHEMA = ("variant", "cell", "run", "parent", "role", "m", "l", "N", "seed", "step", "tokens", "tau_lr", "lr",
          "peak_lr",
          "train_loss", "eval_loss", "eval_stderr", "schedule", "is_final", "flops_per_token",
          "total_steps", "loss", "tau", "D")
LOSSES = {"eval": ("eval_loss", "loss"), "train": ("train_loss",)}
TIMES = {"tau_lr": ("tau_lr", "tau"), "tokens": ("tokens", "D"), "steps": ("step",)}
POINT_RULES = ("final", "constant-lr", "final+constant-lr", "all")


# ---------------------------------------------------------------------------------------- loading
def parse_mapping(text: str | None) -> dict[str, str]:
    """Parse ``"N=model_size,D=tokens,loss=loss"`` into ``{"N": "model_size", ...}`` (schema name ->
    file column)."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise AnalysisError(f"column mapping {item!r}: expected name=column, e.g. N=model_size")
        if key not in SCHEMA:
            raise AnalysisError(f"column mapping {item!r}: {key!r} is not a column of the analysis; "
                                f"allowed: {', '.join(SCHEMA)}")
        if key in out:
            raise AnalysisError(f"column mapping: {key!r} is mapped twice")
        out[key] = value
    return out


def _column(values: list[str]) -> np.ndarray:
    vals = [v.strip() for v in values]
    low = {v.lower() for v in vals if v}
    if low and low <= {"true", "false"}:
        return np.array([v.lower() == "true" for v in vals])
    try:
        return np.array([float(v) if v else np.nan for v in vals], dtype=float)
    except ValueError:
        return np.array(vals, dtype=str)


def _read_text_rows(p: Path, delimiter: str) -> list[list[str]]:
    """The rows of a delimited UTF-8 text file (a byte-order mark is allowed). Another encoding or a
    binary file is an AnalysisError naming the file, not a UnicodeDecodeError traceback."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnalysisError(f"table file {str(p)!r} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at "
                            f"offset {e.start} cannot be decoded ({e.reason}); a binary file, or text in "
                            f"another encoding (re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8)") from None
    if "\x00" in text:  # csv accepts NUL bytes since Python 3.11: they would end up inside values
        raise AnalysisError(f"table file {str(p)!r} contains NUL bytes at offset {text.index(chr(0))}: a "
                            f"binary file, not UTF-8 CSV text")
    try:
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as e:
        raise AnalysisError(f"table file {str(p)!r} is not valid CSV text: {e}") from None


def load_table(path: str, mapping: Mapping[str, str] | str | None = None) -> dict[str, np.ndarray]:
    """Read a CSV or parquet file into a table (dict of 1-D numpy arrays).

    ``mapping`` maps schema names to the file's column names (``{"N": "model_size"}`` or the string
    ``"N=model_size,D=tokens"``); mapped columns are added under their schema name, the others are
    kept as they are. Numeric columns become float64 (empty cells NaN), true/false columns bool,
    the rest str."""
    p = Path(path)
    if isinstance(mapping, str):
        mapping = parse_mapping(mapping)
    mapping = dict(mapping or {})
    if not p.is_file():
        raise AnalysisError(f"table file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        rows = _read_text_rows(p, "\t" if suffix == ".tsv" else ",")
        if not rows:
            raise AnalysisError(f"table file {str(p)!r} is empty")
        header, body = [h.strip() for h in rows[0]], rows[1:]
        bad = [i for i, r in enumerate(body) if len(r) != len(header)]
        if bad:
            raise AnalysisError(f"table file {str(p)!r}: row {bad[0] + 2} has {len(body[bad[0]])} fields, "
                                f"the header has {len(header)}")
        cols = {h: _column([r[i] for r in body]) for i, h in enumerate(header)}
    elif suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            t = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:  # a truncated or non-parquet file
            raise AnalysisError(f"table file {str(p)!r} is not a readable parquet file: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        cols = {}
        for name in t.column_names:
            c = t.column(name)
            if pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_decimal(c.type):
                cols[name] = c.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(float)
            elif pa.types.is_boolean(c.type):
                cols[name] = np.array(c.fill_null(False).to_pylist(), dtype=bool)
            else:
                cols[name] = np.array(["" if v is None else str(v) for v in c.to_pylist()], dtype=str)
    else:
        raise AnalysisError(f"table file {str(p)!r}: unknown format {suffix!r}; expected .csv or .parquet")
    for key, src in mapping.items():
        if src not in cols:
            raise AnalysisError(f"column mapping {key}={src}: the file has no column {src!r}; "
                                f"its columns: {', '.join(cols)}")
    out = dict(cols)
    for key, src in mapping.items():
        out[key] = cols[src]
    return out


def check_table(table: Mapping[str, Iterable[Any]]) -> dict[str, np.ndarray]:
    """Columns as 1-D numpy arrays of one length; raise naming the column otherwise."""
    if not isinstance(table, Mapping) or not table:
        raise AnalysisError("the table is empty: expected a dict of equal-length columns")
    out: dict[str, np.ndarray] = {}
    n = None
    for name, col in table.items():
        a = np.asarray(col)
        if a.ndim != 1:
            raise AnalysisError(f"column {name!r} is {a.ndim}-D; every column must be 1-D")
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise AnalysisError(f"column {name!r} has {len(a)} rows, the others {n}")
        out[name] = a
    if n == 0:
        raise AnalysisError("the table has no rows")
    return out


# ---------------------------------------------------------------------------------------- points
@dataclass
class Points:
    """The points of a fit: one entry per point, plus the record of how they were chosen."""
    variant: np.ndarray
    run: np.ndarray
    cell: np.ndarray
    loss: np.ndarray
    V: dict[str, np.ndarray]            # the law's variables (tau/D, m, l, N) by name
    extra: dict[str, np.ndarray]        # carried columns: tokens, flops_per_token, eval_stderr, m, l, N
    loss_name: str = "eval_loss"
    time_name: str | None = None
    time: str | None = None             # tau_lr | tokens | steps
    depth_offset: float = 0.0
    notes: list[str] = field(default_factory=list)
    exclusions: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, mask: np.ndarray) -> Points:
        mask = np.asarray(mask)
        return replace(self, variant=self.variant[mask], run=self.run[mask], cell=self.cell[mask],
                       loss=self.loss[mask], V={k: v[mask] for k, v in self.V.items()},
                       extra={k: v[mask] for k, v in self.extra.items()},
                       notes=list(self.notes), exclusions=list(self.exclusions))

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.variant.tolist()))

    @property
    def n_runs(self) -> int:
        return len(np.unique(self.run))


def _pick(table: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in table:
            return n
    return None


def _str(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.array([f"{v:g}" for v in a], dtype=str)
    return a.astype(str)


def _bool(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == bool:
        return a
    if a.dtype.kind in "fiu":
        if np.any(~np.isin(a[np.isfinite(a)], (0, 1))) or np.any(~np.isfinite(a)):
            raise AnalysisError(f"column {name!r} must be boolean (true/false or 0/1)")
        return a.astype(bool)
    low = np.char.lower(a.astype(str))
    if np.any(~np.isin(low, ("true", "false", "1", "0"))):
        raise AnalysisError(f"column {name!r} must be boolean (true/false or 0/1)")
    return np.isin(low, ("true", "1"))


def _float(table: Mapping[str, Any], name: str) -> np.ndarray:
    a = table[name]
    if a.dtype.kind not in "fiub":
        try:
            return a.astype(float)
        except ValueError:
            raise AnalysisError(f"column {name!r} must be numeric; it holds e.g. {a[0]!r}") from None
    return a.astype(float)


def _peak_lr(T: Mapping[str, Any], run: np.ndarray) -> np.ndarray:
    """Each row's peak lr: the peak_lr column, or the largest lr among its run's rows."""
    if "peak_lr" in T:
        return _float(T, "peak_lr")
    lr = _float(T, "lr")
    _, inv = np.unique(run, return_inverse=True)
    pk = np.full(inv.max() + 1, -np.inf)
    np.maximum.at(pk, inv, np.where(np.isfinite(lr), lr, -np.inf))
    return pk[inv]


def _cells_of(cell: np.ndarray, mask: np.ndarray, limit: int = 12) -> list[str]:
    u = list(dict.fromkeys(cell[mask].tolist()))
    return u[:limit] + ([f"... {len(u) - limit} more"] if len(u) > limit else [])


def _record(ex: list[dict[str, Any]], rule: str, value: Any, mask: np.ndarray, cell: np.ndarray, detail: str) -> None:
    n = int(np.sum(mask))
    if n:
        ex.append({"rule": rule, "value": value, "n_points": n, "cells": _cells_of(cell, mask),
                   "detail": detail})


def select_points(table: Mapping[str, Iterable[Any]], law: Law, loss: str = "eval", time: str | None = None,
                  points: str = "final", min_tau: float | None = None, drop_highest: int = 0,
                  exclude_variants: Iterable[str] = (), exclude_cells: Iterable[str] = (),
                  variants: Iterable[str] | None = None, depth_offset: float = 0.0,
                  nan_policy: str = "raise") -> Points:
    """Choose the valid points of ``table`` for ``law`` (see the module docstring).

    ``time``: tau_lr | tokens | steps (None: tokens for a law in D, else tau_lr). ``min_tau`` drops
    points whose time variable is below it; ``drop_highest`` drops the K highest-loss points of each
    variant; ``exclude_*``/``variants`` select by variant or cell. ``nan_policy``: a NaN loss at a
    final point (or in a file) raises by default; ``drop`` drops and records it (along-the-curve
    rows without an evaluation are always dropped and recorded)."""
    T = check_table(table)
    n_rows = len(next(iter(T.values())))
    notes: list[str] = []
    ex: list[dict[str, Any]] = []

    if loss not in LOSSES:
        raise AnalysisError(f"loss={loss!r}: allowed: {sorted(LOSSES)}")
    loss_col = _pick(T, LOSSES[loss])
    if loss_col is None:
        raise AnalysisError(f"missing column: loss={loss!r} needs column "
                            f"{' or '.join(map(repr, LOSSES[loss]))}; the table has: {', '.join(T)}")
    if points not in POINT_RULES:
        raise AnalysisError(f"points={points!r}: allowed: {', '.join(POINT_RULES)}")
    if nan_policy not in ("raise", "drop"):
        raise AnalysisError(f"nan_policy={nan_policy!r}: allowed: raise, drop")

    # the law's variables
    time_var = law.time_var
    if time is None:
        time = "tokens" if time_var == "D" else "tau_lr"
    if time not in TIMES:
        raise AnalysisError(f"time={time!r}: allowed: {', '.join(TIMES)}")
    cols: dict[str, str] = {}
    time_col = None
    if time_var is not None:
        time_col = _pick(T, TIMES[time])
        if time_col is None:
            raise AnalysisError(f"missing column: law {law.name!r} needs its time variable {time_var} "
                                f"(time={time}) from column {' or '.join(map(repr, TIMES[time]))}; "
                                f"the table has: {', '.join(T)} (map one with e.g. "
                                f"--map {TIMES[time][0]}=<column>)")
        cols[time_var] = time_col
    need_N = "N" in law.variables
    for v in law.variables:
        if v in ("m", "l"):
            if v not in T:
                raise AnalysisError(f"missing column: law {law.name!r} needs {v!r} "
                                    f"({'width' if v == 'm' else 'depth'}); the table has: {', '.join(T)}")
            cols[v] = v
    V: dict[str, np.ndarray] = {v: _float(T, c) for v, c in cols.items()}
    if "l" in V and depth_offset:
        V["l"] = V["l"] - depth_offset
        notes.append(f"depth variable is l - {depth_offset:g} (depth offset)")
    if need_N:
        if "N" in T:
            V["N"] = _float(T, "N")
        elif "m" in T and "l" in T:
            V["N"] = 12.0 * _float(T, "m") ** 2 * _float(T, "l")
            notes.append("N = 12 m^2 l (no N column)")
        else:
            raise AnalysisError(f"missing column: law {law.name!r} needs 'N' (or 'm' and 'l' to compute "
                                f"N = 12 m^2 l); the table has: {', '.join(T)}")
    L = _float(T, loss_col)
    notes.append(f"loss: column {loss_col!r}" + (f"; time variable {time_var}: column {time_col!r}"
                                                  if time_col else ""))

    variant = _str(T["variant"]) if "variant" in T else np.full(n_rows, "all")
    if "cell" in T:
        cell = _str(T["cell"])
    else:
        key = [variant] + [_str(_float(T, c)) for c in ("m", "l") if c in T]
        if len(key) == 1 and "N" in T:
            key.append(_str(_float(T, "N")))
        cell = np.array(["|".join(k) for k in zip(*key)], dtype=str) if len(key) > 1 else variant.copy()
    if "run" in T:
        run = _str(T["run"])
        notes.append("bootstrap unit: column 'run'")
    elif "cell" in T:
        seed = _str(T["seed"]) if "seed" in T else np.full(n_rows, "")
        base = cell
        if "parent" in T:   # wsd branches share their trunk's trajectory: resample them with it
            parent = _str(T["parent"])
            has = ~np.isin(np.char.lower(parent), ("", "nan", "none"))
            base = np.where(has, parent, cell)
        run = np.char.add(np.char.add(np.char.add(variant, "|"), base), np.char.add("|", seed))
        notes.append("bootstrap unit: one run = (variant, cell, seed)"
                     + (", a wsd branch counted with its parent trunk" if "parent" in T else "")
                     + "; its points are resampled together")
    else:
        run = np.char.add(np.char.add(variant, "|"), cell)
        shape_cols: list[str] = [c for c in ("m", "l") if c in T] or (["N"] if "N" in T else [])
        notes.append(f"bootstrap unit: no run or cell column, so rows sharing (variant, "
                     f"{', '.join(shape_cols)}) are resampled together (conservative); map a run column "
                     f"(--map run=<column>) if each row is a separate run")

    # valid points
    final = _bool(T["is_final"], "is_final") if "is_final" in T else None
    along = np.zeros(n_rows, bool)
    if final is None:
        keep = np.ones(n_rows, bool)
        final = np.ones(n_rows, bool)
        notes.append("points: the table has no is_final column, so every row is taken as a valid "
                     "point (the source is responsible for having chosen them)")
    elif points == "all":
        keep = np.ones(n_rows, bool)
        along = ~final
        notes.append("points: ALL rows, unfiltered (points='all'): intermediate points of cosine/wsd "
                     "runs have not been annealed and bias the fit")
    else:
        keep = np.zeros(n_rows, bool)
        if points in ("final", "final+constant-lr"):
            keep |= final
        if points in ("constant-lr", "final+constant-lr"):
            for c in ("lr", "schedule"):
                if c not in T:
                    raise AnalysisError(f"missing column: points={points!r} needs {c!r} to find the "
                                        f"constant-lr rows; the table has: {', '.join(T)}")
            lr, peak = _float(T, "lr"), _peak_lr(T, run)
            notes.append("constant-lr rows: lr == peak_lr" if "peak_lr" in T else
                         "constant-lr rows: lr == the largest lr among the run's rows (no peak_lr "
                         "column; add one if the table may miss a run's stable phase)")
            sched = np.char.lower(_str(T["schedule"]))
            const = np.isin(sched, ("constant", "wsd")) & np.isclose(lr, peak, rtol=1e-5, atol=0)
            along = const & ~final
            keep |= const
        rule = {"final": "final points only: endpoints of runs and post-cooldown points of wsd branches",
                "constant-lr": "constant-lr points only: rows at peak lr of constant runs and of the "
                               "stable phase of wsd runs",
                "final+constant-lr": "final points and constant-lr points along curves (caution: "
                                     "post-cooldown points carry a cooldown bonus c_tau/tau^(1/3) "
                                     "does not describe)"}[points]
        notes.append(f"points: {rule}")
        _record(ex, "not a valid point", points, ~keep, cell,
                "rows that are neither the selected final points nor constant-lr points "
                "(warmup, decay, mid-run points of annealed runs)")
        empty = sorted(set(cell.tolist()) - set(cell[keep].tolist()))
        if empty:
            notes.append(f"{len(empty)} cell(s) have no valid point (unfinished or diverged runs, or wsd "
                         f"trunks whose points are their branches'): {', '.join(empty[:8])}"
                         + (f" ... {len(empty) - 8} more" if len(empty) > 8 else ""))

    def drop(mask: np.ndarray, rule: str, value: Any, detail: str) -> None:
        nonlocal keep
        mask = mask & keep
        _record(ex, rule, value, mask, cell, detail)
        keep = keep & ~mask

    vex = set(map(str, exclude_variants))
    if variants is not None:
        vin = set(map(str, variants))
        unknown = vin - set(variant.tolist())
        if unknown:
            raise AnalysisError(f"variants {sorted(unknown)} are not in the table; it has: "
                                f"{sorted(set(variant.tolist()))}")
        drop(~np.isin(variant, list(vin)), "variants", sorted(vin), "only these variants are fitted")
    if vex:
        drop(np.isin(variant, list(vex)), "exclude_variants", sorted(vex), "excluded by request")
    cex = set(map(str, exclude_cells))
    if cex:
        unknown = cex - set(cell.tolist())
        if unknown:
            raise AnalysisError(f"exclude_cells: {sorted(unknown)} are not cells of the table")
        drop(np.isin(cell, list(cex)), "exclude_cells", sorted(cex), "excluded by request")

    if time_var is not None:
        # every store has step-0 rows (tau = tokens = 0): not points of a power law in time, so they
        # are dropped and recorded, not fatal; a negative or NaN time is still an error below
        drop(V[time_var] == 0, "zero time", 0.0,
             f"time variable ({time_col}) is 0 (step-0 rows): not a point of a power law in time")

    bad_loss = ~np.isfinite(L)
    drop(bad_loss & along, "no evaluation", None,
         "along-the-curve rows whose loss is NaN (no evaluation at that step)")
    if np.any(bad_loss & keep):
        m = bad_loss & keep
        if nan_policy == "drop":
            drop(m, "NaN loss", None, f"{loss_col} is NaN or infinite (nan_policy='drop')")
        else:
            raise AnalysisError(f"NaN or infinite {loss_col} at {int(m.sum())} selected point(s) (cells "
                                f"{_cells_of(cell, m, 6)}): a diverged or unfinished run? Exclude those "
                                f"cells, or pass nan_policy='drop' to drop and record them")
    nonpos = keep & (L <= 0)
    if np.any(nonpos):
        raise AnalysisError(f"non-positive {loss_col} at {int(nonpos.sum())} point(s) (cells "
                            f"{_cells_of(cell, nonpos, 6)}): a loss must be > 0 (it is fitted in "
                            f"relative error / log L)")
    for v, a in V.items():
        badv = keep & ~(np.isfinite(a) & (a > 0))
        if np.any(badv):
            what = {"l": "depth l" + (f" - {depth_offset:g}" if depth_offset else "")}.get(v, v)
            src = cols.get(v, "N")
            raise AnalysisError(f"{what} (column {src!r}) must be positive and finite; it is "
                                f"{float(a[badv][0]):g} at {int(badv.sum())} point(s) "
                                f"(cells {_cells_of(cell, badv, 6)})"
                                + (" -- lower the depth offset" if v == "l" and depth_offset else ""))

    if min_tau is not None:
        if time_var is None:
            raise AnalysisError(f"min_tau: law {law.name!r} has no time variable")
        drop(V[time_var] < float(min_tau), "min_tau", float(min_tau),
             f"time variable ({time_col}) below the minimum (warmup / earliest checkpoints)")
    if drop_highest:
        k = int(drop_highest)
        if k < 0:
            raise AnalysisError(f"drop_highest={drop_highest!r}: must be >= 0")
        m = np.zeros(n_rows, bool)
        for v in dict.fromkeys(variant[keep].tolist()):
            idx = np.flatnonzero(keep & (variant == v))
            m[idx[np.argsort(-L[idx], kind="stable")[:k]]] = True
        drop(m, "drop_highest", k, f"the {k} highest-loss points of each variant")

    if not np.any(keep):
        raise AnalysisError("too few points: no point is left after selection and exclusions ("
                            + "; ".join(f"{e['rule']}: {e['n_points']}" for e in ex) + ")")

    extra = {}
    if "lr" in T or "peak_lr" in T:
        extra["peak_lr"] = _peak_lr(T, run)
    for c in ("tokens", "flops_per_token", "eval_stderr", "m", "l", "N", "step", "tau_lr", "lr"):
        if c in T:
            try:
                extra[c] = _float(T, c)
            except AnalysisError:
                if c in ("tokens", "flops_per_token", "m", "l", "N"):
                    raise
                notes.append(f"column {c!r} is not numeric and was ignored")
    if "tokens" not in extra and "D" in T:
        extra["tokens"] = _float(T, "D")
    if "N" not in extra and "N" in V:
        extra["N"] = V["N"]
    if time_var is not None and "tau_lr" not in extra and time == "tau_lr":
        extra["tau_lr"] = V[time_var]
    pts = Points(variant=variant, run=run, cell=cell, loss=L, V=V, extra=extra, loss_name=loss_col,
                 time_name=time_col, time=time if time_var else None, depth_offset=float(depth_offset), notes=notes,
                 exclusions=ex)
    return pts.subset(keep)
