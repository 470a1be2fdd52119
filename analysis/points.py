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
- ``best-lr``: the final points, then for each (variant, shape, budget, seed) only the run with the
  lowest final loss over the swept lrs (the lr envelope). The lr of a run: ``peak_lr``, else ``lr``
  (a file's lr column, ``--map lr=<column>``); a budget: tokens, else steps (a file with only tau:
  tau / lr). The other lrs are recorded (rule ``not the best lr``) and kept in ``Points.envelope``:
  the bootstrap redoes the selection in every draw (``estimators.envelope_counts``). A winner at
  the smallest or largest swept lr is warned about; a shape swept at one lr is kept, with a note.

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
from .laws import VARIABLES, Law

SCHEMA = ("variant", "cell", "run", "parent", "role", "m", "l", "N", "seed", "step", "tokens", "tau_lr", "lr",
          "peak_lr",
          "train_loss", "eval_loss", "eval_stderr", "schedule", "is_final", "flops_per_token",
          "total_steps", "loss", "tau", "D")
LOSSES = {"eval": ("eval_loss", "loss"), "train": ("train_loss",)}
TIMES = {"tau_lr": ("tau_lr", "tau"), "tokens": ("tokens", "D"), "steps": ("step",)}
POINT_RULES = ("final", "constant-lr", "final+constant-lr", "all", "best-lr")


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
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # each point's row in the table
    columns: dict[str, str] = field(default_factory=dict)  # loss and each variable: the file's column
    loss_name: str = "eval_loss"
    time_name: str | None = None
    time: str | None = None             # tau_lr | tokens | steps
    depth_offset: float = 0.0
    notes: list[str] = field(default_factory=list)
    exclusions: list[dict[str, Any]] = field(default_factory=list)
    family: np.ndarray | None = None    # best-lr: each point's family (shape x budget x seed), else None
    envelope: Envelope | None = None    # best-lr: every candidate lr, for the selection inside the bootstrap

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, mask: np.ndarray) -> Points:
        mask = np.asarray(mask)
        return replace(self, variant=self.variant[mask], run=self.run[mask], cell=self.cell[mask],
                       loss=self.loss[mask], row=self.row[mask], V={k: v[mask] for k, v in self.V.items()},
                       extra={k: v[mask] for k, v in self.extra.items()},
                       notes=list(self.notes), exclusions=list(self.exclusions),
                       family=None if self.family is None else self.family[mask],
                       envelope=None if self.envelope is None or self.family is None
                       else self.envelope.restrict(self.family[mask]))

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.variant.tolist()))

    @property
    def n_runs(self) -> int:
        return len(np.unique(self.run))


