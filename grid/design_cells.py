"""The grid's side of a design: cells as design candidates, what a cell costs, and the printed
comparison of grids (used by `design` over axes and by `design --from STORE`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import spec as S


def _flops_per_token(c: Any) -> float:
    return float(S.derived(c, S.expected_vocab(c.config))["flops_per_token"])


def cell_flops(c: Any) -> float:
    """What training a cell costs, FLOPs (a wsd branch: its cooldown; a trunk segment: its own steps)."""
    return c.train_tokens * _flops_per_token(c)


def cell_candidates(cells: list[Any], with_lr: bool = False, with_seed: bool = False
                    ) -> tuple[list[Any], list[dict[str, Any]]]:
    """A grid's cells (trunks left out: their cost is in their branches' ``stable``) as design
    candidates, and each one's cell point for a spec's ``cells:`` list."""
    from scaling_grid.analysis.design import Candidate

    from .prereg import final_tau
    cands, points = [], []
    for c in cells:
        if c.role == "trunk":
            continue
        fpt = _flops_per_token(c)
        point: dict[str, Any] = {"width": c.m, "depth": c.l, "tokens": c.tokens}
        if with_lr:
            point["lr"] = c.config.optim.lr
        if with_seed:
            point["seed"] = c.seed
        cands.append(Candidate(c.m, c.l, c.tokens, final_tau(c.config.to_dict()), cell_flops(c),
                               lr=point.get("lr"), seed=c.seed, trunk=c.parent,
                               stable=float((c.init_step or 0) * c.config.tokens_per_step * fpt)))
        points.append(point)
    return cands, points


def _fmt_rel(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100 * x:.3g}%"


def comparison_lines(rows: list[tuple[str, int, float, dict[str, float], dict[str, dict[str, Any]] | None]],
                     goals: list[str]) -> list[str]:
    """One line per grid and goal: cells, FLOPs, the predicted 95% width (delta method at the prior),
    and where simulated, the median realised width and the coverage."""
    out = [f"{'grid':<12}{'cells':>6}{'FLOPs':>11}  {'goal':<14}{'predicted':>10}{'realised':>10}{'coverage':>10}",
           f"{'':<31}{'(95% interval width / value)':>34}"]
    for name, n, flops, pred, sim in rows:
        for k, g in enumerate(goals):
            head = f"{name:<12}{n:>6}{flops:>11.3g}" if k == 0 else " " * 29
            s = (sim or {}).get(g)
            real = "-" if not s else _fmt_rel(s["width"]) if s["n"] else "refused"
            cov = f"{100 * s['coverage']:.0f}%" if s else "-"
            out.append(f"{head}  {g[:14]:<14}{_fmt_rel(2 * 1.959964 * pred[g]):>10}{real:>10}{cov:>10}")
    return out
