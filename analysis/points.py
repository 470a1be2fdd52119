"""The points of a fit (:class:`Points`) and, for best-lr, every candidate lr (:class:`Envelope`).

They are made by :func:`selection.select_points` from a table (:mod:`columns`); every row dropped, and
why, is recorded in ``Points.exclusions``; what was chosen in ``Points.notes``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


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
    seed: np.ndarray | None = None      # each point's seed (str) where the table has a seed column: replicates

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, mask: np.ndarray) -> Points:
        mask = np.asarray(mask)
        return replace(self, variant=self.variant[mask], run=self.run[mask], cell=self.cell[mask],
                       loss=self.loss[mask], row=self.row[mask], V={k: v[mask] for k, v in self.V.items()},
                       extra={k: v[mask] for k, v in self.extra.items()},
                       notes=list(self.notes), exclusions=list(self.exclusions),
                       family=None if self.family is None else self.family[mask],
                       seed=None if self.seed is None else self.seed[mask],
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
    draw from these (:func:`resampling.envelope_counts`)."""
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
