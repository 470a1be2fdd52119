"""The table's schema, and typed reads of its columns.

A *table* is a dict of equal-length 1-D numpy arrays (columns). It comes from a store export (the CLI
builds it) or from a CSV/parquet file (:func:`loading.load_table`, with a column mapping). Columns:

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
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import AnalysisError
from .laws import VARIABLES, Law

SCHEMA = ("variant", "cell", "run", "parent", "role", "m", "l", "N", "seed", "step", "tokens", "tau_lr", "lr",
          "peak_lr",
          "train_loss", "eval_loss", "eval_stderr", "schedule", "is_final", "flops_per_token",
          "total_steps", "loss", "tau", "D")
LOSSES = {"eval": ("eval_loss", "loss"), "train": ("train_loss",)}
TIMES = {"tau_lr": ("tau_lr", "tau"), "tokens": ("tokens", "D"), "steps": ("step",)}


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


def pick_column(table: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` (a schema name and its aliases) that the table has, else None."""
    for n in names:
        if n in table:
            return n
    return None


def as_str(a: np.ndarray) -> np.ndarray:
    """A column as str; floats as ``%g`` (so 64.0 and 64 name the same shape)."""
    if a.dtype.kind == "f":
        return np.array([f"{v:g}" for v in a], dtype=str)
    return a.astype(str)


def as_bool(a: np.ndarray, name: str) -> np.ndarray:
    """A column of true/false or 0/1 as bool; anything else raises naming the column."""
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


def float_column(table: Mapping[str, Any], name: str) -> np.ndarray:
    """Column ``name`` as float64; a non-numeric column raises naming it."""
    a = table[name]
    if a.dtype.kind not in "fiub":
        try:
            return a.astype(float)
        except ValueError:
            raise AnalysisError(f"column {name!r} must be numeric; it holds e.g. {a[0]!r}") from None
    return a.astype(float)


def law_variables(T: Mapping[str, np.ndarray], law: Law, time: str | None = None, depth_offset: float = 0.0,
                  source_columns: Mapping[str, str] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, str], str, str | None, list[str]]:
    """The law's variables from the table's columns: (V, {variable: column}, time, the time column
    as the file names it, notes). ``time`` None: tokens for a law in D, else tau_lr. A variable
    outside the schema (a formula's own name) is read from the column of that name."""
    names = dict(source_columns or {})
    notes: list[str] = []
    time_var = law.time_var
    if time is None:
        time = "tokens" if time_var == "D" else "tau_lr"
    if time not in TIMES:
        raise AnalysisError(f"time={time!r}: allowed: {', '.join(TIMES)}")
    cols: dict[str, str] = {}
    time_col = None
    if time_var is not None:
        time_col = pick_column(T, TIMES[time])
        if time_col is None:
            raise AnalysisError(f"missing column: law {law.name!r} needs its time variable {time_var} "
                                f"(time={time}) from column {' or '.join(map(repr, TIMES[time]))}; "
                                f"the table has: {', '.join(T)} (map one with e.g. "
                                f"--map {TIMES[time][0]}=<column>)")
        cols[time_var] = time_col
    for v in law.variables:
        if v in ("m", "l"):
            if v not in T:
                raise AnalysisError(f"missing column: law {law.name!r} needs {v!r} "
                                    f"({'width' if v == 'm' else 'depth'}); the table has: {', '.join(T)}")
            cols[v] = v
        elif v not in VARIABLES:
            if v not in T:
                raise AnalysisError(f"missing column: law {law.name!r} has the variable {v!r}, and the table has "
                                    f"no column of that name; it has: {', '.join(T)} (variables with a meaning: "
                                    f"{', '.join(VARIABLES)})")
            cols[v] = v
    V: dict[str, np.ndarray] = {v: float_column(T, c) for v, c in cols.items()}
    if "l" in V and depth_offset:
        V["l"] = V["l"] - depth_offset
        notes.append(f"depth variable is l - {depth_offset:g} (depth offset)")
    if "N" in law.variables:
        if "N" in T:
            V["N"] = float_column(T, "N")
            cols["N"] = "N"
        elif "m" in T and "l" in T:
            V["N"] = 12.0 * float_column(T, "m") ** 2 * float_column(T, "l")
            notes.append("N = 12 m^2 l (no N column)")
        else:
            raise AnalysisError(f"missing column: law {law.name!r} needs 'N' (or 'm' and 'l' to compute "
                                f"N = 12 m^2 l); the table has: {', '.join(T)}")
    # the file's own names, not the schema's aliases (a --map target is the column as the file names it)
    cols = {v: names.get(c, c) for v, c in cols.items()}
    return V, cols, time, None if time_col is None else names.get(time_col, time_col), notes


def peak_lr(T: Mapping[str, Any], run: np.ndarray) -> np.ndarray:
    """Each row's peak lr: the peak_lr column, or the largest lr among its run's rows."""
    if "peak_lr" in T:
        return float_column(T, "peak_lr")
    lr = float_column(T, "lr")
    _, inv = np.unique(run, return_inverse=True)
    pk = np.full(inv.max() + 1, -np.inf)
    np.maximum.at(pk, inv, np.where(np.isfinite(lr), lr, -np.inf))
    return pk[inv]



def shape_columns(T: Mapping[str, np.ndarray], law: Law) -> list[str]:
    """The columns that name a model's shape, for a table without cell or run: m and l, else N, else
    the law's own non-time variables (a formula's columns)."""
    return ([c for c in ("m", "l") if c in T] or (["N"] if "N" in T else [])
            or [v for v in dict.fromkeys(law.variables) if v not in ("tau", "D") and v not in VARIABLES and v in T])


def truthy(x: ArrayLike) -> np.ndarray:
    """A boolean column, also when a CSV reader left it as text ("True"/"False")."""
    x = np.asarray(x)
    return x.astype(bool) if x.dtype.kind in "biuf" else np.isin(np.char.lower(x.astype(str)), ("true", "1", "1.0"))
