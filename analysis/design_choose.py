"""The search of analysis/design.py: greedy additions ranked by gain per FLOP, then single-cell
exchanges, under the budget; the delta-method prediction for any set of cells; the habitual full
factorial of the same cost (the comparison every design is printed against)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .design import (
    RIDGE_REL,
    WSD_TRUNK_CORR,
    Candidate,
    Design,
    Info,
    Prior,
    check_goals,
    design_cost,
    gradients,
    group_info,
    jacobian,
    levels,
    needs_free,
    score,
    score_batch,
)
from .errors import AnalysisError


class Chooser:
    """Greedy additions by gain per FLOP, then single-cell exchanges, under the budget and the
    constraints (a wsd trunk with at least ``min_branches`` branches; 3 levels per axis when an
    exponent is a goal)."""

    def __init__(self, allc: list[Candidate], n_spent: int, budget: float, prior: Prior, goals: list[str],
                 sigma: float, rho: float, min_branches: int):
        self.allc, self.n_spent, self.budget, self.sigma = allc, n_spent, budget, sigma
        self.min_branches, self.min_levels = min_branches, 3 if needs_free(goals) else 0
        N_ref = max(12.0 * c.width ** 2 * c.depth for c in allc)
        self.vals, self.grads = gradients(prior, goals, N_ref, t_per_token(allc, prior))
        ridge = np.diag((sigma / (RIDGE_REL * np.maximum(np.abs(prior.theta), 1e-3))) ** 2) / sigma ** 2
        self.groups = [c.trunk if c.trunk is not None else f"#{i}" for i, c in enumerate(allc)]
        self.info = Info(jacobian(prior.law, prior.theta, allc), self.groups, rho, ridge)
        self.spent = list(range(n_spent))
        self.outer = np.einsum("ni,nj->nij", self.info.J, self.info.J)

    def cost(self, chosen: Sequence[int]) -> float:
        return design_cost([self.allc[i] for i in chosen], self.allc[:self.n_spent])

    def crit(self, chosen: Sequence[int]) -> tuple[float, np.ndarray]:
        return score(self.info.total(self.spent + list(chosen)), self.vals, self.grads, self.sigma)

    def ok(self, chosen: Sequence[int], final: bool = True) -> bool:
        members = self.spent + list(chosen)
        if self.min_branches > 1:
            count: dict[str, int] = {}
            for i in members:
                if self.allc[i].trunk is not None:
                    g = self.groups[i]  # a spent trunk already satisfies the constraint
                    count[g] = count.get(g, 0) + (self.min_branches if i < self.n_spent else 1)
            if any(0 < n < self.min_branches for n in count.values()):
                return False
        return not (final and self.min_levels and min(levels([self.allc[i] for i in members])) < self.min_levels)

    def moves(self, chosen: list[int]) -> list[tuple[int, ...]]:
        taken = set(self.spent) | set(chosen)
        live = {self.groups[i] for i in taken}
        free = [i for i in range(self.n_spent, len(self.allc)) if i not in taken]
        out: list[tuple[int, ...]] = []
        for k, i in enumerate(free):
            c = self.allc[i]
            if self.min_branches > 1 and c.trunk is not None and self.groups[i] not in live:
                out += [(i, j) for j in free[k + 1:] if self.groups[j] == self.groups[i]]
            else:
                out.append((i,))
        return out

    def _batch(self, chosen: list[int], moves: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """(criterion after each move, its extra FLOPs), all moves at once."""
        members = self.spent + chosen
        I = self.info.total(members)
        by: dict[str, list[int]] = {}
        need: dict[str, float] = {}
        for i in members:
            by.setdefault(self.groups[i], []).append(i)
            c = self.allc[i]
            if c.trunk is not None:
                need[c.trunk] = max(need.get(c.trunk, 0.0), c.stable)
        mats = np.empty((len(moves),) + I.shape)
        dc = np.empty(len(moves))
        J, rho = self.info.J, self.info.rho
        for k, mv in enumerate(moves):
            old = by.get(self.groups[mv[0]], [])
            if rho == 0 or (not old and len(mv) == 1):
                mats[k] = I + sum(self.outer[i] for i in mv)
            else:
                mats[k] = I + group_info(J[old + list(mv)], rho) - (group_info(J[old], rho) if old else 0.0)
            cs = [self.allc[i] for i in mv]
            dc[k] = sum(c.flops for c in cs)
            if cs[0].trunk is not None:
                dc[k] += max(0.0, max(c.stable for c in cs) - need.get(cs[0].trunk, 0.0))
        return score_batch(mats, self.vals, self.grads, self.sigma), dc

    def greedy(self, chosen: list[int], notes: list[str]) -> list[int]:
        spent_cost = self.cost(chosen)
        while True:
            cur, _ = self.crit(chosen)
            have = [self.allc[i] for i in self.spent + chosen]
            short = [a for a, n in enumerate(levels(have)) if n < self.min_levels]
            mvs = [mv for mv in self.moves(chosen) if self.ok(chosen + list(mv), final=False)
                   and (not short or self._adds_level(have, mv, short))]
            if mvs:
                f, dc = self._batch(chosen, mvs)
                rate = np.where(spent_cost + dc <= self.budget * (1 + 1e-9), (cur - f) / np.maximum(dc, 1e-300),
                                -np.inf)
                k = int(np.argmax(rate))
            if not mvs or not rate[k] > 0:
                if short and have:
                    notes.append(f"the budget does not reach 3 levels on every axis "
                                 f"(widths, depths, times: {levels(have)}): the exponents cannot be tested")
                return chosen
            chosen = chosen + list(mvs[k])
            spent_cost += float(dc[k])

    def _adds_level(self, have: list[Candidate], mv: tuple[int, ...], short: list[int]) -> bool:
        old, new = levels(have), levels(have + [self.allc[i] for i in mv])
        return any(new[a] > old[a] for a in short)

    def exchange(self, chosen: list[int], passes: int = 3) -> list[int]:
        """Swap one chosen cell for one not chosen while that lowers the criterion within budget."""
        for _ in range(passes):
            improved = False
            for r in list(chosen):
                base = [i for i in chosen if i != r]
                cur, _ = self.crit(chosen)
                mvs = [mv for mv in self.moves(base) if len(mv) == 1 and mv[0] != r and self.ok(base + [mv[0]])]
                if not mvs:
                    continue
                f, dc = self._batch(base, mvs)
                f = np.where(self.cost(base) + dc <= self.budget * (1 + 1e-9), f, np.inf)
                k = int(np.argmin(f))
                if f[k] < cur * (1 - 1e-6):
                    chosen, improved = base + [mvs[k][0]], True
            if not improved:
                break
        return chosen


def t_per_token(cells: Sequence[Candidate], prior: Prior) -> float | None:
    """tau per token: the prior's, else the median over the cells (None without tokens)."""
    if prior.t_per_token is not None:
        return prior.t_per_token
    r = [c.tau / c.tokens for c in cells if c.tokens > 0]
    return float(np.median(r)) if r else None


