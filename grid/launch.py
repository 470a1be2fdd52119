"""Run a grid: every cell that is not done, in one process, resumable, shardable across hosts.

``run(spec, options)`` validates the spec (and, where JAX can tell, that the largest cells fit in
device memory) before any compute, prepares each distinct data config once, records the spec and
every cell's resolved config in the store, then trains this shard's cells one after another:

- done and diverged cells are skipped (a changed config is a new cell, so nothing is ever mixed);
- partial cells resume from their checkpoints (the trainer picks the newest readable one);
- a cell is claimed with a conditional write of its status, so two launchers never run one cell
  (claim.py); a running cell's status is a heartbeat (liveness.py);
- an exception marks the cell failed (with the error) and the grid goes on; failed cells are
  retried by the next launch;
- SIGTERM: the running cell saves a checkpoint (the trainer does it), the launcher records it as
  preempted and exits with EXIT_PREEMPTED so a requeue loop runs it again.

The dry run (``--dry-run``) is plan.py.
"""
from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scaling_grid import trainer as T
from scaling_grid.trainer import (
    FailedElsewhere,
    Preemption,
    Sinks,
    SinkSetupError,
    UnreadableCheckpoint,
    any_process,
    from_process_0,
    is_writer,
    multi_process,
    path_of,
    saved_steps,
    setup,
    together,
)

from . import spec as S
from .cells import SHARED, costs, load_cells, mine, prepare_data, record_cells, records, table_lengths
from .claim import Claimed, claim_cells
from .exits import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED
from .liveness import Heartbeat, LiveSink
from .options import Options
from .plan import memory_check
from .repair import RERUN_TRUNK, damaged_done_cells, still_damaged, trunk_unreadable
from .store import FINAL_STATES, Store


@dataclass
class _Context:
    """What every cell of a launch runs with."""
    store: Store
    opts: Options
    signals: Preemption
    bar: Any                          # the overall progress bar (disabled off a terminal)
    bars: bool                        # a bar per cell (else log lines)
    say: Callable[[str], None]
    writer: bool                      # process 0: the one that writes the store
    multi: bool
    tok_stores: dict[Any, Any]
    tables: dict[str, int]
    group: str                        # the cells' W&B group: --wandb-group, else the spec's name


# ------------------------------------------------------------------------------------ order of work

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


def _packs(cells: Sequence[S.Cell], store: Store, opts: Options, redo: set[str]) -> list[list[S.Cell]]:
    """The order of work: single cells, and packs of cells that train together in one compiled step
    (`train.pack` > 1): separate cells (no WSD trunk or branch) whose configs differ only in seeds, lr
    schedule and budget (`compile.pack_key`) and that resume from the same step, at most `train.pack`
    per pack, in run order. Every process forms the packs process 0 forms."""
    label: list[int] = []
    keys: dict[Any, int] = {}
    for c in cells:
        if c.config.train.pack > 1 and c.role == "separate" and c.id not in redo:
            start = max(saved_steps(store.checkpoint_dir(c.id, opts.checkpoints)), default=0)
            label.append(keys.setdefault((T.pack_key(c.config), start), len(keys)))
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


def _todo(store: Store, my_cells: list[S.Cell], states: dict[str, dict[str, Any]], opts: Options,
          writer: bool) -> tuple[list[S.Cell], set[str], list[str]]:
    """(the cells to run, in run order; the done cells to run again; the done cells still damaged)."""
    redo, damaged = damaged_done_cells(store, my_cells, states, writer, opts.out, opts.checkpoints)
    flags = from_process_0([c.id in redo for c in my_cells])  # every process must run the same cells
    redo = {c.id for c, f in zip(my_cells, flags) if f}
    todo = [c for c in my_cells if (states[c.id].get("state") not in FINAL_STATES or c.id in redo)
            and (opts.retry_failed or states[c.id].get("state") != "failed")]
    return _run_order(todo), redo, damaged


# ------------------------------------------------------------------------------------------- run

def _start(opts: Options) -> None:
    """Missing optional packages fail before any compute, not in every cell; then JAX starts."""
    if opts.tensorboard is not None:
        T.optional_import("tensorboardX", "--tensorboard")
    if opts.wandb is not None:
        T.optional_import("wandb", "--wandb")
    setup(opts.distributed, opts.compile_cache)
    opts.out(T.backend_line())  # after jax.distributed.initialize, which must come before the backend starts
    if (warning := T.accelerator_unused()) is not None:
        opts.out(f"warning: {warning}")


