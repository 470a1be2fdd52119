"""`scaling-grid design`: choose the cells of a grid for a budget (analysis/design*.py; docs/design.md).

The candidates are a factorial over --widths/--depths/--tokens (+ --lrs, --seeds) expanded by the grid
code itself (so each cell's FLOPs, tau and wsd trunk are what `run` would train), or the rows of a
table (--candidates). The design is printed against the costliest full factorial within the same
budget (a table: against random subsets of the same cost), and checked by simulation."""
from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scaling_grid.trainer import ConfigError, format_count, parse_count

from . import expand as E
from . import spec as S
from .design_cells import cell_candidates, comparison_lines
from .exits import EXIT_OK

WIDTH = 100
# The base of a design without --base: the demo grid's (configs/demo.yaml): llama at 128 bytes of
# context on the embedded Shakespeare corpus, one wsd trunk per shape with 20% cooldowns.
DEFAULT_SPEC: dict[str, Any] = {
    "name": "design", "tokens_mode": "wsd",
    "base": {"model": {"variant": "llama", "seq_len": 128}, "data": {"source": "shakespeare", "tokenizer": "bytes"},
             "optim": {"lr": 3.0e-3, "decay_fraction": 0.2},
             "train": {"batch_size": 8, "steps_per_call": 10, "log_every": 10, "eval_every": 250,
                       "eval_batches": 40, "ckpt_every": 500}},
    "rules": {"heads": {"rule": "head_dim", "head_dim": 8}, "warmup": {"rule": "fraction", "fraction": 0.05}},
}
_HOURS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*h\s*$")


def parse_budget(text: str, throughput: str | None, target: str | None = None,
                 mfu: float | None = None) -> tuple[float, str]:
    """(FLOPs, how): a number of FLOPs (3e19), or hours (500h) at a measured throughput or at a
    target's vendor peak times the MFU the runs reach."""
    h = _HOURS.match(text)
    if h is None:
        try:
            flops = float(text)
        except ValueError:
            flops = float("nan")
        if not np.isfinite(flops) or flops <= 0:
            raise ConfigError(f"--budget {text!r}: expected FLOPs (e.g. 3e19) or hours with --throughput "
                              f"or --target (e.g. 500h)")
        return flops, f"{flops:.3g} FLOPs"
    hours = float(h.group(1))
    if target is not None and throughput is None:
        from scaling_grid.trainer import parse_target
        t = parse_target(target)
        if mfu is None or not 0 < mfu <= 1:
            raise ConfigError(f"--target {target}: hours become FLOPs at the fraction of peak the runs reach: "
                              f"add --mfu F (0 < F <= 1; measure it with benchmarks/throughput.py)")
        rate = t.peak_flops * mfu
        return hours * 3600 * rate, (f"{hours:g} h on {target} ({t.chips} x {t.peak_flops / t.chips / 1e12:g} "
                                     f"TFLOP/s peak, MFU {mfu:g}): {rate:.3g} FLOP/s")
    if throughput is None:
        raise ConfigError(f"--budget {text!r}: hours need a throughput: --throughput FILE (JSON lines of "
                          f"benchmarks/throughput.py, or {{\"flops_per_s\": X}}) or --target T --mfu F")
    rate = _flops_per_s(throughput)
    return hours * 3600 * rate, f"{hours:g} h at {rate:.3g} FLOP/s ({throughput})"