def rho_of(cells: Sequence[Candidate], trunk_corr: float | None) -> float:
    if trunk_corr is not None:
        return trunk_corr
    return WSD_TRUNK_CORR if any(c.trunk is not None for c in cells) else 0.0


def choose(candidates: Sequence[Candidate], budget: float, prior: Prior, goals: Sequence[str],
           noise: float | None = None, spent: Sequence[Candidate] = (), trunk_corr: float | None = None,
           min_branches: int = 1) -> Design:
    """The candidates to train for ``goals`` within ``budget`` FLOPs (``spent``: cells already
    measured, their information counted and their cost paid). ``min_branches``: a wsd trunk is
    chosen with at least this many branches (2 where the spec must expand)."""
    goals = check_goals(goals)
    if not candidates:
        raise AnalysisError("no candidate cells to choose from")
    if not budget > 0:
        raise AnalysisError(f"budget {budget!r}: must be a positive number of FLOPs")
    allc = list(spent) + list(candidates)
    sigma = noise if noise is not None else prior.noise
    ch = Chooser(allc, len(spent), budget, prior, goals, sigma, rho_of(allc, trunk_corr), min_branches)
    notes: list[str] = []
    chosen = ch.greedy([], notes)
    if not chosen:
        raise AnalysisError(f"budget {budget:.3g} FLOPs: not even the cheapest cell fits (it costs "
                            f"{min(ch.cost([i]) for i in range(len(spent), len(allc))):.3g})")
    chosen = ch.greedy(ch.exchange(chosen), [])
    crit, rel = ch.crit(chosen)
    idx = sorted(i - len(spent) for i in chosen)
    return Design(idx, ch.cost(chosen), budget, goals, dict(zip(goals, map(float, rel))), crit, notes)


def predicted(cells: Sequence[Candidate], prior: Prior, goals: Sequence[str], noise: float | None = None,
              spent: Sequence[Candidate] = (), trunk_corr: float | None = None) -> dict[str, float]:
    """Each goal's predicted relative sd (delta method at the prior) for a given set of cells."""
    goals = check_goals(goals)
    allc = list(spent) + list(cells)
    sigma = noise if noise is not None else prior.noise
    ch = Chooser(allc, len(spent), float("inf"), prior, goals, sigma, rho_of(allc, trunk_corr), 1)
    return dict(zip(goals, map(float, ch.crit(list(range(len(spent), len(allc))))[1])))


def factorial(candidates: Sequence[Candidate], budget: float, min_budgets: int = 1) -> list[int]:
    """The costliest full factorial within ``budget``, as a grid is laid out by habit: evenly spaced
    levels of widths, depths and token budgets, the first seeds, every lr. [] if none fits."""
    axes = ("width", "depth", "tokens", "seed")
    values = [sorted({getattr(c, a) for c in candidates}, key=lambda v: (v is None, v or 0)) for a in axes]
    best: tuple[float, int] | None = None
    out: list[int] = []
    for counts in np.ndindex(*(len(v) for v in values)):
        if counts[2] + 1 < min_budgets:
            continue
        keep = [{v[int(j)] for j in np.round(np.linspace(0, len(v) - 1, n + 1))} for v, n in zip(values[:3], counts)]
        keep.append(set(values[3][:counts[3] + 1]))
        idx = [i for i, c in enumerate(candidates) if all(getattr(c, a) in k for a, k in zip(axes, keep))]
        cost = design_cost([candidates[i] for i in idx])
        if cost <= budget * (1 + 1e-9) and (best is None or (cost, len(idx)) > best):
            best, out = (cost, len(idx)), idx
    return out
