"""Run a grid: every cell that is not done, in one process, resumable, shardable across hosts.

``run(spec, options)`` validates the spec (and, where JAX can tell, that the largest cells fit in
device memory) before any compute, prepares each distinct data config once, records the spec and
every cell's resolved config in the store, then trains this shard's cells one after another:

- done and diverged cells are skipped (a changed config is a new cell, so nothing is ever mixed);
- partial cells resume from their checkpoints (the trainer picks the newest readable one);
- a cell is claimed with a conditional write of its status, so two launchers never run one cell;
- an exception marks the cell failed (with the error) and the grid goes on; failed cells are
  retried by the next launch;
- SIGTERM: the running cell saves a checkpoint (the trainer does it), the launcher records it as
  preempted and exits with 143 so a requeue loop runs it again.

``plan_text(spec, options)`` is ``--dry-run``: the cells, their sizes and FLOPs, an estimate of the
time at a measured throughput, what is already done, and what each token mode would cost.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaling_grid.trainer import (
    ConfigError,
    Preemption,
    SharedSteps,
    UnreadableCheckpoint,
    format_count,
    measure,
    memory_need,
    path_of,
    saved_steps,
    set_aside,
)
from scaling_grid.trainer import table_lengths as compile_tables

if TYPE_CHECKING:
    pass
from scaling_grid.trainer import (
    Distributed,
    any_process,
    barrier,
    device_memory,
    from_process_0,
    is_writer,
    multi_process,
    peers,
    setup,
)

from . import spec as S
from .store import (
    FINAL_STATES,
    Store,
    check_writable,
    first_lost_step,
    host_id,
    is_stale,
    lost,
    now,
    process_start,
)

EXIT_OK, EXIT_FAILED, EXIT_PREEMPTED, EXIT_INTERRUPTED = 0, 1, 143, 130


@dataclass
class Options:
    store: str
    shard: tuple[int, int] = (0, 1)
    checkpoints: str | None = None     # checkpoint root: a folder or a gs:// URL (default: <store>/checkpoints)
    status_every: float = 15.0         # seconds between heartbeats of a running cell's status.json
    stale_after: float = 600.0         # a 'running' cell of another host with no heartbeat this long is taken over
    memory_check: bool = True          # AOT-compile the largest cells against device memory before launch
    measure: bool = True               # dry run: time a few steps for the estimate
    progress: bool = True
    retry_failed: bool = True
    distributed: Distributed | None = None  # join a multi-process job: all processes run every cell together
    tensorboard: str | None = None     # TensorBoard event files, one run per cell in <tensorboard>/<cell id>
    wandb: str | None = None           # a W&B project: one W&B run per cell, its id the cell id
    wide: bool = False                 # dry run: every column (default: lines fit WIDTH columns)
    compile_cache: str | None = None   # JAX's persistent compile cache: a folder or a gs:// URL (runtime.setup)
    target: str | None = None          # dry run: check memory for this accelerator with its compiler (grid/aot.py)
    out: Callable[[str], None] = field(default=lambda s: print(s, flush=True))


WIDTH = 100  # the dry run fits a laptop terminal unless --wide


# --------------------------------------------------------------------------------------- helpers

def _load(spec_path: str, opts: Options, check_paths: bool = True) -> tuple[S.GridSpec, list[S.Cell]]:
    spec = S.load_spec(spec_path)
    cells = S.expand(spec, check_paths=check_paths)
    check_writable(opts.store)
    if opts.checkpoints is not None:  # a bucket that cannot be reached fails here, before any compute
        check_writable(opts.checkpoints, "--checkpoints")
    return spec, cells


def _mine(cells: Sequence[S.Cell], shard: tuple[int, int], cost: dict[str, float] | None = None) -> list[S.Cell]:
    i, n = shard
    where = S.shard_of(cells, n, cost)
    return [c for c in cells if where[c.id] == i]


def _records(cells: Sequence[S.Cell], vocab: dict[Any, int]) -> dict[str, dict[str, Any]]:
    return {c.id: S.derived(c, vocab.get(c.config.data, S.expected_vocab(c.config))) for c in cells}


def _costs(records: dict[str, dict[str, Any]], cells: Sequence[S.Cell]) -> dict[str, float]:
    return {c.id: float(c.train_tokens) * records[c.id]["flops_per_token"] for c in cells}


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


_SHARED = SharedSteps()  # one compiled step per shape for the whole launch (trainer/compile.py)


def table_lengths(cells: Sequence[S.Cell], vocab: dict[Any, int] | None = None) -> dict[str, int]:
    """Per cell, the lr-table length of its shape: the longest run of that shape in the grid."""
    return compile_tables({c.id: c.config for c in cells},
                          {c.id: (vocab or {}).get(c.config.data, S.expected_vocab(c.config)) for c in cells})


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
        compiled, steps, dt = _SHARED.lower(c.config, records[c.id]["vocab"], tables[c.id], pack)
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


def _prepare_data(cells: Sequence[S.Cell]) -> dict[Any, Any]:
    """One token store per distinct data config (shared by every cell that uses it), then the checks
    that need the data: the validation split holds each cell's eval set, the train split a window."""
    from scaling_grid import trainer as T
    if not is_writer():  # process 0 tokenizes; the others open what it wrote (on a shared data.root)
        barrier("token stores prepared")
    stores = {}
    for c in cells:
        d = c.config.data
        if d not in stores:
            stores[d] = T.prepare(d)
    if is_writer():
        barrier("token stores prepared")
    check_data(cells, stores)
    return stores


