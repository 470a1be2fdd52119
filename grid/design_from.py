"""`scaling-grid design --from STORE`: grow a grid that has run (docs/design.md, "Growing a grid").

The store's finished cells are the data (their information counts, their FLOPs are spent); the prior
is their own fit unless --prior names one. The proposal is an extension of the store's latest spec
(grid/grow.py: every cell keeps its id, a wsd trunk is extended rather than retrained), so it adds
whole axis values: the search is greedy over the values of --tokens/--widths/--depths the spec does
not have yet, each step taking the value that lowers the goals' predicted variance most per FLOP,
within what is left of --budget."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scaling_grid.trainer import ConfigError, format_count, parse_count

from . import expand as E
from . import spec as S
from .design_cells import cell_candidates, cell_flops, comparison_lines

Adds = dict[str, list[int]]  # axis -> values to add


def _options(args: argparse.Namespace, spec: S.GridSpec) -> list[tuple[str, int]]:
    have = {ax: set(spec.axes.get(ax, [])) | {c[ax] for c in spec.cells if ax in c} for ax in ("tokens", "width",
                                                                                               "depth")}
    out = []
    for ax, text in (("tokens", args.tokens), ("width", args.widths), ("depth", args.depths)):
        for v in (text or "").split(","):
            if v.strip():
                n = parse_count(v.strip(), f"--{ax}s {v!r}") if ax == "tokens" else int(float(v))
                if n not in have[ax]:
                    out.append((ax, n))
    if not out:
        raise ConfigError("design --from: give the values the grid may grow by (--tokens, --widths, --depths) that "
                          "its spec does not have yet")
    return out


def _values(prior: Any) -> str:
    return ", ".join(f"{n} {v:.3g}" for n, v in zip(prior.law.param_names, prior.theta))


def _grown(text: str, adds: Adds) -> str:
    from .grow import grow_spec
    return grow_spec(text, adds.get("tokens", []), adds.get("width", []), adds.get("depth", []))


Score = tuple[float, float, int, dict[str, float]]  # criterion, FLOPs, new cells, goal -> relative sd


def _greedy(options: list[tuple[str, int]], evaluate: Callable[[Adds], Score], left: float, start: Score
            ) -> tuple[Adds, list[str], Score]:
    """Add, one at a time, the value whose growth lowers the criterion most per added FLOP while the
    growth costs at most ``left``: (the values added, the values that cannot be added and why, the score)."""
    chosen: Adds = {}
    refused: list[str] = []
    now = start
    while options:
        best: tuple[float, str, int, Score] | None = None
        for ax, v in options:
            try:
                sc = evaluate({**chosen, ax: chosen.get(ax, []) + [v]})
            except ConfigError as e:  # e.g. a wsd budget that is not larger than the spec's largest
                refused.append(f"{ax} {v}: {e}")
                options = [o for o in options if o != (ax, v)]
                break
            gain = (now[0] - sc[0]) / max(sc[1] - now[1], 1.0)
            if sc[1] <= left and gain > 0 and (best is None or gain > best[0]):
                best = (gain, ax, v, sc)
        else:
            if best is None:
                break
            _, ax, v, now = best
            chosen[ax] = chosen.get(ax, []) + [v]
            options = [o for o in options if o != (ax, v)]
    return chosen, refused, now


def design_from(args: argparse.Namespace, budget: float, how: str, goals: list[str], free: bool
                ) -> tuple[list[str], Callable[[str], list[str]]]:
    """(the printed lines, write(path) -> lines: the grown spec written and its cells recorded)."""
    from scaling_grid import analysis as A

    from .export import export_table
    from .grow import latest_spec
    from .store import Store
    store = args.from_store
    text = latest_spec(store)
    spec = S.parse_spec(text, f"{store}: its latest spec")
    recs, _ = Store(store).records()
    state = {r["config"]["id"]: r["status"].get("state", "pending") for r in recs}
    old = E.expand(spec, check_paths=False)
    old_ids = {c.id for c in old}
    done = [c for c in old if state.get(c.id) == "done"]
    spent_flops = sum(cell_flops(c) for c in done)
    left = budget - spent_flops
    lines = [f"design --from {store}: {len(done)} of {len(old)} cells done, {spent_flops:.3g} FLOPs spent; "
             f"budget {how}; left {max(left, 0):.3g} FLOPs"]
    if left <= 0:
        raise ConfigError(f"design --from {store}: the grid has spent {spent_flops:.3g} FLOPs, the budget is "
                          f"{budget:.3g}: nothing is left to grow it")
    if args.prior:
        prior = A.Prior.from_fit(args.prior, free)
    else:
        law = "universality-free" if free else "universality"
        fit = A.run_fit(export_table(store), law, n_boot=200)
        prior = A.Prior.from_fit_json(json.loads(fit.to_json()), free, f"the fit of {store}'s finished cells")
    noise = args.noise if args.noise is not None else prior.noise
    spent, _ = cell_candidates([c for c in done if c.role != "trunk"])

    def evaluate(adds: Adds) -> tuple[float, float, int, dict[str, float]]:
        cells = [c for c in E.expand(S.parse_spec(_grown(text, adds)), check_paths=False) if c.id not in old_ids]
        new, _ = cell_candidates(cells)
        with np.errstate(all="ignore"):
            pred = A.predicted(spent + new, prior, goals, noise)
        return sum(v ** 2 for v in pred.values()), sum(cell_flops(c) for c in cells), len(cells), pred

    with np.errstate(all="ignore"):
        now = A.predicted(spent, prior, goals, noise)
    if not all(np.isfinite(v) for v in now.values()):
        raise ConfigError(f"design --from {store}: the goals ({', '.join(goals)}) are not defined at the prior "
                          f"({prior.source}: {_values(prior)}); give a prior that defines them: --prior FIT.json")
    chosen, refused, (_, cost, n_new, pred) = _greedy(_options(args, spec), evaluate, left,
                                                      (sum(v ** 2 for v in now.values()), 0.0, 0, now))
    lines += [f"prior: {prior.source} (law {prior.law.name}); noise {noise:.3g} relative"]
    lines += [f"cannot add {r}" for r in refused]
    if not chosen:
        raise ConfigError(f"design --from {store}: no value of --tokens/--widths/--depths fits the {left:.3g} FLOPs "
                          f"left and improves the goals")
    words = "; ".join(f"{ax} " + ", ".join(format_count(v) if ax == "tokens" else str(v) for v in vs)
                      for ax, vs in chosen.items())
    lines += [f"grow by: {words} ({n_new} new cells, {cost:.3g} FLOPs)"]
    lines += comparison_lines([("now", len(done), spent_flops, now, None),
                               ("grown", len(done) + n_new, spent_flops + cost, pred, None)], goals)
    lines += ["predicted at the prior; no simulation here: the finished cells are real data, not draws"]

    def write(path: str) -> list[str]:
        from .grow import register_cells
        Path(path).write_text(_grown(text, chosen), encoding="utf-8")
        pending = register_cells(path, store)
        return [f"grown spec -> {path} (every cell of the store keeps its id); {len(pending)} cell(s) recorded in "
                f"{store}, not trained: `scaling-grid report {store}` pre-registers their final losses, "
                f"`scaling-grid run {path} --store {store}` trains them"]
    return lines, write