def _progress(opts: Options, writer: bool, todo: Sequence[S.Cell], name: str
              ) -> tuple[Any, bool, Callable[[str], None]]:
    """(the overall bar, whether cells show bars, how to say a line). Bars only on a terminal: in a log
    file their carriage-return redraws are noise; there each cell says when it is done (and, when
    long, how it goes every 30 s)."""
    from tqdm.auto import tqdm
    bars = opts.progress and writer and T.interactive()
    bar = tqdm(total=sum(c.train_tokens for c in todo), desc=f"grid {name}", unit="tok", unit_scale=True,
               position=0, dynamic_ncols=True, disable=None if bars else True)
    return bar, bars, (lambda s: tqdm.write(s)) if bars else opts.out


def run(spec_path: str, opts: Options) -> int:
    """Train every cell of this shard that is not done. Returns a process exit code."""
    spec, cells = load_cells(spec_path, opts)
    out = opts.out
    _start(opts)
    writer, multi = is_writer(), multi_process()
    store = Store(opts.store)
    store.checkpoint_dir("x", opts.checkpoints)  # an unsupported URL fails here, before any compute
    recs = records(cells, {})
    my_cells = mine(cells, opts.shard, costs(recs, cells))
    states = {c.id: store.status(c.id)[0] for c in my_cells}
    todo, redo, damaged = _todo(store, my_cells, states, opts, writer)
    for c in todo:
        T.check_batch(c.config.train.batch_size, c.config.train.grad_accum, f"cell {c.name}: train.batch_size",
                      c.config.mesh)
    if opts.memory_check and todo:
        memory_check(todo, recs, table_lengths(cells))

    tok_stores = prepare_data(cells)
    vocab = {d: s.vocab_size for d, s in tok_stores.items()}
    if writer:
        record_cells(store, spec, cells, records(cells, vocab), out)
    n_done = sum(1 for c in my_cells if states[c.id].get("state") == "done" and c.id not in redo)
    shard = f", shard {opts.shard[0]}/{opts.shard[1]}: {len(my_cells)}" if opts.shard[1] > 1 else ""
    out(T.within(f"grid {spec.name!r}: {len(cells)} cells{shard}; {n_done} done, "
                 f"{len(my_cells) - n_done - len(todo)} diverged/final, {len(todo)} to run; store {opts.store}"))
    if not todo:
        return still_damaged(damaged, out) or EXIT_OK

    bar, bars, say = _progress(opts, writer, todo, spec.name)
    # SIGTERM between cells: stop before the next; during a cell the trainer sees the same flag, saves
    # and stops. One handler for the whole run, so no signal is lost while a cell compiles or restores.
    ctx = _Context(store, opts, Preemption(), bar, bars, say, writer, multi, tok_stores, table_lengths(cells, vocab),
                   opts.wandb_group or spec.name)
    results, code = _run_units(todo, cells, redo, ctx)
    bar.close()
    return _summary(spec.name, results, len(todo), code, damaged, out)


def _run_units(todo: list[S.Cell], cells: list[S.Cell], redo: set[str], ctx: _Context) -> tuple[dict[str, str], int]:
    """Run each unit of work (a cell, or a pack) in order: (the status of each cell run, the exit code)."""
    results: dict[str, str] = {}
    with ctx.signals.installed():
        n_run = 0
        for unit in _packs(todo, ctx.store, ctx.opts, redo):
            if any_process(ctx.signals.requested)[0]:
                return results, EXIT_PREEMPTED
            ctx.bar.set_postfix_str(f"cells {n_run}/{len(todo)}")
            statuses = _run_cells(unit, ctx, unit[0].id in redo)  # a cell to redo runs alone (never packed)
            if statuses == [RERUN_TRUNK]:  # its start checkpoint was unreadable and has been moved aside
                trunk = next(c for c in cells if c.id == unit[0].parent)
                results[trunk.id] = _run_cells([trunk], ctx, rerun_done=True)[0]
                statuses = _run_cells(unit, ctx) if results[trunk.id] == "done" else ["skipped"]
            results.update(zip((c.id for c in unit), statuses))
            n_run += len(unit)
            if "preempted" in statuses:
                return results, EXIT_PREEMPTED
    return results, EXIT_OK


def _summary(name: str, results: dict[str, str], n_todo: int, code: int, damaged: list[str],
             out: Callable[[str], None]) -> int:
    """The closing line, and the exit code of the launch."""
    counts: dict[str, int] = {}
    for s in results.values():
        counts[s] = counts.get(s, 0) + 1
    out(T.within(f"grid {name!r}: ran {len(results)} of {n_todo} cells: "
                 + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))))
    if code == EXIT_PREEMPTED:
        out("preempted: run the same command again to resume")
        return code
    if counts.get("failed") or counts.get("skipped"):
        return EXIT_FAILED
    return still_damaged(damaged, out) or EXIT_OK