def check_data(cells: Sequence[S.Cell], stores: dict[Any, Any]) -> None:
    for c in cells:
        st, t = stores.get(c.config.data), c.config.train
        if st is None:
            continue
        try:
            st.check_fits(t.eval_batches * t.batch_size, c.config.model.seq_len)
        except ConfigError as e:
            raise ConfigError(f"cell {c.name}: {e}") from None


# ------------------------------------------------------------------------------------------ plan

def _state_of(store: Store | None, cid: str) -> dict[str, Any]:
    if store is None:
        return {"state": "pending"}
    return store.status(cid)[0]


def plan_text(spec_path: str, opts: Options) -> str:
    """The --dry-run report. Writes nothing to the store."""
    spec, cells = _load(spec_path, opts)
    shard = opts.shard
    setup(compile_cache=opts.compile_cache)
    from scaling_grid import trainer as T
    prepared: dict[Any, Any] = {}
    for c in cells:  # exact vocabulary (and data checks) where the data is already prepared
        p = T.store_path(c.config.data)
        if c.config.data not in prepared and (p / "meta.json").is_file():
            prepared[c.config.data] = T.TokenStore.open(p)
    check_data(cells, prepared)
    vocab = {d: s.vocab_size for d, s in prepared.items()}
    records = _records(cells, vocab)
    costs = _costs(records, cells)
    shard_costs = _costs(_records(cells, {}), cells)  # as `run` computes it: from the spec alone
    mine = _mine(cells, shard, shard_costs)
    store = Store(opts.store) if Store(opts.store).exists() else None
    states = {c.id: _state_of(store, c.id) for c in cells}
    todo = [c for c in mine if states[c.id].get("state") not in FINAL_STATES]

    lines = [f"grid {spec.name!r} from {spec.source}: {len(cells)} cells, tokens mode {spec.tokens_mode}; "
             f"store {opts.store} ({'exists' if store else 'new'})"
             + (f"; shard {shard[0]}/{shard[1]}: {len(mine)} cells" if shard[1] > 1 else "")]

    # Throughput: finished cells in the store, else timing a few steps of the smallest and largest cell.
    points: list[tuple[float, float, float]] = []  # (flops/token, flop/s, setup s)
    how = ""
    if store is not None:
        for c in cells:
            st = states[c.id]
            if st.get("state") == "done" and st.get("train_s") and st.get("trained_steps"):
                fl = st["trained_steps"] * c.config.tokens_per_step * records[c.id]["flops_per_token"]
                points.append((records[c.id]["flops_per_token"], fl / st["train_s"], st.get("setup_s", 0.0)))
        if points:
            how = f"measured on {len(points)} finished cell(s) in the store"
    mem_lines = []
    tables = table_lengths(cells, vocab)
    if opts.target:  # the target's compiler, not this host's: memory, kernels and collectives of every shape
        from scaling_grid.trainer.target import parse_target

        from . import aot
        target = parse_target(opts.target)
        reports = aot.check([c.config for c in todo or cells], target, count_flops=False)  # clearance: fits, kernels
        bad = sum(not r.fits for r in reports)
        mem_lines.append(f"target {target.name}: {len(reports)} shape(s) compiled with its compiler, "
                         + (f"{bad} DO NOT FIT" if bad else "every one fits"))
        mem_lines += aot.table(reports).splitlines()
    elif opts.memory_check and todo:
        for c, need, _ in memory_check(todo, records, tables):
            avail, what = device_memory()
            mem_lines.append(f"memory: {c.name} needs {need / 2**20:,.0f} MiB per device of {avail / 2**30:.1f} GiB "
                             f"({what}; XLA memory analysis)")
    if opts.measure and not opts.target and todo and len(points) < 2:  # timings need the target's hardware
        by_f = sorted(todo, key=lambda c: records[c.id]["flops_per_token"])
        picks = [by_f[-1]] if by_f[0] is by_f[-1] else [by_f[0], by_f[-1]]
        for c in picks:
            r = records[c.id]
            rate, dt_c = measure(_SHARED, c.config, r["vocab"], r["flops_per_token"], tables[c.id])
            points.append((r["flops_per_token"], rate, 2.0 * dt_c))
        how = "measured by timing " + " and ".join(c.name for c in picks) + " on " + _backend()

    def estimate(c: S.Cell) -> float:
        if not points:
            return math.nan
        f = records[c.id]["flops_per_token"]
        lf = math.log(f)
        pts = sorted(points)
        if len(pts) == 1 or lf <= math.log(pts[0][0]):
            rate, setup = pts[0][1], pts[0][2]
        elif lf >= math.log(pts[-1][0]):
            rate, setup = pts[-1][1], pts[-1][2]
        else:  # log-linear interpolation of FLOP/s in log FLOPs/token (small models run less efficiently)
            j = next(i for i in range(1, len(pts)) if math.log(pts[i][0]) >= lf)
            (f0, r0, s0), (f1, r1, s1) = pts[j - 1], pts[j]
            w = (lf - math.log(f0)) / max(math.log(f1) - math.log(f0), 1e-12)
            rate = math.exp((1 - w) * math.log(r0) + w * math.log(r1))
            setup = (1 - w) * s0 + w * s1
        return setup + c.train_tokens * f / rate

    # Narrow (default): the role is the id's suffix (-trunk, -wsd) and m, l are in it too (-w16-d2);
    # a branch's steps read "start+own"; the shard column only when sharded. --wide: every column.
    narrow = not opts.wide
    head: tuple[str, ...] = ("cell", "role", "m", "l", "N", "tokens", "steps", "FLOPs", "est", "state", "shard")
    if narrow:
        head = ("cell", "N", "tokens", "steps", "FLOPs", "est", "state") + (("shard",) if shard[1] > 1 else ())
    odd = [c.name for c in cells if (c.steps - (c.init_step or 0)) % c.config.train.steps_per_call]
    if odd:
        lines.append(f"note: {len(odd)} cell(s) (e.g. {odd[0]}) run a number of steps that is not a multiple of "
                     f"train.steps_per_call: their last chunk compiles a second train step; budgets that are "
                     f"multiples of batch_size x seq_len x steps_per_call avoid it")
    where = S.shard_of(cells, shard[1], shard_costs)
    rows = []
    for c in cells:
        r = records[c.id]
        st = states[c.id]
        state = st.get("state", "pending")
        if state not in ("pending",) and st.get("step") is not None:
            state += f" {st['step']}/{r['total_steps']}"
        if narrow:
            steps_txt = f"{c.init_step}+{c.train_steps}" if c.init_step else str(c.train_steps)
            rows.append((c.id, f"{r['N']:,}", _fmt_tokens(c.tokens), steps_txt, _fmt_flops(costs[c.id]),
                         _fmt_time(estimate(c)), state) + ((str(where[c.id]),) if shard[1] > 1 else ()))
            continue
        toks = format_count(c.tokens) + (f" (from step {c.init_step})" if c.init_step else "")
        rows.append((c.id, c.role, str(c.m), str(c.l), f"{r['N']:,}", toks, str(c.train_steps),
                     _fmt_flops(costs[c.id]), _fmt_time(estimate(c)), state, str(where[c.id])))
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
    table_at = len(lines)
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() for x in rows]
    table_end = len(lines)

    tot_tok = sum(c.train_tokens for c in todo)
    tot_fl = sum(costs[c.id] for c in todo)
    tot_t = sum(estimate(c) for c in todo)
    done = sum(1 for c in mine if states[c.id].get("state") == "done")
    div = sum(1 for c in mine if states[c.id].get("state") == "diverged")
    lines.append(f"already: {done} done, {div} diverged; to run: {len(todo)} cells, {_fmt_tokens(tot_tok)} tokens, "
                 f"{_fmt_flops(tot_fl)} FLOPs, estimated {_fmt_time(tot_t)}"
                 + (f" ({how})" if how else " (no time estimate for a --target: timings need its hardware)"
                    if opts.target else " (no throughput measured: --no-measure)"))
    lines += mem_lines
    lines.append("compute by token mode (whole grid, all shards):")
    for mode in S.TOKEN_MODES:
        try:
            mc = cells if mode == spec.tokens_mode else S.expand(S.with_mode(spec, mode), check_paths=False,
                                                                 lenient_wsd=True)
        except ConfigError as e:
            lines.append(f"  {mode:9s} not possible for this spec: {e}")
            continue
        mr = records if mc is cells else _records(mc, vocab)
        tok = sum(c.train_tokens for c in mc)
        fl = sum(c.train_tokens * mr[c.id]["flops_per_token"] for c in mc)
        single = sum(1 for c in mc if c.role == "separate") if mode == "wsd" else 0
        lines.append(f"  {mode:9s} {len(mc):4d} runs  {_fmt_tokens(tok):>8s} tokens  {_fmt_flops(fl)} FLOPs"
                     + ("   <- this spec" if mode == spec.tokens_mode else "")
                     + (f"   ({single} single-budget shape(s) counted as separate runs)" if single else ""))
    if narrow:  # the sentences around the table wrap at WIDTH; the table's rows are sized to fit it
        import textwrap
        lines = [w for i, line in enumerate(lines)
                 for w in ([line] if table_at <= i < table_end or len(line) <= WIDTH else
                           textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_long_words=False,
                                         break_on_hyphens=False))]
    return "\n".join(lines)


