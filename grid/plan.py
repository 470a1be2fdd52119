"""`scaling-grid run --dry-run`: the plan of a launch, and the memory check a launch runs first.

``plan_text(spec, options)`` lists the cells, their sizes and FLOPs, an estimate of the time at a
measured throughput, what is already done, and what each token mode would cost; it writes nothing.
``memory_check`` compiles the largest cells ahead of time against what one device holds.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError, device_memory, format_count, measure, memory_need, setup

from . import expand as E
from . import spec as S
from .cells import SHARED, check_data, costs, load_cells, mine, records, table_lengths
from .options import Options
from .store import FINAL_STATES, Store

WIDTH = 100  # the dry run fits a laptop terminal unless --wide


# ---------------------------------------------------------------------------------- memory check

def _memory_candidates(cells: Sequence[S.Cell], records: dict[str, dict[str, Any]]) -> list[S.Cell]:
    """The cells most likely to need the most memory: most parameters, largest activations."""
    def params(c: S.Cell) -> int:
        return records[c.id]["N"] + 2 * records[c.id]["vocab"] * c.m

    def acts(c: S.Cell) -> int:
        t = c.config.train
        rows = t.batch_size // t.grad_accum * c.config.model.seq_len
        return rows * (c.m * c.l * 16 + records[c.id]["vocab"] + c.l * c.config.model.heads * c.config.model.seq_len)
    out: list[S.Cell] = []
    for key in (params, acts):
        best = max(cells, key=lambda c: (key(c), c.id))
        if all(not _same_shape(best, o) for o in out):
            out.append(best)
    return out


def _same_shape(a: S.Cell, b: S.Cell) -> bool:
    def shape(c: S.Cell) -> tuple[Any, ...]:
        t = c.config.train
        return c.config.model, t.batch_size, t.grad_accum, t.steps_per_call, t.pack
    return shape(a) == shape(b)


def memory_check(cells: Sequence[S.Cell], records: dict[str, dict[str, Any]], tables: dict[str, int],
                 headroom: float = 0.9) -> list[tuple[S.Cell, int, float]]:
    """Compile the largest cells ahead of time and compare XLA's memory analysis with what one
    device holds. Raises ConfigError for a cell that cannot fit. Returns (cell, bytes, compile s)."""
    avail, what = device_memory()
    out = []
    for c in _memory_candidates(cells, records):
        pack = c.config.train.pack  # a full pack of this shape: what its cells may train in
        compiled, steps, dt = SHARED.lower(c.config, records[c.id]["vocab"], tables[c.id], pack)
        need = memory_need(compiled)  # per device, as sharded on the cell's mesh
        if need is None:
            continue
        if need > headroom * avail:
            t, mesh = c.config.train, steps.mesh.shape
            packed = f", train.pack {pack}" if pack > 1 else ""
            raise ConfigError(
                f"cell {c.name}: needs {need / 2**30:.1f} GiB per device (XLA memory analysis of its train "
                f"step: batch_size {t.batch_size}, grad_accum {t.grad_accum}, steps_per_call {t.steps_per_call}"
                f"{packed}, mesh data {mesh['data']} x fsdp {mesh['fsdp']} x tensor {mesh['tensor']}) but {what} is "
                f"{avail / 2**30:.1f} GiB; {'lower train.pack, ' if pack > 1 else ''}raise train.grad_accum or "
                "mesh.fsdp, lower train.batch_size or model.seq_len, or drop the largest widths/depths")
        out.append((c, need, dt))
    return out


# ------------------------------------------------------------------------------------- formatting

def _fmt_tokens(n: float) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:.0f}"


def _fmt_flops(x: float) -> str:
    return f"{x:.2e}"


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


def _backend() -> str:
    import jax
    return f"{jax.default_backend()} ({jax.device_count()} device{'s' if jax.device_count() > 1 else ''})"


# ------------------------------------------------------------------------------------------- plan

@dataclass
class _Plan:
    """What the plan's lines are made of."""
    cells: list[S.Cell]
    records: dict[str, dict[str, Any]]
    costs: dict[str, float]
    states: dict[str, dict[str, Any]]
    points: list[tuple[float, float, float]]  # measured throughput: (flops/token, flop/s, setup s)
    where: dict[str, int]                     # cell id -> shard

    def estimate(self, c: S.Cell) -> float:
        """Seconds to train `c` at the measured throughput (NaN with none measured)."""
        if not self.points:
            return math.nan
        f = self.records[c.id]["flops_per_token"]
        lf = math.log(f)
        pts = sorted(self.points)
        if len(pts) == 1 or lf <= math.log(pts[0][0]):
            rate, setup_s = pts[0][1], pts[0][2]
        elif lf >= math.log(pts[-1][0]):
            rate, setup_s = pts[-1][1], pts[-1][2]
        else:  # log-linear interpolation of FLOP/s in log FLOPs/token (small models run less efficiently)
            j = next(i for i in range(1, len(pts)) if math.log(pts[i][0]) >= lf)
            (f0, r0, s0), (f1, r1, s1) = pts[j - 1], pts[j]
            w = (lf - math.log(f0)) / max(math.log(f1) - math.log(f0), 1e-12)
            rate = math.exp((1 - w) * math.log(r0) + w * math.log(r1))
            setup_s = (1 - w) * s0 + w * s1
        return setup_s + c.train_tokens * f / rate

    def table(self, narrow: bool, n_shards: int) -> list[str]:
        """One row per cell. Narrow (default): the role is the id's suffix (-trunk, -wsd) and m, l are
        in it too (-w16-d2); a branch's steps read "start+own"; the shard column only when sharded."""
        head: tuple[str, ...] = ("cell", "role", "m", "l", "N", "tokens", "steps", "FLOPs", "est", "state", "shard")
        if narrow:
            head = ("cell", "N", "tokens", "steps", "FLOPs", "est", "state") + (("shard",) if n_shards > 1 else ())
        rows = []
        for c in self.cells:
            r, st = self.records[c.id], self.states[c.id]
            state = st.get("state", "pending")
            if state not in ("pending",) and st.get("step") is not None:
                state += f" {st['step']}/{r['total_steps']}"
            flops, est = _fmt_flops(self.costs[c.id]), _fmt_time(self.estimate(c))
            if narrow:
                steps_txt = f"{c.init_step}+{c.train_steps}" if c.init_step else str(c.train_steps)
                rows.append((c.id, f"{r['N']:,}", _fmt_tokens(c.tokens), steps_txt, flops, est, state)
                            + ((str(self.where[c.id]),) if n_shards > 1 else ()))
                continue
            toks = format_count(c.tokens) + (f" (from step {c.init_step})" if c.init_step else "")
            rows.append((c.id, c.role, str(c.m), str(c.l), f"{r['N']:,}", toks, str(c.train_steps), flops, est,
                         state, str(self.where[c.id])))
        widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
        return (["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
                + ["  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() for x in rows])


def _state_of(store: Store | None, cid: str) -> dict[str, Any]:
    if store is None:
        return {"state": "pending"}
    return store.status(cid)[0]


def _prepared_vocab(cells: Sequence[S.Cell]) -> dict[Any, int]:
    """The exact vocabulary (and the data checks) where the data is already prepared."""
    prepared: dict[Any, Any] = {}
    for c in cells:
        p = T.store_path(c.config.data)
        if c.config.data not in prepared and (p / "meta.json").is_file():
            prepared[c.config.data] = T.TokenStore.open(p)
    check_data(cells, prepared)
    return {d: s.vocab_size for d, s in prepared.items()}


def _finished_points(cells: Sequence[S.Cell], states: dict[str, dict[str, Any]],
                     recs: dict[str, dict[str, Any]]) -> list[tuple[float, float, float]]:
    """Throughput measured on the store's finished cells: (flops/token, flop/s, setup s) each."""
    points = []
    for c in cells:
        st = states[c.id]
        if st.get("state") == "done" and st.get("train_s") and st.get("trained_steps"):
            fl = st["trained_steps"] * c.config.tokens_per_step * recs[c.id]["flops_per_token"]
            points.append((recs[c.id]["flops_per_token"], fl / st["train_s"], st.get("setup_s", 0.0)))
    return points


def _timed_points(todo: Sequence[S.Cell], recs: dict[str, dict[str, Any]], tables: dict[str, int]
                  ) -> tuple[list[tuple[float, float, float]], str]:
    """Throughput measured by timing a few steps of the smallest and the largest cell to run, and how."""
    by_f = sorted(todo, key=lambda c: recs[c.id]["flops_per_token"])
    picks = [by_f[-1]] if by_f[0] is by_f[-1] else [by_f[0], by_f[-1]]
    points = []
    for c in picks:
        r = recs[c.id]
        rate, dt_c = measure(SHARED, c.config, r["vocab"], r["flops_per_token"], tables[c.id])
        points.append((r["flops_per_token"], rate, 2.0 * dt_c))
    return points, "measured by timing " + " and ".join(c.name for c in picks) + " on " + _backend()


def _memory_lines(opts: Options, todo: list[S.Cell], cells: list[S.Cell], recs: dict[str, dict[str, Any]],
                  tables: dict[str, int]) -> list[str]:
    """A --target's compile of every shape (memory, kernels, collectives), else this host's memory check."""
    lines = []
    if opts.target:  # the target's compiler, not this host's
        from . import aot
        target = T.parse_target(opts.target)
        reports = aot.check([c.config for c in todo or cells], target, count_flops=False)  # clearance: fits, kernels
        bad = sum(not r.fits for r in reports)
        lines.append(f"target {target.name}: {len(reports)} shape(s) compiled with its compiler, "
                     + (f"{bad} DO NOT FIT" if bad else "every one fits"))
        lines += aot.table(reports).splitlines()
    elif opts.memory_check and todo:
        for c, need, _ in memory_check(todo, recs, tables):
            avail, what = device_memory()
            lines.append(f"memory: {c.name} needs {need / 2**20:,.0f} MiB per device of {avail / 2**30:.1f} GiB "
                         f"({what}; XLA memory analysis)")
    return lines


def _mode_lines(spec: S.GridSpec, cells: list[S.Cell], recs: dict[str, dict[str, Any]],
                vocab: dict[Any, int]) -> list[str]:
    """The compute of the whole grid (all shards) in each token mode."""
    lines = ["compute by token mode (whole grid, all shards):"]
    for mode in S.TOKEN_MODES:
        try:
            mc = cells if mode == spec.tokens_mode else E.expand(E.with_mode(spec, mode), check_paths=False,
                                                                 lenient_wsd=True)
        except ConfigError as e:
            lines.append(f"  {mode:9s} not possible for this spec: {e}")
            continue
        mr = recs if mc is cells else records(mc, vocab)
        tok = sum(c.train_tokens for c in mc)
        fl = sum(c.train_tokens * mr[c.id]["flops_per_token"] for c in mc)
        single = sum(1 for c in mc if c.role == "separate") if mode == "wsd" else 0
        lines.append(f"  {mode:9s} {len(mc):4d} runs  {_fmt_tokens(tok):>8s} tokens  {_fmt_flops(fl)} FLOPs"
                     + ("   <- this spec" if mode == spec.tokens_mode else "")
                     + (f"   ({single} single-budget shape(s) counted as separate runs)" if single else ""))
    return lines


def _totals_line(plan: _Plan, mine: list[S.Cell], todo: list[S.Cell], how: str, opts: Options) -> str:
    states = plan.states
    done = sum(1 for c in mine if states[c.id].get("state") == "done")
    div = sum(1 for c in mine if states[c.id].get("state") == "diverged")
    return (f"already: {done} done, {div} diverged; to run: {len(todo)} cells, "
            f"{_fmt_tokens(sum(c.train_tokens for c in todo))} tokens, "
            f"{_fmt_flops(sum(plan.costs[c.id] for c in todo))} FLOPs, "
            f"estimated {_fmt_time(sum(plan.estimate(c) for c in todo))}"
            + (f" ({how})" if how else " (no time estimate for a --target: timings need its hardware)"
               if opts.target else " (no throughput measured: --no-measure)"))


def _path_lines(opts: Options, cells: Sequence[S.Cell]) -> list[str]:
    """Where everything goes and comes from, resolved: the store, checkpoints, token stores and corpus
    files (the spec's relative paths against its folder, the flags' against the current directory)."""
    def shown(p: str) -> str:
        return p if T.is_remote(p) else T.local(p)
    rows = {"store": [shown(opts.store)],
            "checkpoints": [shown(opts.checkpoints) if opts.checkpoints else T.join(opts.store, "checkpoints")],
            "data.root": list(dict.fromkeys(shown(c.config.data.root) for c in cells)),
            "data.paths": list(dict.fromkeys(shown(p) for c in cells for p in c.config.data.paths))}
    return [f"{k + ':':13}{', '.join(v)}" for k, v in rows.items() if v]


def _wrapped(lines: list[str], keep: range) -> list[str]:
    """The sentences around the table wrap at WIDTH; the table's rows (`keep`) are sized to fit it."""
    return [w for i, line in enumerate(lines)
            for w in ([line] if i in keep or len(line) <= WIDTH else
                      textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_long_words=False,
                                    break_on_hyphens=False))]


def plan_text(spec_path: str, opts: Options) -> str:
    """The --dry-run report. Writes nothing to the store."""
    spec, cells = load_cells(spec_path, opts)
    shard = opts.shard
    setup(compile_cache=opts.compile_cache)
    vocab = _prepared_vocab(cells)
    recs = records(cells, vocab)
    shard_costs = costs(records(cells, {}), cells)  # as `run` computes it: from the spec alone
    my_cells = mine(cells, shard, shard_costs)
    store = Store(opts.store) if Store(opts.store).exists() else None
    states = {c.id: _state_of(store, c.id) for c in cells}
    todo = [c for c in my_cells if states[c.id].get("state") not in FINAL_STATES]

    lines = [f"grid {spec.name!r} from {spec.source}: {len(cells)} cells, tokens mode {spec.tokens_mode}; "
             f"store {opts.store} ({'exists' if store else 'new'})"
             + (f"; shard {shard[0]}/{shard[1]}: {len(my_cells)} cells" if shard[1] > 1 else ""),
             *_path_lines(opts, cells)]
    # Throughput: finished cells in the store, else timing a few steps of the smallest and largest cell.
    points = _finished_points(cells, states, recs) if store is not None else []
    how = f"measured on {len(points)} finished cell(s) in the store" if points else ""
    tables = table_lengths(cells, vocab)
    mem_lines = _memory_lines(opts, todo, cells, recs, tables)
    if opts.measure and not opts.target and todo and len(points) < 2:  # timings need the target's hardware
        timed, how = _timed_points(todo, recs, tables)
        points += timed
    plan = _Plan(cells, recs, costs(recs, cells), states, points, S.shard_of(cells, shard[1], shard_costs))

    odd = [c.name for c in cells if (c.steps - (c.init_step or 0)) % c.config.train.steps_per_call]
    if odd:
        lines.append(f"note: {len(odd)} cell(s) (e.g. {odd[0]}) run a number of steps that is not a multiple of "
                     f"train.steps_per_call: their last chunk compiles a second train step; budgets that are "
                     f"multiples of batch_size x seq_len x steps_per_call avoid it")
    table = plan.table(not opts.wide, shard[1])
    keep = range(len(lines), len(lines) + len(table))
    lines += table
    lines.append(_totals_line(plan, my_cells, todo, how, opts))
    lines += mem_lines + _mode_lines(spec, cells, recs, vocab)
    return "\n".join(_wrapped(lines, keep) if not opts.wide else lines)