def _flops_per_s(path: str) -> float:
    """The median FLOP/s of a throughput file: benchmarks/throughput.py's JSON lines (flops_per_token
    x tokens_per_s), or one JSON object with flops_per_s."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        rows = [json.loads(s) for s in text.splitlines() if s.strip()]
    except (OSError, ValueError) as e:
        raise ConfigError(f"--throughput {path!r}: cannot read it as JSON lines ({e})") from None
    rates = []
    for r in rows:
        if isinstance(r, dict) and "flops_per_s" in r:
            rates.append(float(r["flops_per_s"]))
        elif isinstance(r, dict) and {"flops_per_token", "tokens_per_s"} <= set(r):
            rates.append(float(r["flops_per_token"]) * float(r["tokens_per_s"]))
    if not rates or not all(np.isfinite(rates)) or min(rates) <= 0:
        raise ConfigError(f"--throughput {path!r}: no line with flops_per_s, or flops_per_token and tokens_per_s")
    return float(np.median(rates))


def _axis(text: str | None, what: str, count: bool = False) -> list[Any]:
    if text is None:
        return []
    try:
        vals = [parse_count(v, what) if count else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected comma-separated numbers") from None
    return [int(v) if not count and float(v).is_integer() and what != "--lrs" else v for v in vals]


def spec_candidates(args: argparse.Namespace) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]]]:
    """(the spec as data, candidates, each candidate's cell point): every cell of the full factorial,
    expanded as `run` would expand it."""
    raw = dict(DEFAULT_SPEC)
    if args.base:
        raw = dict(yaml.safe_load(Path(args.base).read_text(encoding="utf-8")) or {})
    raw.pop("cells", None)
    if args.tokens_mode:
        raw["tokens_mode"] = args.tokens_mode
    axes: dict[str, list[Any]] = {"width": _axis(args.widths, "--widths"), "depth": _axis(args.depths, "--depths"),
                                  "tokens": _axis(args.tokens, "--tokens", count=True)}
    if not all(axes.values()):
        raise ConfigError("design: give --widths, --depths and --tokens (the candidate axes), or --candidates TABLE")
    for name, flag in (("lr", "lrs"), ("seed", "seeds")):
        if getattr(args, flag):
            axes[name] = _axis(getattr(args, flag), f"--{flag}")
    raw["axes"] = axes
    spec = S.parse_spec(yaml.safe_dump(raw, sort_keys=False), "design")
    cands, points = cell_candidates(E.expand(spec, check_paths=False), "lr" in axes, "seed" in axes)
    return raw, cands, points


def write_spec(raw: dict[str, Any], points: list[dict[str, Any]], path: str) -> None:
    """The design as a grid spec `run` takes as is: the base and rules kept, the chosen cells listed."""
    out = {k: v for k, v in raw.items() if k not in ("axes", "cells")}
    out["cells"] = points
    Path(path).write_text(yaml.safe_dump(out, sort_keys=False, default_flow_style=None), encoding="utf-8")


def _levels_line(cands: list[Any], idx: list[int]) -> list[str]:
    chosen = [cands[i] for i in idx]
    parts = []
    for what, key, fmt in (("widths", "width", str), ("depths", "depth", str),
                           ("tokens", "tokens", lambda v: format_count(int(v)))):
        vals = sorted({getattr(c, key) for c in chosen})
        counts = [sum(getattr(c, key) == v for c in chosen) for v in vals]
        parts.append(f"{what} " + ", ".join(f"{fmt(v if isinstance(v, float) and not v.is_integer() else int(v))}"
                                            f" x{n}" for v, n in zip(vals, counts)))
    return textwrap.wrap("chosen: " + "; ".join(parts), WIDTH, subsequent_indent="  ")


def _table_mode(args: argparse.Namespace, budget: float, prior: Any, goals: list[str], noise: float | None
                ) -> tuple[list[Any], Any, list[int], str, list[str], Any]:
    """--candidates TABLE: (candidates, design, baseline indices, baseline name, notes, write-out)."""
    from scaling_grid import analysis as A
    from scaling_grid.analysis.design_table import random_subset, split_flops, table_candidates
    mapping, flops_col = split_flops(args.map)
    raw = A.load_table(args.candidates)
    cands, notes = table_candidates(A.load_table(args.candidates, mapping), flops_col)
    d = A.choose(cands, budget, prior, goals, noise)
    rng = np.random.default_rng(0)
    subsets = [random_subset(cands, d.flops, rng) for _ in range(21)]
    score = [sum(v ** 2 for v in A.predicted([cands[i] for i in s], prior, goals, noise).values()) for s in subsets]
    median = subsets[int(np.argsort(score)[len(score) // 2])]

    def write(path: str) -> None:
        rows = [cands[i].row or 0 for i in d.chosen]
        A.write_prediction_csv({k: np.asarray(v)[rows] for k, v in raw.items()}, path)
    return cands, d, median, "random", notes, write


def cmd_design(args: argparse.Namespace) -> int:
    from scaling_grid import analysis as A
    budget, how = parse_budget(args.budget, args.throughput, args.target, args.mfu)
    goals = A.check_goals(args.goal or [])
    free = A.needs_free(goals)
    if args.noise is not None and not 0 < args.noise < 1:
        raise ConfigError(f"--noise {args.noise}: a relative noise (sd of log loss) in (0, 1), e.g. 0.01")
    if args.simulate < 0:
        raise ConfigError(f"--simulate {args.simulate}: a number of simulated grids >= 0")
    if args.out:
        A.check_output(args.out, "--out")
    if args.from_store:
        return _grow_mode(args, budget, how, goals, free)
    prior = A.Prior.from_fit(args.prior, free) if args.prior else A.Prior.default(free)
    noise = args.noise if args.noise is not None else prior.noise
    if args.candidates:
        cands, d, base, base_name, notes, write = _table_mode(args, budget, prior, goals, noise)
        what = f"{len(cands)} rows of {args.candidates}"
    else:
        raw, cands, points = spec_candidates(args)
        wsd = raw.get("tokens_mode") == "wsd"
        d = A.choose(cands, budget, prior, goals, noise, min_branches=2 if wsd else 1)
        base, base_name, notes = A.factorial(cands, budget, 2 if wsd else 1), "factorial", []

        def write(path: str) -> None:
            write_spec(raw, [points[i] for i in d.chosen], path)
        what = f"{len(cands)} cells ({'wsd: a trunk per shape' if wsd else 'separate runs'})"
    lines = [f"design for {', '.join(goals)}: law {prior.law.name}, prior {prior.source}, noise {noise:.3g} "
             f"relative", f"budget {how}; candidates: {what}"]
    lines += notes + d.notes
    if len(d.chosen) == len(cands):
        lines.append(f"the budget buys every candidate ({A.design_cost(cands):.3g} FLOPs): nothing was left out")
    grids = [("design", d.chosen)] + ([(base_name, base)] if base else [])
    rows = []
    for name, idx in grids:
        cells = [cands[i] for i in idx]
        sim = A.simulate(cells, prior, goals, args.simulate, noise, n_boot=args.sim_boot) if args.simulate else None
        rows.append((name, len(idx), A.design_cost(cells), A.predicted(cells, prior, goals, noise), sim))
    if not base:
        lines.append(f"no {base_name} grid fits the budget: nothing to compare with")
    lines += comparison_lines(rows, goals)
    for name, _, _, _, sim in rows:
        s = next(iter((sim or {}).values()), None)
        if s and s["n"] < s["draws"]:
            lines.append(f"{name}: the fit refused {s['draws'] - s['n']} of {s['draws']} simulated grids (too few "
                         f"levels or runs to identify the law); a refused grid counts as not covering")
    if args.simulate:
        lines.append(f"realised: median over {args.simulate} grids drawn from the prior with the noise, each fitted "
                     f"with `fit` ({args.sim_boot} bootstrap draws); coverage: intervals holding the prior's value")
    lines += _levels_line(cands, d.chosen)
    if args.out:
        write(args.out)
        lines.append(f"design -> {args.out}")
    _print(lines)
    return EXIT_OK


def _print(lines: list[str]) -> None:
    print("\n".join(x for block in lines for x in (textwrap.wrap(block, WIDTH, subsequent_indent="  ")
                                                     if len(block) > WIDTH else [block])), flush=True)


def _grow_mode(args: argparse.Namespace, budget: float, how: str, goals: list[str], free: bool) -> int:
    """--from STORE: the next cells of a grid that has run, as an extension of its spec."""
    from .design_from import design_from
    if args.candidates:
        raise ConfigError("design: --from STORE grows a grid's spec; --candidates chooses among a table's rows; "
                          "give one")
    lines, write = design_from(args, budget, how, goals, free)
    _print(lines)
    if args.out:
        _print(write(args.out))
    return EXIT_OK