def _backend() -> str:
    import jax
    return f"{jax.default_backend()} ({jax.device_count()} device{'s' if jax.device_count() > 1 else ''})"


# ------------------------------------------------------------------------------------------- run

class _LiveSink:
    """Tracks a running cell for the heartbeat and the overall bar."""

    def __init__(self, cell: S.Cell, bar: Any) -> None:
        self.cell, self.bar = cell, bar
        self.step = cell.init_step or 0
        self.first_step: int | None = None
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.t_start: float | None = None
        self.ended: tuple[str, int, str] | None = None  # (status, step, message) once the run has ended
        self.lock = threading.Lock()

    def start(self, total_steps: int, first_step: int) -> None:
        self.t_start = time.perf_counter()
        if self.bar is not None:  # a resumed cell: the steps before its checkpoint are already done
            self.bar.update((first_step - self.step) * self.cell.config.tokens_per_step)
        self.first_step = self.step = first_step

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        new = int(steps[-1])
        if self.bar is not None:
            self.bar.update((new - self.step) * self.cell.config.tokens_per_step)
        with self.lock:
            self.step, self.loss = new, float(values["loss"][-1])

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        with self.lock:
            self.eval_loss = float(loss)

    def flush(self) -> None:
        pass

    def close(self, status: str, step: int, message: str = "") -> None:
        self.ended = (status, step, message)

    def tokens_per_s(self) -> float | None:
        if self.t_start is None or self.first_step is None:
            return None
        dt = time.perf_counter() - self.t_start
        return (self.step - self.first_step) * self.cell.config.tokens_per_step / dt if dt > 0 else None