# ------------------------------------------------------------------------------------- one unit

def _cell_sinks(cell: S.Cell, live: LiveSink, ctx: _Context, tok_store: Any, position: int) -> Sinks:
    """Process 0's sinks of a cell: its live values, the store's metric arrays, a bar or log lines,
    optional TensorBoard/W&B."""
    derived = S.derived(cell, tok_store.vocab_size)
    return T.run_sinks(ctx.store.root, cell.config, cell.id, prefix=ctx.store.metrics_prefix(cell.id),
                       label=cell.name, bar=ctx.bars, position=position, say=ctx.say, origin=cell.init_step or 0,
                       flops_per_token=derived["flops_per_token"], tensorboard=ctx.opts.tensorboard,
                       wandb=ctx.opts.wandb, record={**derived, "config": cell.config.to_dict()}, group=ctx.group,
                       role=cell.role, first=(live,))


class _Pack:
    """One cell, or a pack of cells trained in one compiled step (`trainer.train_pack`): each
    heartbeats and records its own status; an error fails every cell of the pack."""

    def __init__(self, ctx: _Context, cells: Sequence[S.Cell], claimed: list[Claimed], result: dict[str, str]):
        self.ctx, self.cells, self.claimed, self.result = ctx, cells, claimed, result
        self.running = [c.cell for c in claimed]
        self.t0 = time.perf_counter()
        self.lives = [LiveSink(c, ctx.bar) for c in self.running]
        self.beats = [Heartbeat(ctx.store, c.base, live, ctx.opts.status_every)
                      for c, live in zip(claimed, self.lives)]

    def train(self) -> list[Any]:
        """Train the pack, process 0's heartbeats beating: the result of each cell."""
        ctx, running, first = self.ctx, self.running, self.cells[0]
        tok_store = ctx.tok_stores[first.config.data]
        steps = SHARED.get(running[0].config, tok_store.vocab_size, pack=len(running))
        sinks = [Sinks(live) for live in self.lives]
        with together(fatal=(SinkSetupError,)):  # process 0 alone builds the sinks; all go on, or none
            if ctx.writer:
                sinks = [_cell_sinks(c, live, ctx, tok_store, position=1 + i)
                         for i, (c, live) in enumerate(zip(running, self.lives))]
        lanes = [T.Lane(c.cell.config, s, c.ckpt_dir, c.init_from, c.cell.keep_steps)
                 for c, s in zip(self.claimed, sinks)]
        who = running[0].id if len(running) == 1 else f"pack of {len(running)}"
        with contextlib.ExitStack() as beating:
            if ctx.writer:
                for beat in self.beats:
                    beating.enter_context(beat)
            beating.enter_context(T.on_loss(self.peer_lost))
            return T.train_pack(lanes, store=tok_store, steps=steps, warn=lambda m: ctx.say(f"{who}: warning: {m}"),
                                table_len=ctx.tables[first.id], preempt=ctx.signals)

    def record(self, update: Callable[[Heartbeat], dict[str, Any]], writes: bool | None = None) -> None:
        """After an error: the status of each cell. A run of the pack that had already ended done or
        diverged (a shorter budget) keeps that outcome; the others get `update`."""
        if self.ctx.writer if writes is None else writes:
            for c, beat, live in zip(self.running, self.beats, self.lives):
                if live.ended is not None and live.ended[0] in FINAL_STATES:
                    state, step, message = live.ended
                    self.ctx.store.set_status(c.id, {**beat.snapshot(), "state": state, "step": step,
                                                     "message": message})
                else:
                    self.ctx.store.set_status(c.id, update(beat))

    def failed(self, why: str) -> list[str]:
        """Every cell of the pack that had not ended failed, for `why`: the status of each cell."""
        for c, live in zip(self.running, self.lives):
            if live.ended is not None and live.ended[0] in FINAL_STATES:
                self.result[c.id] = live.ended[0]
            else:
                self.ctx.say(f"{c.id}: FAILED: {why}")
                self.result[c.id] = "failed"
        return [self.result[c.id] for c in self.cells]

    def peer_lost(self, why: str, recorder: bool) -> str:
        """A process of the job is gone (trainer/peers.py calls this on its thread, then exits 75): each
        cell recorded preempted by the process that can (``recorder``); what the exit line names."""
        for beat in self.beats:  # no heartbeat may write 'running' over the record
            beat.stop_ev.set()
            if beat.thread.is_alive():
                beat.thread.join(timeout=2)
        self.record(lambda b: {**b.snapshot(), "state": "preempted", "message": f"preempted: {why}"}, recorder)
        return "; ".join(f"cell {c.cell.id} (last checkpoint: step {max(saved_steps(c.ckpt_dir), default=0)})"
                         for c in self.claimed) + (" recorded preempted" if recorder else "")

    def interrupted(self) -> None:
        """Ctrl-C: recorded as preempted; the caller re-raises."""
        self.record(lambda b: {**b.snapshot(), "state": "preempted",
                               "message": "interrupted (Ctrl-C); run again to resume"})

    def sink_failed(self, e: SinkSetupError) -> None:
        """Every cell would fail alike (no W&B login): recorded; the caller stops the grid (exit 2)."""
        why = str(e)
        self.record(lambda b: {**b.snapshot(), "state": "failed", "message": why})

    def crashed(self, e: Exception) -> list[str]:
        """Any other error: each cell failed with it (and its traceback); the grid goes on."""
        tb = traceback.format_exc()
        msg = f"{type(e).__name__}: {e}"
        self.record(lambda b: {**b.snapshot(), "state": "failed", "message": msg, "traceback": tb[-4000:],
                               "elapsed_s": time.perf_counter() - self.t0})
        return self.failed(msg)

    def finish(self, outcome: list[Any]) -> list[str]:
        """Record and say each cell's result: the status of each cell."""
        elapsed = time.perf_counter() - self.t0
        running = self.running
        for c, beat, live, res in zip(running, self.beats, self.lives, outcome):
            setup_s = (live.t_start - self.t0) if live.t_start is not None else elapsed
            final = {**beat.snapshot(), "state": res.status, "step": res.step, "message": res.message,
                     "elapsed_s": elapsed, "setup_s": setup_s, "train_s": elapsed - setup_s,
                     "trained_steps": (live.step - live.first_step) if live.first_step is not None else 0}
            final["eval_loss"] = res.eval_loss if math.isfinite(res.eval_loss) else None
            if len(running) > 1:
                final["pack"] = [x.id for x in running]
            if self.ctx.writer:
                self.ctx.store.set_status(c.id, final)
            if res.status == "done":
                tps, loss = final.get("tokens_per_s"), final["eval_loss"]
                with_pack = f" (in a pack of {len(running)})" if len(running) > 1 else ""
                self.ctx.say(T.within(f"{c.id}: done in {elapsed:.1f}s{with_pack}, "
                                      + (f"eval loss {loss:.4f}" if loss is not None else "no final eval")
                                      + (f", {tps:,.0f} tok/s" if tps else "")))
            else:
                msg = res.message
                self.ctx.say(f"{c.id}: {msg}" if msg.startswith(res.status) else f"{c.id}: {res.status}: {msg}")
            self.result[c.id] = res.status
        return [self.result[c.id] for c in self.cells]