@dataclass
class Envelope:
    """best-lr: every candidate run (one final point per swept lr of each shape, budget and seed) and
    which one won. ``candidates.family`` groups them; the bootstrap redoes the selection inside each
    draw from these (:func:`estimators.envelope_counts`)."""
    candidates: Points
    lr: np.ndarray                      # each candidate's lr
    budget_name: str                    # the column that names a budget (tokens, step, ...)
    shape_names: list[str]              # the columns that name a shape (m, l / N / a formula's variables)
    budget: np.ndarray                  # each candidate's budget
    shape: dict[str, np.ndarray] = field(default_factory=dict)   # each candidate's shape, by column

    @property
    def family(self) -> np.ndarray:
        assert self.candidates.family is not None
        return self.candidates.family

    def restrict(self, families: np.ndarray) -> Envelope:
        m = np.isin(self.family, np.asarray(families))
        return replace(self, candidates=self.candidates.subset(m), lr=self.lr[m], budget=self.budget[m],
                       shape={k: v[m] for k, v in self.shape.items()})

    def winners(self) -> np.ndarray:
        """Each candidate: whether it has the lowest loss of its family (the first, on a tie)."""
        win = np.zeros(len(self.lr), bool)
        for f in np.unique(self.family):
            idx = np.flatnonzero(self.family == f)
            win[idx[np.argmin(self.candidates.loss[idx])]] = True
        return win

    def units(self) -> np.ndarray:
        """Each candidate's resampling unit: families joined when they share a run (a wsd trunk whose
        branches are budgets of several families), so that a run is never split across units."""
        fam = self.family
        parent = {int(f): int(f) for f in np.unique(fam)}

        def root(f: int) -> int:
            while parent[f] != f:
                parent[f] = parent[parent[f]]
                f = parent[f]
            return f
        first: dict[str, int] = {}
        for r, f in zip(self.candidates.run.tolist(), fam.tolist()):
            a, b = root(first.setdefault(r, int(f))), root(int(f))
            if a != b:
                parent[b] = a
        return np.array([root(int(f)) for f in fam])

    def shapes(self) -> list[dict[str, Any]]:
        """One entry per family: variant, shape, budget, the lrs swept, the best lr, its loss, and
        where the best lr lies in the sweep (``edge``: low | high | None inside | single)."""
        out = []
        win = self.winners()
        for f in dict.fromkeys(self.family.tolist()):
            idx = np.flatnonzero(self.family == f)
            w = idx[win[idx]][0]
            lrs = np.unique(self.lr[idx])
            best = float(self.lr[w])
            edge = ("single" if len(lrs) == 1 else "low" if best == lrs[0] else "high" if best == lrs[-1]
                    else None)
            out.append({"variant": str(self.candidates.variant[w]),
                        "shape": {k: float(v[w]) for k, v in self.shape.items()},
                        "budget": {self.budget_name: float(self.budget[w])}, "cell": str(self.candidates.cell[w]),
                        "lrs": [float(x) for x in lrs], "best_lr": best, "loss": float(self.candidates.loss[w]),
                        "losses": [float(np.min(self.candidates.loss[idx][self.lr[idx] == x])) for x in lrs],
                        "edge": edge})
        return out

    def by_shape(self) -> list[dict[str, Any]]:
        """:meth:`shapes` grouped by (variant, shape): the budgets, the best lr and edge at each."""
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for e in self.shapes():
            g = groups.setdefault((e["variant"], *e["shape"].items()), {
                "variant": e["variant"], "shape": e["shape"], "budgets": [], "best_lr": [], "edge": [], "lrs": set()})
            g["budgets"].append(next(iter(e["budget"].values())))
            g["best_lr"].append(e["best_lr"])
            g["edge"].append(e["edge"])
            g["lrs"] |= set(e["lrs"])
        return [dict(g, lrs=sorted(g["lrs"])) for g in groups.values()]

    def warnings(self) -> list[str]:
        """The shapes whose best lr is the smallest or largest swept: their optimum may lie outside."""
        n = len(np.unique(self.family))
        n_edge = sum(e in ("low", "high") for g in self.by_shape() for e in g["edge"])
        if not n_edge:
            return []
        parts = []
        for g in self.by_shape():
            at = [(lr, e) for lr, e in zip(g["best_lr"], g["edge"]) if e in ("low", "high")]
            if at:
                lrs = sorted({lr for lr, _ in at})
                parts.append(f"{shape_text(g)}: {', '.join(f'{x:g}' for x in lrs)} "
                             f"({' and '.join(sorted({'lowest' if e == 'low' else 'highest' for _, e in at}))} swept) "
                             f"at {len(at)} of {len(g['budgets'])} budget(s)")
        return [f"best lr at the edge of the sweep for {n_edge} of {n} shape(s) x budget(s): the optimum may lie "
                f"outside the swept lrs, so these points may sit above the envelope; sweep further: "
                + "; ".join(parts[:8]) + (f" ... {len(parts) - 8} more" if len(parts) > 8 else "")]


def shape_text(s: Mapping[str, Any]) -> str:
    """``m=64 l=2 tokens=1e+06`` for an entry of :meth:`Envelope.shapes` (no budget: of :meth:`by_shape`)."""
    return " ".join(f"{k}={v:g}" for k, v in {**s["shape"], **s.get("budget", {})}.items())


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
        time_col = _pick(T, TIMES[time])
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
    V: dict[str, np.ndarray] = {v: _float(T, c) for v, c in cols.items()}
    if "l" in V and depth_offset:
        V["l"] = V["l"] - depth_offset
        notes.append(f"depth variable is l - {depth_offset:g} (depth offset)")
    if "N" in law.variables:
        if "N" in T:
            V["N"] = _float(T, "N")
            cols["N"] = "N"
        elif "m" in T and "l" in T:
            V["N"] = 12.0 * _float(T, "m") ** 2 * _float(T, "l")
            notes.append("N = 12 m^2 l (no N column)")
        else:
            raise AnalysisError(f"missing column: law {law.name!r} needs 'N' (or 'm' and 'l' to compute "
                                f"N = 12 m^2 l); the table has: {', '.join(T)}")
    # the file's own names, not the schema's aliases (a --map target is the column as the file names it)
    cols = {v: names.get(c, c) for v, c in cols.items()}
    return V, cols, time, None if time_col is None else names.get(time_col, time_col), notes


