"""Candidates from a table's rows (``design --candidates TABLE``), and random subsets of a cost (the
baseline a table's design is compared with)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .columns import as_str, truthy
from .design import Candidate, design_cost
from .errors import AnalysisError


def split_flops(mapping: str | None) -> tuple[str | None, str | None]:
    """``--map`` text without its ``flops=COLUMN`` item (the one key `fit` does not know), and that column."""
    if not mapping:
        return None, None
    keep, flops = [], None
    for item in mapping.split(","):
        k, _, v = item.partition("=")
        if k.strip() == "flops":
            flops = v.strip()
        elif item.strip():
            keep.append(item)
    return (",".join(keep) or None), flops


def table_candidates(T: Mapping[str, np.ndarray], flops_column: str | None = None
                     ) -> tuple[list[Candidate], list[str]]:
    """One candidate per row (rows with is_final false are not candidates): m, l and a time (tau_lr,
    else tau, else tokens or D); the cost from ``flops_column``, else flops_per_token x tokens, else
    6 N tokens (N = 12 m^2 l when absent). A branch names its trunk in ``parent``: such rows share
    noise as in a grid, but a table carries no trunk cost, so only the rows' own FLOPs count."""
    notes: list[str] = []
    for need in ("m", "l"):
        if need not in T:
            raise AnalysisError(f"--candidates: no column {need!r} (width m and depth l); map one with --map "
                                f"{need}=COLUMN")
    time = next((c for c in ("tau_lr", "tau", "tokens", "D") if c in T), None)
    if time is None:
        raise AnalysisError("--candidates: no time column (tau_lr, tau, tokens or D); map one with --map")
    tokens = next((np.asarray(T[c], float) for c in ("tokens", "D") if c in T), None)
    m, l = np.asarray(T["m"], float), np.asarray(T["l"], float)
    if flops_column is not None:
        if flops_column not in T:
            raise AnalysisError(f"--map flops={flops_column}: the table has no column {flops_column!r}")
        cost = np.asarray(T[flops_column], float)
        notes.append(f"cost: column {flops_column!r}")
    elif tokens is None:
        raise AnalysisError("--candidates: no tokens column to cost the rows from; map tokens (--map tokens=COL) "
                            "or a cost column (--map flops=COL)")
    elif "flops_per_token" in T:
        cost = np.asarray(T["flops_per_token"], float) * tokens
        notes.append("cost: flops_per_token x tokens")
    else:
        N = np.asarray(T["N"], float) if "N" in T else 12 * m * m * l
        cost = 6 * N * tokens
        notes.append("cost: 6 N D" + ("" if "N" in T else " with N = 12 m^2 l"))
    if time in ("tokens", "D"):
        notes.append(f"time: {time} (no tau_lr column): the prior's c_tau must then be per token")
    keep = truthy(T["is_final"]) if "is_final" in T else np.ones(len(m), bool)
    parent = as_str(T["parent"]) if "parent" in T else None
    out = []
    for i in np.flatnonzero(keep):
        tr = None if parent is None or parent[i].lower() in ("", "nan", "none") else str(parent[i])
        out.append(Candidate(float(m[i]), float(l[i]), float(tokens[i]) if tokens is not None else 0.0,
                             float(np.asarray(T[time], float)[i]), float(cost[i]),
                             seed=int(T["seed"][i]) if "seed" in T and np.isfinite(float(T["seed"][i])) else None,
                             trunk=tr, row=int(i)))
    bad = [c.row for c in out if not (np.isfinite(c.flops) and c.flops > 0 and c.tau > 0)]
    if bad:
        raise AnalysisError(f"--candidates: rows {bad[:5]} have no positive cost or time")
    return out, notes


def random_subset(candidates: Sequence[Candidate], budget: float, rng: np.random.Generator) -> list[int]:
    """Candidates in a random order, each kept while the total stays within ``budget``."""
    out: list[int] = []
    for i in rng.permutation(len(candidates)):
        if design_cost([candidates[j] for j in out + [int(i)]]) <= budget * (1 + 1e-9):
            out.append(int(i))
    return sorted(out)
