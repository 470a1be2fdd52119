"""Which rows of a table are the valid points of a fit (:func:`select_points`).

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
  the bootstrap redoes the selection in every draw (``resampling.envelope_counts``). A winner at
  the smallest or largest swept lr is warned about; a shape swept at one lr is kept, with a note.

A table without ``is_final`` (a published file) is taken as it is: every row is a point.
Rows whose time variable is 0 (the step-0 row of every run in a store) are not points of a power law
in time: they are dropped and recorded (rule ``zero time``), not an error.
Every row dropped, and why, is recorded in ``Points.exclusions``; what was chosen in ``Points.notes``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .columns import (
    LOSSES,
    as_bool,
    as_str,
    check_table,
    float_column,
    law_variables,
    peak_lr,
    pick_column,
    shape_columns,
)
from .errors import AnalysisError
from .laws import Law
from .points import Envelope, Points

POINT_RULES = ("final", "constant-lr", "final+constant-lr", "all", "best-lr")


def cells_of(cell: np.ndarray, mask: np.ndarray, limit: int = 12) -> list[str]:
    u = list(dict.fromkeys(cell[mask].tolist()))
    return u[:limit] + ([f"... {len(u) - limit} more"] if len(u) > limit else [])


def _record(ex: list[dict[str, Any]], rule: str, value: Any, mask: np.ndarray, cell: np.ndarray, detail: str) -> None:
    n = int(np.sum(mask))
    if n:
        ex.append({"rule": rule, "value": value, "n_points": n, "cells": cells_of(cell, mask),
                   "detail": detail})


def _check_options(T: Mapping[str, np.ndarray], loss: str, points: str, nan_policy: str) -> str:
    """Step 1: the options are known values; the loss column exists. Returns its name in the table."""
    if loss not in LOSSES:
        raise AnalysisError(f"loss={loss!r}: allowed: {sorted(LOSSES)}")
    loss_col = pick_column(T, LOSSES[loss])
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
        cell = as_str(T["cell"])
    else:
        shape = shape_columns(T, law)
        if points == "best-lr" and "run" not in T and "lr" in T:
            shape = shape + ["lr"]   # lr siblings of one shape are different runs, not points of one
        key = [variant] + [as_str(float_column(T, c)) for c in shape]
        cell = np.array(["|".join(k) for k in zip(*key)], dtype=str) if len(key) > 1 else variant.copy()
    if "run" in T:
        run = as_str(T["run"])
        notes.append("bootstrap unit: column 'run'")
    elif "cell" in T:
        seed = as_str(T["seed"]) if "seed" in T else np.full(n_rows, "")
        base = cell
        if "parent" in T:   # wsd branches share their trunk's trajectory: resample them with it
            parent = as_str(T["parent"])
            has = ~np.isin(np.char.lower(parent), ("", "nan", "none"))
            base = np.where(has, parent, cell)
        run = np.char.add(np.char.add(np.char.add(variant, "|"), base), np.char.add("|", seed))
        notes.append("bootstrap unit: one run = (variant, cell, seed)"
                     + (", a wsd branch counted with its parent trunk" if "parent" in T else "")
                     + "; its points are resampled together")
    else:
        run = np.char.add(np.char.add(variant, "|"), cell)
        shape_cols = shape_columns(T, law) + (["lr"] if points == "best-lr" and "lr" in T else [])
        notes.append(f"bootstrap unit: no run or cell column, so rows sharing (variant, "
                     f"{', '.join(shape_cols)}) are resampled together (conservative); map a run column "
                     f"(--map run=<column>) if each row is a separate run")
    return cell, run, notes


def _valid_rows(T: Mapping[str, np.ndarray], points: str, run: np.ndarray, cell: np.ndarray,
                ex: list[dict[str, Any]], notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: the rows the ``points`` rule admits, and which of them lie along a curve (not final).
    best-lr starts from the final points; the lr selection comes later (:func:`_lr_envelope`)."""
    n_rows = len(run)
    final = as_bool(T["is_final"], "is_final") if "is_final" in T else None
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
        lr, peak = float_column(T, "lr"), peak_lr(T, run)
        notes.append("constant-lr rows: lr == peak_lr" if "peak_lr" in T else
                     "constant-lr rows: lr == the largest lr among the run's rows (no peak_lr "
                     "column; add one if the table may miss a run's stable phase)")
        sched = np.char.lower(as_str(T["schedule"]))
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
                                f"{cells_of(cell, m, 6)}): a diverged or unfinished run? Exclude those "
                                f"cells, or pass nan_policy='drop' to drop and record them")
    nonpos = K.mask & (L <= 0)
    if np.any(nonpos):
        raise AnalysisError(f"non-positive {loss_col} at {int(nonpos.sum())} point(s) (cells "
                            f"{cells_of(cell, nonpos, 6)}): a loss must be > 0 (it is fitted in "
                            f"relative error / log L)")
    for v, a in V.items():
        badv = K.mask & ~(np.isfinite(a) & (a > 0))
        if np.any(badv):
            what = {"l": "depth l" + (f" - {depth_offset:g}" if depth_offset else "")}.get(v, v)
            src = cols.get(v, "N")
            raise AnalysisError(f"{what} (column {src!r}) must be positive and finite; it is "
                                f"{float(a[badv][0]):g} at {int(badv.sum())} point(s) "
                                f"(cells {cells_of(cell, badv, 6)})"
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
        extra["peak_lr"] = peak_lr(T, run)
    for c in ("tokens", "flops_per_token", "eval_stderr", "m", "l", "N", "step", "tau_lr", "lr"):
        if c in T:
            try:
                extra[c] = float_column(T, c)
            except AnalysisError:
                if c in ("tokens", "flops_per_token", "m", "l", "N"):
                    raise
                notes.append(f"column {c!r} is not numeric and was ignored")
    if "tokens" not in extra and "D" in T:
        extra["tokens"] = float_column(T, "D")
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
    L = float_column(T, loss_col)
    loss_col = names.get(loss_col, loss_col)
    notes.append(f"loss: column {loss_col!r}" + (f"; time variable {time_var}: column {time_col!r}"
                                                  if time_col else ""))
    variant = as_str(T["variant"]) if "variant" in T else np.full(n_rows, "all")
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
                 exclusions=ex, row=np.arange(n_rows), columns={"loss": loss_col, **cols},
                 seed=as_str(T["seed"]) if "seed" in T else None)
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
            return names.get(c, c), float_column(T, c)
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
    lr = peak_lr(T, run)
    shape = [c for c in shape_columns(T, law) if c != "lr"]
    budget_name, budget = _budget(T, V, time_var, time, names, lr)
    seed = as_str(T["seed"]) if "seed" in T else np.full(len(L), "")
    key = np.array(["|".join(k) for k in zip(variant, *(as_str(float_column(T, c)) for c in shape),
                                              as_str(budget), seed)], dtype=str)
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
                          "budget_values": budget, "shape_values": {names.get(c, c): float_column(T, c) for c in shape}}