def _run_cells(cells: Sequence[S.Cell], ctx: _Context, rerun_done: bool = False) -> list[str]:
    """Run one cell, or a pack of cells in one compiled step: the status of each."""
    result, claimed = claim_cells(cells, ctx.store, ctx.opts, ctx.say, ctx.writer, rerun_done)
    if not claimed:
        return [result[c.id] for c in cells]
    pack = _Pack(ctx, cells, claimed, result)
    try:
        outcome = pack.train()
    except KeyboardInterrupt:
        pack.interrupted()
        raise
    except SinkSetupError as e:
        pack.sink_failed(e)
        raise
    except FailedElsewhere as e:  # process 0 recorded why; this process follows it
        if e.fatal:
            raise SinkSetupError("process 0 could not start a metrics sink; its log says why") from None
        return pack.failed(str(e))
    except UnreadableCheckpoint as e:
        branch = claimed[0]  # a branch runs alone
        if branch.init_from is None or str(e.directory) != str(path_of(branch.init_from[0])):
            raise
        return [trunk_unreadable(branch, e, ctx.store, ctx.say, ctx.writer, ctx.multi)]
    except Exception as e:  # noqa: BLE001 - record and go on to the next cell
        if T.gave_up() is not None:  # a bucket that does not answer: nothing can be recorded; the CLI says so
            raise
        T.exit_if_peer_lost(e, pack.peer_lost)  # a lost peer: recorded preempted, exit 75 (never returns)
        return pack.crashed(e)
    return pack.finish(outcome)