class _Heartbeat:
    """Rewrites a running cell's status.json every `every` seconds from a background thread."""

    def __init__(self, store: Store, base: dict[str, Any], live: _LiveSink, every: float) -> None:
        self.store, self.base, self.live, self.every = store, base, live, every
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def snapshot(self) -> dict[str, Any]:
        with self.live.lock:
            return {**self.base, "step": self.live.step, "loss": self.live.loss, "eval_loss": self.live.eval_loss,
                    "tokens_per_s": self.live.tokens_per_s()}

    def _run(self) -> None:
        while not self.stop_ev.wait(self.every):
            try:
                self.store.set_status(self.base["id"], self.snapshot())
            except Exception:  # noqa: BLE001 - a missed heartbeat must not kill training
                pass

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_ev.set()
        self.thread.join()


def _checkpoint_steps(directory: Any) -> list[int]:
    return saved_steps(directory)


RERUN_TRUNK = "rerun trunk"


def _run_order(cells: Sequence[S.Cell]) -> list[S.Cell]:
    """Groups (a trunk and its branches, or one separate run) by shape, budget, lr and seed, so cells
    that share compiled steps (seeds of one shape and budget) run back to back; in-group order kept."""
    groups: dict[str, list[S.Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)

    def key(g: list[S.Cell]) -> tuple[str, int, int, int, float, int, str]:
        c = g[0].config
        return (c.model.variant, c.model.width, c.model.depth, c.train.tokens, c.optim.lr, c.train.seed, g[0].id)
    return [c for g in sorted(groups.values(), key=key) for c in g]


def run(spec_path: str, opts: Options) -> int:
    """Train every cell of this shard that is not done. Returns a process exit code."""
    spec, cells = _load(spec_path, opts)
    out = opts.out
    from scaling_grid.trainer import optional_import
    if opts.tensorboard is not None:  # a missing package fails before any compute, not in every cell
        optional_import("tensorboardX", "--tensorboard")
    if opts.wandb is not None:
        optional_import("wandb", "--wandb")
    setup(opts.distributed, opts.compile_cache)

    from scaling_grid.trainer import accelerator_unused, backend_line
    out(backend_line())  # after jax.distributed.initialize, which must come before the backend starts
    if (warning := accelerator_unused()) is not None:
        out(f"warning: {warning}")
    writer, multi = is_writer(), multi_process()
    store = Store(opts.store)
    store.checkpoint_dir("x", opts.checkpoints)  # an unsupported URL fails here, before any compute
    records = _records(cells, {})
    mine = _mine(cells, opts.shard, _costs(records, cells))
    states = {c.id: store.status(c.id)[0] for c in mine}
    redo, damaged = _damaged_done_cells(store, mine, states, writer, out, opts.checkpoints)
    flags = from_process_0([c.id in redo for c in mine])  # every process must run the same cells
    redo = {c.id for c, f in zip(mine, flags) if f}
    todo = [c for c in mine if (states[c.id].get("state") not in FINAL_STATES or c.id in redo)
            and (opts.retry_failed or states[c.id].get("state") != "failed")]
    todo = _run_order(todo)
    from scaling_grid.trainer import check_batch
    for c in todo:
        check_batch(c.config.train.batch_size, c.config.train.grad_accum, f"cell {c.name}: train.batch_size",
                    c.config.mesh)
    if opts.memory_check and todo:
        memory_check(todo, records, table_lengths(cells))

    tok_stores = _prepare_data(cells)
    vocab = {d: s.vocab_size for d, s in tok_stores.items()}
    records = _records(cells, vocab)
    tables = table_lengths(cells, vocab)
    if writer:
        store.init(spec.text, spec.hash, spec.name)
        for c in cells:
            rec = dict(records[c.id])
            rec["config"] = c.config.to_dict()
            rec["config"]["out_dir"] = f"{store.root}/cells/{c.id}"
            rec["spec"] = spec.hash
            if store.put_config(rec):
                out(f"{c.id}: its config.json was damaged; rewrote it from the spec")

    n_done = sum(1 for c in mine if states[c.id].get("state") == "done")
    shard = f", shard {opts.shard[0]}/{opts.shard[1]}: {len(mine)}" if opts.shard[1] > 1 else ""
    out(f"grid {spec.name!r}: {len(cells)} cells{shard}"
        + f"; {n_done} done, {len(mine) - n_done - len(todo)} diverged/final, {len(todo)} to run; store {opts.store}")
    if not todo:
        return _still_damaged(damaged, out) or EXIT_OK

    from tqdm.auto import tqdm

    from scaling_grid.trainer import interactive
    # Bars only on a terminal: in a log file their carriage-return redraws are noise; there each cell
    # says when it is done (and, when long, how it goes every 30 s).
    bars = opts.progress and writer and interactive()
    bar = tqdm(total=sum(c.train_tokens for c in todo), desc=f"grid {spec.name}", unit="tok", unit_scale=True,
               position=0, dynamic_ncols=True, disable=None if bars else True)
    say = (lambda s: tqdm.write(s)) if bars else out
    # SIGTERM between cells: stop before the next; during a cell the trainer sees the same flag, saves
    # and stops. One handler for the whole run, so no signal is lost while a cell compiles or restores.
    signals = Preemption()
    results: dict[str, str] = {}
    code = EXIT_OK
    with signals.installed():
        n_run = 0
        for unit in _packs(todo, store, opts, redo):
            if any_process(signals.requested)[0]:
                code = EXIT_PREEMPTED
                break
            bar.set_postfix_str(f"cells {n_run}/{len(todo)}")

            def run_these(cs: list[S.Cell], rerun_done: bool = False) -> list[str]:
                return _run_cells(cs, store, tok_stores[cs[0].config.data], tables[cs[0].id], opts, signals, bar, say,
                                  writer, multi, rerun_done=rerun_done, bars=bars)
            statuses = run_these(unit, unit[0].id in redo)  # a cell to redo runs alone (never packed)
            if statuses == [RERUN_TRUNK]:  # its start checkpoint was unreadable and has been moved aside
                trunk = next(c for c in cells if c.id == unit[0].parent)
                results[trunk.id] = run_these([trunk], rerun_done=True)[0]
                statuses = run_these(unit) if results[trunk.id] == "done" else ["skipped"]
            results.update(zip((c.id for c in unit), statuses))
            n_run += len(unit)
            if "preempted" in statuses:
                code = EXIT_PREEMPTED
                break
    bar.close()
    counts: dict[str, int] = {}
    for s in results.values():
        counts[s] = counts.get(s, 0) + 1
    out(f"grid {spec.name!r}: ran {len(results)} of {len(todo)} cells: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if code == EXIT_PREEMPTED:
        out("preempted: run the same command again to resume")
        return code
    if counts.get("failed") or counts.get("skipped"):
        return EXIT_FAILED
    return _still_damaged(damaged, out) or EXIT_OK


def _still_damaged(damaged: list[str], out: Callable[[str], None]) -> int:
    """EXIT_FAILED, said once at the end, while a done cell's record has damage `run` cannot repair:
    the grid is not whole, whatever else ran."""
    if not damaged:
        return 0
    out(f"{len(damaged)} cell(s) still DAMAGED (their values are lost; see above): {', '.join(damaged)}")
    return EXIT_FAILED


def _damaged_done_cells(store: Store, cells: Sequence[S.Cell], states: dict[str, dict[str, Any]], writer: bool,
                        out: Callable[[str], None], opts_checkpoints: str | None = None
                        ) -> tuple[set[str], list[str]]:
    """Repair what a finished cell's records lost: damaged metric metadata is rewritten (it is a
    function of the cell's length), and a done cell whose final point is missing is returned, to be
    run again: it resumes from its last checkpoint and re-evaluates. Values lost with a damaged data
    chunk cannot be repaired here; that is said, with the way out. Returns (cells to run again, cells
    still damaged)."""
    redo, damaged = set(), []
    for c in cells:
        if states[c.id].get("state") != "done":
            continue
        m, problems, fixable = store.checked_metrics(c.id, c.steps, "done")
        if problems and fixable and writer and store.repair_metadata(c.id, c.steps):
            out(f"{c.id}: rewrote damaged metric metadata ({problems[0]})")
            m, problems, fixable = store.checked_metrics(c.id, c.steps, "done")
        lost_from = first_lost_step(m) if problems and m is not None else None
        if lost_from is not None:
            # Training is a pure function of the config: rerun from the newest checkpoint before the
            # first lost value (or from the start), which writes every value from there on again.
            ckpts = store.checkpoint_dir(c.id, opts_checkpoints)
            later = [s for s in _checkpoint_steps(ckpts) if s >= lost_from]
            if writer and later:
                set_aside(ckpts, later)  # kept beside the cell's checkpoints, never listed as steps
            out(f"{c.id}: {problems[0]}; running it again from before step {lost_from:,}")
            redo.add(c.id)
        elif problems and fixable:
            out(f"{c.id}: {problems[0]}; running it again (it resumes from its last checkpoint)")
            redo.add(c.id)
        elif problems:
            out(f"{c.id}: DAMAGED: {'; '.join(problems)}; {lost(store, c.id)}")
            damaged.append(c.id)
    return redo, damaged


_SKIPS = ("done", "diverged", "running elsewhere", "skipped")


def _claim(cell: S.Cell, store: Store, st: dict[str, Any], gen: bytes, ckpt_dir: Any, opts: Options,
           say: Callable[[str], None], writer: bool, rerun_done: bool
           ) -> tuple[str | None, tuple[str, int] | None, dict[str, Any]]:
    """(why the cell is not run now, or None; the trunk state a branch starts from; the running
    status written). Only process 0 writes; the caller makes its answer everyone's."""
    if st.get("state") in FINAL_STATES and not rerun_done:  # finished meanwhile by another launcher
        return st["state"], None, {}
    if st.get("state") == "running" and not is_stale(st, opts.stale_after):
        say(f"{cell.id}: running on {st.get('host')} (pid {st.get('pid')}, heartbeat {st.get('updated')}); skipped")
        return "running elsewhere", None, {}
    init_from: tuple[str, int] | None = None
    if cell.role == "branch":
        assert cell.parent is not None and cell.init_step is not None  # a branch has both (spec._expand_wsd)
        parent_dir = store.checkpoint_dir(cell.parent, opts.checkpoints)
        pst, _ = store.status(cell.parent)
        have_own = bool(_checkpoint_steps(ckpt_dir))
        if not have_own and cell.init_step not in _checkpoint_steps(parent_dir):
            if pst.get("state") == "diverged":
                msg = (f"trunk {cell.parent} diverged at step {pst.get('step')}, before this branch's start step "
                       f"{cell.init_step}")
                if writer:
                    store.set_status(cell.id, {"id": cell.id, "state": "diverged", "step": cell.init_step,
                                               "total": cell.steps, "message": msg, "host": host_id()})
                say(f"{cell.id}: diverged ({msg})")
                return "diverged", None, {}
            say(f"{cell.id}: skipped: its trunk {cell.parent} is {pst.get('state')} and has no checkpoint at step "
                f"{cell.init_step} yet")
            return "skipped", None, {}
        init_from = (str(parent_dir), cell.init_step)

    attempt = int(st.get("attempt", 0)) + 1
    base: dict[str, Any] = {
        "id": cell.id, "state": "running", "total": cell.steps, "host": host_id(), "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "shard": f"{opts.shard[0]}/{opts.shard[1]}", "attempt": attempt, "started": now(), "message": ""}
    # A conditional write: of two launchers (or two launches of one multi-host job) only one gets it.
    if writer and not store.set_status(cell.id, {**base, "step": st.get("step")}, if_equal=gen):
        say(f"{cell.id}: claimed by another launcher meanwhile; skipped")
        return "running elsewhere", None, {}
    return None, init_from, base


def _writer_sinks(sinks: list[Any], cell: S.Cell, store: Store, tok_store: Any, opts: Options, bars: bool,
                  say: Callable[[str], None], position: int = 1) -> None:
    """Process 0's sinks of a cell: the store's metric arrays, a bar or log lines, optional TensorBoard/W&B."""
    from scaling_grid.trainer import (
        LogLineSink,
        ProgressSink,
        TensorBoardSink,
        TensorStoreSink,
        WandbSink,
        read_step,
    )
    sinks.append(TensorStoreSink(store.root, cell.steps, prefix=store.metrics_prefix(cell.id)))
    if bars:
        sinks.append(ProgressSink(cell.config.tokens_per_step, desc=cell.name, position=position, leave=False))
    else:  # a line every 30 s for a long cell; the per-eval lines of `train` would flood a grid's log
        import jax

        from scaling_grid.trainer import compute_dtype
        from scaling_grid.trainer.peaks import peak_flops
        sinks.append(LogLineSink(cell.config.tokens_per_step, prefix=f"{cell.id}: ", evals=False, out=say,
                                 origin=cell.init_step or 0,
                                 flops_per_token=S.derived(cell, tok_store.vocab_size)["flops_per_token"],
                                 peak_flops=peak_flops(jax.devices(), compute_dtype(cell.config.train.dtype))))
    if opts.tensorboard is not None:
        sinks.append(TensorBoardSink(Path(opts.tensorboard) / cell.id, recorded=lambda step: read_step(
            store.root, step, prefix=store.metrics_prefix(cell.id))))
    if opts.wandb is not None:
        record = {**S.derived(cell, tok_store.vocab_size), "config": cell.config.to_dict()}
        sinks.append(WandbSink(opts.wandb, cell.id, record))


def _packs(cells: Sequence[S.Cell], store: Store, opts: Options, redo: set[str]) -> list[list[S.Cell]]:
    """The order of work: single cells, and packs of cells that train together in one compiled step
    (`train.pack` > 1): separate cells (no WSD trunk or branch) whose configs differ only in seeds, lr
    schedule and budget (`compile.pack_key`) and that resume from the same step, at most `train.pack`
    per pack, in run order. Every process forms the packs process 0 forms."""
    from scaling_grid.trainer import pack_key
    label: list[int] = []
    keys: dict[Any, int] = {}
    for c in cells:
        if c.config.train.pack > 1 and c.role == "separate" and c.id not in redo:
            start = max(_checkpoint_steps(store.checkpoint_dir(c.id, opts.checkpoints)), default=0)
            label.append(keys.setdefault((pack_key(c.config), start), len(keys)))
        else:
            label.append(-1)
    label = from_process_0(label)
    units: list[list[S.Cell]] = []
    open_pack: dict[int, list[S.Cell]] = {}
    for c, key in zip(cells, label):
        if key < 0:
            units.append([c])
            continue
        unit = open_pack.get(key)
        if unit is None or len(unit) >= c.config.train.pack:
            unit = open_pack[key] = []
            units.append(unit)
        unit.append(c)
    return units


def _run_cells(cells: Sequence[S.Cell], store: Store, tok_store: Any, table_len: int, opts: Options,
               signals: Preemption, bar: Any, say: Callable[[str], None], writer: bool, multi: bool,
               rerun_done: bool = False, bars: bool = False) -> list[str]:
    """Run one cell, or a pack of cells in one compiled step (`trainer.train_pack`): each is claimed,
    heartbeats and records its own status; an error fails every cell of the pack. The status of each."""
    from scaling_grid import trainer as T
    from scaling_grid.trainer import FailedElsewhere, Sinks, SinkSetupError, together

    result: dict[str, str] = {}
    claimed: list[tuple[S.Cell, Any, dict[str, Any], tuple[str, int] | None]] = []  # cell, ckpt dir, status, trunk
    for cell in cells:
        st, gen = store.status(cell.id)
        ckpt_dir = store.checkpoint_dir(cell.id, opts.checkpoints)
        # Process 0 decides and says why; the others follow its answer (their own reading may race its claim).
        skip, init_from, base = _claim(cell, store, st, gen, ckpt_dir, opts, say if writer else lambda _: None, writer,
                                       rerun_done)
        code, from_trunk = from_process_0([_SKIPS.index(skip) if skip else -1, init_from is not None])
        if code >= 0:
            result[cell.id] = _SKIPS[code]
            continue
        init_from = None
        if from_trunk:
            assert cell.parent is not None and cell.init_step is not None  # a branch, alone
            init_from = (str(store.checkpoint_dir(cell.parent, opts.checkpoints)), cell.init_step)
        claimed.append((cell, ckpt_dir, base, init_from))
    if not claimed:
        return [result[c.id] for c in cells]
    running = [c for c, *_ in claimed]

    t0 = time.perf_counter()
    lives = [_LiveSink(c, bar) for c in running]
    beats = [_Heartbeat(store, base, live, opts.status_every) for (_, _, base, _), live in zip(claimed, lives)]

    def record(update: Callable[[S.Cell, _Heartbeat], dict[str, Any]], writes: bool = writer) -> None:
        """After an error: the status of each cell. A run of the pack that had already ended done or
        diverged (a shorter budget) keeps that outcome; the others get `update`."""
        if writes:
            for c, beat, live in zip(running, beats, lives):
                if live.ended is not None and live.ended[0] in FINAL_STATES:
                    state, step, message = live.ended
                    store.set_status(c.id, {**beat.snapshot(), "state": state, "step": step, "message": message})
                else:
                    store.set_status(c.id, update(c, beat))

    def failed(why: str) -> list[str]:
        for c, live in zip(running, lives):
            if live.ended is not None and live.ended[0] in FINAL_STATES:
                result[c.id] = live.ended[0]
            else:
                say(f"{c.id}: FAILED: {why}")
                result[c.id] = "failed"
        return [result[c.id] for c in cells]

    def peer_lost(why: str, recorder: bool) -> str:  # trainer/peers.py: on its thread; this one waits
        for beat in beats:  # no heartbeat may write 'running' over the record
            beat.stop_ev.set()
            if beat.thread.is_alive():
                beat.thread.join(timeout=2)
        record(lambda c, b: {**b.snapshot(), "state": "preempted", "message": f"preempted: {why}"}, recorder)
        return "; ".join(f"cell {c.id} (last checkpoint: step {max(saved_steps(d), default=0)})"
                         for c, d, *_ in claimed) + (" recorded preempted" if recorder else "")

    try:
        steps = _SHARED.get(running[0].config, tok_store.vocab_size, pack=len(running))
        sinks: list[list[Any]] = [[live] for live in lives]
        with together(fatal=(SinkSetupError,)):  # process 0 alone builds the sinks; all go on, or none
            if writer:
                for i, (c, cell_sinks) in enumerate(zip(running, sinks)):
                    _writer_sinks(cell_sinks, c, store, tok_store, opts, bars, say, position=1 + i)
        lanes = [T.Lane(c.config, Sinks(*s), ckpt_dir, init_from, c.keep_steps)
                 for (c, ckpt_dir, _, init_from), s in zip(claimed, sinks)]
        who = running[0].id if len(running) == 1 else f"pack of {len(running)}"
        with contextlib.ExitStack() as beating:
            if writer:
                for beat in beats:
                    beating.enter_context(beat)
            beating.enter_context(peers.on_loss(peer_lost))
            outcome = T.train_pack(lanes, store=tok_store, steps=steps, warn=lambda m: say(f"{who}: warning: {m}"),
                                   table_len=table_len, preempt=signals)
    except KeyboardInterrupt:
        record(lambda c, b: {**b.snapshot(), "state": "preempted",
                             "message": "interrupted (Ctrl-C); run again to resume"})
        raise
    except SinkSetupError as e:  # every cell would fail alike (no W&B login): stop the grid, exit 2
        why = str(e)
        record(lambda c, b: {**b.snapshot(), "state": "failed", "message": why})
        raise
    except FailedElsewhere as e:  # process 0 recorded why; this process follows it
        if e.fatal:
            raise SinkSetupError("process 0 could not start a metrics sink; its log says why") from None
        return failed(str(e))
    except UnreadableCheckpoint as e:
        cell, _, base, trunk = claimed[0]  # a branch runs alone
        if trunk is None or str(e.directory) != str(path_of(trunk[0])):
            raise
        return [_trunk_unreadable(cell, base, e, store, say, writer, multi)]
    except Exception as e:  # noqa: BLE001 - record and go on to the next cell
        peers.check(e, peer_lost)  # a lost peer: recorded preempted, exit 75 (never returns)
        tb = traceback.format_exc()
        msg = f"{type(e).__name__}: {e}"
        record(lambda c, b: {**b.snapshot(), "state": "failed", "message": msg, "traceback": tb[-4000:],
                             "elapsed_s": time.perf_counter() - t0})
        return failed(msg)
    elapsed = time.perf_counter() - t0
    for c, beat, live, res in zip(running, beats, lives, outcome):
        setup_s = (live.t_start - t0) if live.t_start is not None else elapsed
        final = {**beat.snapshot(), "state": res.status, "step": res.step, "message": res.message,
                 "elapsed_s": elapsed, "setup_s": setup_s, "train_s": elapsed - setup_s,
                 "trained_steps": (live.step - live.first_step) if live.first_step is not None else 0}
        final["eval_loss"] = res.eval_loss if math.isfinite(res.eval_loss) else None
        if len(running) > 1:
            final["pack"] = [x.id for x in running]
        if writer:
            store.set_status(c.id, final)
        if res.status == "done":
            tps = final.get("tokens_per_s")
            loss = final["eval_loss"]
            with_pack = f" (in a pack of {len(running)})" if len(running) > 1 else ""
            say(f"{c.id}: done in {elapsed:.1f}s{with_pack}, "
                + (f"eval loss {loss:.4f}" if loss is not None else "no final eval")
                + (f", {tps:,.0f} tok/s" if tps else ""))
        else:
            msg = res.message
            say(f"{c.id}: {msg}" if msg.startswith(res.status) else f"{c.id}: {res.status}: {msg}")
        result[c.id] = res.status
    return [result[c.id] for c in cells]


def _trunk_unreadable(cell: S.Cell, base: dict[str, Any], e: UnreadableCheckpoint, store: Store,
                      say: Callable[[str], None], writer: bool, multi: bool) -> str:
    """A branch whose start checkpoint in its trunk is unreadable: set the trunk's checkpoints from
    there aside and ask for the trunk to rerun (one process alone; on many the user is told how)."""
    where = f"its trunk {cell.parent}'s checkpoint at step {e.step}, where this branch starts, is unreadable"
    if multi:  # moving shared checkpoints is a decision for one process; left to the user here
        msg = (f"{where} ({e}); move {e.directory}/{e.step} and the trunk's later checkpoints aside, then run "
               "again: the trunk reruns from its previous checkpoint")
        say(f"{cell.id}: FAILED: {msg}")
        if writer:
            store.set_status(cell.id, {**base, "state": "failed", "message": msg})
        return "failed"
    moved = [s for s in _checkpoint_steps(e.directory) if s >= e.step]
    dest = set_aside(e.directory, moved)
    say(f"{cell.id}: {where}; moved the trunk's checkpoints {moved} to {dest} and rerunning the trunk from its "
        "previous checkpoint")
    if writer:
        assert cell.parent is not None  # init_from is set: a branch
        store.set_status(cell.id, {**base, "state": "pending", "message": f"{where}; waiting for the trunk"})
        store.set_status(cell.parent, {**store.status(cell.parent)[0], "state": "preempted",
                                       "message": f"checkpoint {e.step} unreadable; rerunning from the one before"})
    return RERUN_TRUNK