def _shape_columns(T: Mapping[str, np.ndarray], law: Law) -> list[str]:
    """The columns that name a model's shape, for a table without cell or run: m and l, else N, else
    the law's own non-time variables (a formula's columns)."""
    return ([c for c in ("m", "l") if c in T] or (["N"] if "N" in T else [])
            or [v for v in dict.fromkeys(law.variables) if v not in ("tau", "D") and v not in VARIABLES and v in T])


def _check_options(T: Mapping[str, np.ndarray], loss: str, points: str, nan_policy: str) -> str:
    """Step 1: the options are known values; the loss column exists. Returns its name in the table."""
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
    if points == "best-lr" and "lr" not in T and "peak_lr" not in T:
        raise AnalysisError(f"missing column: points='best-lr' needs each run's learning rate, a column 'lr' or "
                            f"'peak_lr'; the table has: {', '.join(T)} (map one with --map lr=<column>)")
    return loss_col


def _run_ids(T: Mapping[str, np.ndarray], law: Law, variant: np.ndarray, points: str
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Step 2: each row's cell and run (the bootstrap unit), and the note saying how."""
    n_rows = len(variant)
    notes: list[str] = []
    if "cell" in T:
        cell = _str(T["cell"])
    else:
        shape = _shape_columns(T, law)
        if points == "best-lr" and "run" not in T and "lr" in T:
            shape = shape + ["lr"]   # lr siblings of one shape are different runs, not points of one
        key = [variant] + [_str(_float(T, c)) for c in shape]
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
        shape_cols = _shape_columns(T, law) + (["lr"] if points == "best-lr" and "lr" in T else [])
        notes.append(f"bootstrap unit: no run or cell column, so rows sharing (variant, "
                     f"{', '.join(shape_cols)}) are resampled together (conservative); map a run column "
                     f"(--map run=<column>) if each row is a separate run")
    return cell, run, notes


def _valid_rows(T: Mapping[str, np.ndarray], points: str, run: np.ndarray, cell: np.ndarray,
                ex: list[dict[str, Any]], notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: the rows the ``points`` rule admits, and which of them lie along a curve (not final).
    best-lr starts from the final points; the lr selection comes later (:func:`_lr_envelope`)."""
    n_rows = len(run)
    final = _bool(T["is_final"], "is_final") if "is_final" in T else None
    along = np.zeros(n_rows, bool)
    if final is None:
        notes.append("points: the table has no is_final column, so every row is taken as a valid "
                     "point (the source is responsible for having chosen them)")
        return np.ones(n_rows, bool), along
    if points == "all":
        notes.append("points: ALL rows, unfiltered (points='all'): intermediate points of cosine/wsd "
                     "runs have not been annealed and bias the fit")
        return np.ones(n_rows, bool), ~final
    keep = np.zeros(n_rows, bool)
    if points in ("final", "final+constant-lr", "best-lr"):
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
            "best-lr": "final points (endpoints of runs and post-cooldown points of wsd branches), then "
                       "the best lr of each shape and budget",
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
    return keep, along


class _Keep:
    """The rows still kept, and the record of every row dropped and why."""

    def __init__(self, keep: np.ndarray, cell: np.ndarray, ex: list[dict[str, Any]]):
        self.mask, self.cell, self.ex = keep, cell, ex

    def drop(self, mask: np.ndarray, rule: str, value: Any, detail: str) -> None:
        mask = mask & self.mask
        _record(self.ex, rule, value, mask, self.cell, detail)
        self.mask = self.mask & ~mask


def _apply_requests(K: _Keep, T: Mapping[str, np.ndarray], variant: np.ndarray, cell: np.ndarray,
                    where: str | None, variants: Iterable[str] | None, exclude_variants: Iterable[str],
                    exclude_cells: Iterable[str]) -> None:
    """Step 4: the user's own choices of rows: --where, variants, exclusions."""
    if where is not None:
        from .expr import evaluate
        K.drop(~evaluate(where, T, "--where"), "where", where, "points where the --where condition does not hold")
    vex = set(map(str, exclude_variants))
    if variants is not None:
        vin = set(map(str, variants))
        unknown = vin - set(variant.tolist())
        if unknown:
            raise AnalysisError(f"variants {sorted(unknown)} are not in the table; it has: "
                                f"{sorted(set(variant.tolist()))}")
        K.drop(~np.isin(variant, list(vin)), "variants", sorted(vin), "only these variants are fitted")
    if vex:
        K.drop(np.isin(variant, list(vex)), "exclude_variants", sorted(vex), "excluded by request")
    cex = set(map(str, exclude_cells))
    if cex:
        unknown = cex - set(cell.tolist())
        if unknown:
            raise AnalysisError(f"exclude_cells: {sorted(unknown)} are not cells of the table")
        K.drop(np.isin(cell, list(cex)), "exclude_cells", sorted(cex), "excluded by request")


def _check_values(K: _Keep, L: np.ndarray, V: dict[str, np.ndarray], cols: Mapping[str, str], along: np.ndarray,
                  time_var: str | None, time_col: str | None, loss_col: str, nan_policy: str,
                  depth_offset: float) -> None:
    """Step 5: drop step-0 rows and unevaluated rows along curves; a NaN, non-positive loss or a
    bad variable at a kept point raises (or, NaN with nan_policy='drop', is dropped and recorded)."""
    cell = K.cell
    if time_var is not None:
        # every store has step-0 rows (tau = tokens = 0): not points of a power law in time, so they
        # are dropped and recorded, not fatal; a negative or NaN time is still an error below
        K.drop(V[time_var] == 0, "zero time", 0.0,
               f"time variable ({time_col}) is 0 (step-0 rows): not a point of a power law in time")
    bad_loss = ~np.isfinite(L)
    K.drop(bad_loss & along, "no evaluation", None,
           "along-the-curve rows whose loss is NaN (no evaluation at that step)")
    if np.any(bad_loss & K.mask):
        m = bad_loss & K.mask
        if nan_policy == "drop":
            K.drop(m, "NaN loss", None, f"{loss_col} is NaN or infinite (nan_policy='drop')")
        else:
            raise AnalysisError(f"NaN or infinite {loss_col} at {int(m.sum())} selected point(s) (cells "
                                f"{_cells_of(cell, m, 6)}): a diverged or unfinished run? Exclude those "
                                f"cells, or pass nan_policy='drop' to drop and record them")
    nonpos = K.mask & (L <= 0)
    if np.any(nonpos):
        raise AnalysisError(f"non-positive {loss_col} at {int(nonpos.sum())} point(s) (cells "
                            f"{_cells_of(cell, nonpos, 6)}): a loss must be > 0 (it is fitted in "
                            f"relative error / log L)")
    for v, a in V.items():
        badv = K.mask & ~(np.isfinite(a) & (a > 0))
        if np.any(badv):
            what = {"l": "depth l" + (f" - {depth_offset:g}" if depth_offset else "")}.get(v, v)
            src = cols.get(v, "N")
            raise AnalysisError(f"{what} (column {src!r}) must be positive and finite; it is "
                                f"{float(a[badv][0]):g} at {int(badv.sum())} point(s) "
                                f"(cells {_cells_of(cell, badv, 6)})"
                                + (" -- lower the depth offset" if v == "l" and depth_offset else ""))


def _trim(K: _Keep, L: np.ndarray, V: dict[str, np.ndarray], variant: np.ndarray, law: Law,
          time_var: str | None, time_col: str | None, min_tau: float | None, drop_highest: int) -> None:
    """Step 7: the exclusions that make the law's asymptotic regime: min_tau, drop_highest."""
    if min_tau is not None:
        if time_var is None:
            raise AnalysisError(f"min_tau: law {law.name!r} has no time variable")
        K.drop(V[time_var] < float(min_tau), "min_tau", float(min_tau),
               f"time variable ({time_col}) below the minimum (warmup / earliest checkpoints)")
    if drop_highest:
        k = int(drop_highest)
        if k < 0:
            raise AnalysisError(f"drop_highest={drop_highest!r}: must be >= 0")
        m = np.zeros(len(L), bool)
        for v in dict.fromkeys(variant[K.mask].tolist()):
            idx = np.flatnonzero(K.mask & (variant == v))
            m[idx[np.argsort(-L[idx], kind="stable")[:k]]] = True
        K.drop(m, "drop_highest", k, f"the {k} highest-loss points of each variant")


def _extra_columns(T: Mapping[str, np.ndarray], V: dict[str, np.ndarray], run: np.ndarray, time_var: str | None,
                   time: str, notes: list[str]) -> dict[str, np.ndarray]:
    """Step 8: the columns carried beside the law's variables (frontier, plots, predictions)."""
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
    return extra


def select_points(table: Mapping[str, Iterable[Any]], law: Law, loss: str = "eval", time: str | None = None,
                  points: str = "final", min_tau: float | None = None, drop_highest: int = 0,
                  exclude_variants: Iterable[str] = (), exclude_cells: Iterable[str] = (),
                  variants: Iterable[str] | None = None, depth_offset: float = 0.0,
                  nan_policy: str = "raise", where: str | None = None,
                  source_columns: Mapping[str, str] | None = None) -> Points:
    """Choose the valid points of ``table`` for ``law`` (see the module docstring).

    ``time``: tau_lr | tokens | steps (None: tokens for a law in D, else tau_lr). ``min_tau`` drops
    points whose time variable is below it; ``drop_highest`` drops the K highest-loss points of each
    variant; ``exclude_*``/``variants`` select by variant or cell. ``nan_policy``: a NaN loss at a
    final point (or in a file) raises by default; ``drop`` drops and records it (along-the-curve
    rows without an evaluation are always dropped and recorded). ``where``: a condition over the
    table's columns (:mod:`expr`); the valid points where it does not hold are dropped and recorded.
    ``source_columns`` ({schema name: file column}, the ``--map``) makes notes, messages and
    ``loss_name``/``time_name`` use the file's own column names. ``points='best-lr'``: the final
    point of the best lr of each (variant, shape, budget, seed), with every candidate kept in
    ``Points.envelope`` for the bootstrap (:class:`Envelope`).

    The steps, in order: options, the law's variables, run ids, valid rows, the user's requests,
    value checks, the lr envelope (best-lr), the asymptotic trims, carried columns."""
    T = check_table(table)
    names = dict(source_columns or {})
    n_rows = len(next(iter(T.values())))
    ex: list[dict[str, Any]] = []

    loss_col = _check_options(T, loss, points, nan_policy)
    time_var = law.time_var
    V, cols, time, time_col, notes = law_variables(T, law, time, depth_offset, source_columns)
    L = _float(T, loss_col)
    loss_col = names.get(loss_col, loss_col)
    notes.append(f"loss: column {loss_col!r}" + (f"; time variable {time_var}: column {time_col!r}"
                                                  if time_col else ""))
    variant = _str(T["variant"]) if "variant" in T else np.full(n_rows, "all")
    cell, run, run_notes = _run_ids(T, law, variant, points)
    notes += run_notes
    keep, along = _valid_rows(T, points, run, cell, ex, notes)
    K = _Keep(keep, cell, ex)
    _apply_requests(K, T, variant, cell, where, variants, exclude_variants, exclude_cells)
    _check_values(K, L, V, cols, along, time_var, time_col, loss_col, nan_policy, depth_offset)
    env = None
    if points == "best-lr" and np.any(K.mask):
        env = _lr_envelope(K, T, law, L, V, variant, run, time_var, time, names, notes)
    _trim(K, L, V, variant, law, time_var, time_col, min_tau, drop_highest)
    if not np.any(K.mask):
        raise AnalysisError("too few points: no point is left after selection and exclusions ("
                            + "; ".join(f"{e['rule']}: {e['n_points']}" for e in ex) + ")")
    extra = _extra_columns(T, V, run, time_var, time, notes)
    pts = Points(variant=variant, run=run, cell=cell, loss=L, V=V, extra=extra, loss_name=loss_col,
                 time_name=time_col, time=time if time_var else None, depth_offset=float(depth_offset), notes=notes,
                 exclusions=ex, row=np.arange(n_rows), columns={"loss": loss_col, **cols})
    if env is None:
        return pts.subset(K.mask)
    family, candidates, info = env
    pts.family = family
    out = pts.subset(K.mask)
    assert out.family is not None
    cand = pts.subset(candidates)
    # the candidates of the families whose winner survived the trims: the bootstrap selects among them
    out.envelope = Envelope(cand, info["lr"][candidates], info["budget"], info["shape"],
                            info["budget_values"][candidates],
                            {k: v[candidates] for k, v in info["shape_values"].items()}).restrict(out.family)
    return out


def _budget(T: Mapping[str, np.ndarray], V: dict[str, np.ndarray], time_var: str | None, time: str,
            names: Mapping[str, str], lr: np.ndarray) -> tuple[str, np.ndarray]:
    """What makes two runs of one shape the same budget: tokens, else steps, else planned steps;
    a file with only tau = sum of lr gives tau / lr (steps up to the schedule's mean multiplier).
    Not tau itself: the lr siblings of one budget differ in tau by their lr."""
    for c in ("tokens", "D", "step", "total_steps"):
        if c in T:
            return names.get(c, c), _float(T, c)
    if time_var is not None and time == "tau_lr":
        return "tau / lr", V[time_var] / lr
    if time_var is not None:
        return time_var, V[time_var]
    return "", np.zeros(len(lr))


def _lr_envelope(K: _Keep, T: Mapping[str, np.ndarray], law: Law, L: np.ndarray, V: dict[str, np.ndarray],
                 variant: np.ndarray, run: np.ndarray, time_var: str | None, time: str, names: Mapping[str, str],
                 notes: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Step 6 (best-lr): group the kept points into families, one per (variant, shape, budget, seed),
    whose members differ only in lr; keep the lowest-loss member of each. Returns (each row's family,
    -1 outside; the candidate rows; {lr, budget, shape, budget_values}). The losers are recorded as
    exclusions and stay in ``Points.envelope`` for the bootstrap."""
    lr = _peak_lr(T, run)
    shape = [c for c in _shape_columns(T, law) if c != "lr"]
    budget_name, budget = _budget(T, V, time_var, time, names, lr)
    seed = _str(T["seed"]) if "seed" in T else np.full(len(L), "")
    key = np.array(["|".join(k) for k in zip(variant, *(_str(_float(T, c)) for c in shape),
                                              _str(budget), seed)], dtype=str)
    cand = K.mask.copy()
    family = np.full(len(L), -1)
    _, family[cand] = np.unique(key[cand], return_inverse=True)
    loser = np.zeros(len(L), bool)
    n_single = 0
    for f in range(family.max() + 1):
        idx = np.flatnonzero(family == f)
        best = idx[np.argmin(L[idx])]       # ties: the first row, deterministic
        loser[idx[idx != best]] = True
        n_single += len(np.unique(lr[idx])) == 1
    K.drop(loser, "not the best lr", None,
           "runs whose final loss is above that of another lr of the same shape and budget (points=best-lr)")
    nf = int(family.max() + 1)
    notes.append(f"best-lr: {nf} shape(s) x budget(s) ({', '.join(['variant'] + [names.get(c, c) for c in shape])}"
                 f", budget {budget_name!r}" + (", seed" if "seed" in T else "") + "): each keeps the run with "
                 f"the lowest final loss over its swept lrs (lr from column "
                 f"{names.get('peak_lr', 'peak_lr') if 'peak_lr' in T else names.get('lr', 'lr')!r}); the "
                 f"bootstrap repeats this selection inside every draw")
    if n_single:
        notes.append(f"best-lr: {n_single} of {nf} shape(s) were swept over a single lr: kept as they are, "
                     f"their lr was not selected")
    return family, cand, {"lr": lr, "budget": budget_name, "shape": [names.get(c, c) for c in shape],
                          "budget_values": budget, "shape_values": {names.get(c, c): _float(T, c) for c in shape}}
