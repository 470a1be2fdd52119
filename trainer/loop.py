"""The training loop of one run: data, compiled steps, evals, metrics, checkpoints, preemption.

Between compiled calls Python only dispatches the next chunk of steps; metrics of a chunk are fetched
after the next chunk is dispatched, so the device never waits on the host. Every k steps (log, eval,
checkpoint) the loop syncs. A run is resumable from any checkpoint, bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from . import tokenstore
from .checkpoint import Checkpointer, restore_from
from .config import ConfigError, RunConfig, fingerprint, pack_key
from .feed import host_rows, pack_pieces, to_global
from .metrics import MetricsSink
from .model import compute_dtype, make_arch
from .preemption import Preemption
from .runtime import agree, any_process, together
from .sharding import make_mesh
from .step import Steps, abstract_state, build, lr_table, tau


@dataclass
class RunResult:
    status: str          # done | diverged | preempted
    step: int            # last step completed (for diverged: the first step with a non-finite loss)
    message: str = ""
    eval_loss: float = math.nan


def evaluate(steps: Steps, params: Any, val_BT1: np.ndarray, batch_size: int,
             stop: Callable[[], bool] = lambda: False) -> list[tuple[float, float]] | None:
    """Per run of the state (one, or each of a pack's): the mean validation loss over the fixed set
    and its standard error across sequences. None if `stop()` became true part-way (a preemption
    landed during eval)."""
    rows = host_rows(steps.eval_sharding, batch_size)
    losses = []
    for lo in range(0, len(val_BT1), batch_size):
        if stop():
            return None
        chunk = val_BT1[lo:lo + batch_size][rows]
        losses.append(steps.eval(params, to_global(chunk, steps.eval_sharding, batch_size, 0)))
    per_seq = np.concatenate([np.atleast_2d(x) for x in jax.device_get(losses)], axis=1).astype(np.float64)
    n = per_seq.shape[1]
    return [(float(r.mean()), float(r.std(ddof=1) / math.sqrt(n))) for r in per_seq]


@dataclass
class Lane:
    """One run of a pack (`train_pack`): its config, metrics sink and checkpoint folder; where it
    starts when it has no checkpoint of its own, and the steps it keeps forever (see `train`)."""
    cfg: RunConfig
    sink: MetricsSink
    ckpt_dir: str | os.PathLike[str]
    init_from: tuple[str | os.PathLike[str], int] | None = None
    keep_steps: Sequence[int] = ()


class _Run:
    """A lane's own part of the loop: its lr table and tau, checkpoints, sink and outcome."""

    def __init__(self, lane: Lane, table_len: int | None, warn: Callable[[str], None]) -> None:
        self.lane, self.cfg, self.sink, self.S = lane, lane.cfg, lane.sink, lane.cfg.steps
        self.table = lr_table(lane.cfg.optim, self.S, table_len)
        self.lrs = self.table[:self.S].astype(np.float64)
        self.tau = tau(self.lrs)
        t = lane.cfg.train
        self.ckpt = Checkpointer(lane.ckpt_dir, t.keep, t.ckpt_every, t.ckpt_minutes, lane.keep_steps, warn)
        self.meta = {"fingerprint": fingerprint(lane.cfg)}
        self.result: RunResult | None = None   # set when the run ends (the pack may go on)
        self.ckpt_step, self.last_eval = 0, math.nan

    def restore(self, lane_steps: Steps) -> tuple[Any, int]:
        """(state, step): the newest readable checkpoint, else the trunk's state it branches from,
        else a fresh init from the run's seed."""
        restored = self.ckpt.restore_latest(abstract_state(lane_steps))
        if restored is not None:
            return restored[0], int(restored[1]["step"])
        if self.lane.init_from is not None:
            where, step = self.lane.init_from
            return restore_from(where, step, abstract_state(lane_steps)), step
        return lane_steps.init(jax.random.key(self.cfg.train.seed)), 0

    def end(self, status: str, step: int, message: str = "") -> RunResult:
        if status != "diverged":
            self.ckpt.wait()  # durable before the run says so
        self.sink.close(status, step, message)
        self.result = RunResult(status, step, message, self.last_eval)
        return self.result

    def write(self, s_all: np.ndarray, loss: np.ndarray, gnorm: np.ndarray, log_every: int,
              tokens_per_step: int) -> int | None:
        """Write this run's logged steps of fetched metrics; the first step whose loss is not finite."""
        mine = s_all <= self.S
        s_all, loss, gnorm = s_all[mine], loss[mine], gnorm[mine]
        bad = ~np.isfinite(loss)
        first_bad = int(s_all[bad][0]) if bad.any() else None
        keep = (s_all % log_every == 0) | (s_all == self.S) | (s_all == first_bad)
        if first_bad is not None:
            keep &= s_all <= first_bad
        s = s_all[keep]
        if len(s):
            self.sink.write_train(s, {"tokens": s * float(tokens_per_step), "tau": self.tau[s], "lr": self.lrs[s - 1],
                                      "loss": loss[keep], "grad_norm": gnorm[keep]})
        return first_bad


def train(cfg: RunConfig, sink: MetricsSink, ckpt_dir: str | os.PathLike[str], *,
          store: tokenstore.TokenStore | None = None, steps: Steps | None = None,
          warn: Callable[[str], None] | None = None, init_from: tuple[str | os.PathLike[str], int] | None = None,
          keep_steps: Sequence[int] = (), table_len: int | None = None, preempt: Preemption | None = None) -> RunResult:
    """Train one run to its token budget, resuming from the newest readable checkpoint in ckpt_dir.

    init_from=(dir, step): a run with no checkpoint of its own starts from another run's state at that
    step (a WSD cooldown branch starts from its trunk). keep_steps: steps checkpointed and kept forever
    (the trunk's branch points). table_len: pad the lr table to this length, so runs of one shape with
    different budgets share ``steps``' compiled train step (a grid passes its longest run's steps).
    preempt: the caller's SIGTERM flag (a grid launcher's, installed for its whole run); by default the
    loop installs its own for the run.

    On many processes every decision that leads into a collective (stop, save, abandon an eval, fail at
    setup) is taken by all of them together (`runtime.any_process`)."""
    return train_pack([Lane(cfg, sink, ckpt_dir, init_from, keep_steps)], store=store, steps=steps, warn=warn,
                      table_len=table_len, preempt=preempt)[0]


def train_pack(lanes: Sequence[Lane], *, store: tokenstore.TokenStore | None = None, steps: Steps | None = None,
               warn: Callable[[str], None] | None = None, table_len: int | None = None,
               preempt: Preemption | None = None) -> list[RunResult]:
    """Train several runs of one shape together, in one compiled step vmapped over their stacked
    states (`step.build(pack=K)`), each with its own lr table, seeds and budget (`config.pack_key`
    says what may differ); one lane is `train`. Each run keeps its own metrics, checkpoints and
    outcome, and resumes on its own: a pack is a way to run, not a record. A run whose budget ends
    first is saved, evaluated and closed at its last step; it then rides along with lr 0 (frozen
    parameters) until the pack ends. A pack stops for a preemption or a timed checkpoint only where
    its chunks of steps_per_call start anew, so a resume meets the same chunk boundaries."""
    return _Pack(lanes, store, steps, warn, table_len, preempt).run()


class _Pack:
    """One call of `train_pack`: what its runs share (compiled steps, the stacked train state, lr
    tables, the validation set) and the parts of its loop."""

    def __init__(self, lanes: Sequence[Lane], store: tokenstore.TokenStore | None, steps: Steps | None,
                 warn: Callable[[str], None] | None, table_len: int | None, preempt: Preemption | None) -> None:
        warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
        cfg, K = lanes[0].cfg, (len(lanes) if len(lanes) > 1 else 0)
        t_cfg = cfg.train
        if K:
            if len({pack_key(lane.cfg) for lane in lanes}) > 1:
                raise ConfigError("the runs of a pack differ in more than seeds, learning-rate schedule and token "
                                  "budget; run them separately")
            if any(lane.init_from is not None or lane.keep_steps for lane in lanes):
                raise ConfigError("WSD trunks and branches run unpacked")
        store = store or tokenstore.prepare(cfg.data)
        if steps is None:
            arch = make_arch(cfg.model, store.vocab_size, compute_dtype(t_cfg.dtype))
            steps = build(arch, cfg.optim, t_cfg.grad_accum, make_mesh(cfg.mesh), pack=len(lanes))
        if steps.pack != K:
            raise ValueError(f"steps built for packs of {steps.pack}, given {len(lanes)} run(s)")
        self.cfg, self.t_cfg, self.K, self.store, self.steps = cfg, t_cfg, K, store, steps
        self.val_BT1 = store.val_set(t_cfg.eval_batches * t_cfg.batch_size, cfg.model.seq_len)
        self.runs = [_Run(lane, table_len, warn) for lane in lanes]
        width = max(len(r.table) for r in self.runs)
        tables = np.stack([np.pad(r.table, (0, width - len(r.table))) for r in self.runs])
        self.lrs_dev = jax.device_put(tables if K else tables[0], steps.lr_sharding)
        self.S_max, self.k = max(r.S for r in self.runs), t_cfg.steps_per_call
        self.rows = host_rows(steps.eval_sharding, t_cfg.batch_size)
        self.own_signal = preempt is None
        self.preempt = preempt or Preemption()
        self.start = 0
        self.state: Any = None
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []  # chunks' metrics not fetched yet

    def run(self) -> list[RunResult]:
        """Resume, evaluate what is owed, train chunk by chunk; each run's result, in lane order."""
        failed = False
        try:
            self.resume()
            with self.preempt.installed() if self.own_signal else contextlib.nullcontext():
                if not self.first_eval():
                    return [r.result for r in self.runs if r.result is not None]
                self.train_chunks()
            return [r.result if r.result is not None else r.end("done", r.S) for r in self.runs]
        except BaseException:
            failed = True
            raise
        finally:
            self.close(failed)

    def close(self, failed: bool) -> None:
        """Close every run's checkpointer; after a failure, also the sinks of the runs still open."""
        try:
            for r in self.runs:  # first, as before sinks had anything to close: its errors are the ones reported
                r.ckpt.close()
        finally:
            if failed:
                # Sinks that hold something open (a TensorBoard writer, a W&B run) must end with the run,
                # or the next cell of a grid starts beside them. The run's own error is what matters: a
                # sink failing to close as well is not reported.
                for r in self.runs:
                    if r.result is None:
                        with contextlib.suppress(Exception):
                            r.sink.close("failed", self.start)

    def active(self) -> list[tuple[int, _Run]]:
        return [(i, r) for i, r in enumerate(self.runs) if r.result is None]

    def resume(self) -> None:
        # A process failing here alone would leave the others waiting in the first train step.
        with together():
            restored = [r.restore(self.steps.lane or self.steps) for r in self.runs]
            # A run already at its end is only evaluated and closed; the others go on from one step.
            starts = sorted({s for (_, s), r in zip(restored, self.runs) if s < r.S})
            if len(starts) > 1:
                raise ConfigError(f"the runs of a pack resume from different steps {starts}; run them unpacked "
                                  "(train.pack=1) until they are done")
            self.start = starts[0] if starts else max(s for _, s in restored)
            self.state = self.steps.stack([st for st, _ in restored]) if self.K else restored[0][0]
            for r, (_, s) in zip(self.runs, restored):
                r.ckpt_step = s
                r.sink.start(r.S, s)

    def first_eval(self) -> bool:
        """Step 0 (init), or a resume at a step that owes an eval: a preemption may have skipped or
        abandoned it (at the last step too: the state is saved there, the eval is not). Closes the
        runs already complete; whether any run has steps left to train."""
        owed = [(i, r) for i, r in self.active() if self.start % self.t_cfg.eval_every == 0 or r.ckpt_step >= r.S]
        if owed and not self.eval_at(None, owed):  # preempted during this eval: their checkpoints hold the state
            self.preempted(self.active())
        for _, r in self.active():
            if r.ckpt_step >= r.S:
                r.end("done", r.S, "already complete")
        return bool(self.active())

    def flush(self, upto: int | None = None) -> dict[int, int]:
        """Fetch pending chunk metrics (all, or those ending at or before `upto`), write each active
        run's logged steps; {lane: first step whose loss is not finite}."""
        take = [p for p in self.pending if upto is None or p[0] <= upto]
        self.pending = [p for p in self.pending if not (upto is None or p[0] <= upto)]
        if not take:
            return {}
        host = jax.device_get([m for _, m in take])
        s_all = np.concatenate([np.arange(end - m["loss"].shape[-1] + 1, end + 1)
                                for (end, _), m in zip(take, host)])
        loss = np.concatenate([np.atleast_2d(m["loss"]) for m in host], axis=1).astype(np.float64)
        gnorm = np.concatenate([np.atleast_2d(m["grad_norm"]) for m in host], axis=1).astype(np.float64)
        bad = {i: r.write(s_all, loss[i], gnorm[i], self.t_cfg.log_every, self.cfg.tokens_per_step)
               for i, r in self.active()}
        return {i: s for i, s in bad.items() if s is not None}

    def diverged(self, bad: dict[int, int], what: str) -> None:
        for i, step in bad.items():
            r = self.runs[i]
            r.end("diverged", step, f"diverged: {what} is not finite at step {step}; no checkpoint saved past "
                  f"step {r.ckpt_step}")

    def eval_at(self, step: int | None, due: list[tuple[int, _Run]], may_stop: bool = True) -> bool:
        """Evaluate the runs `due` at `step` (None: each at its checkpoint's); False if a preemption
        landed during it (and may stop it)."""
        out = evaluate(self.steps, self.state.params, self.val_BT1, self.t_cfg.batch_size,
                       lambda: may_stop and any_process(self.preempt.requested)[0])
        if out is None:
            return False
        bad: dict[int, int] = {}
        with together():  # a metrics write: process 0's alone
            for i, r in due:
                at = r.ckpt_step if step is None else step
                r.sink.write_eval(at, *out[i])
                if math.isfinite(out[i][0]):
                    r.last_eval = out[i][0]
                else:
                    bad[i] = at
        self.diverged(bad, "eval loss")
        return True

    def save(self, s: int, which: list[tuple[int, _Run]]) -> None:
        with together():
            for _, r in which:
                r.sink.flush()  # metrics up to s are durable before checkpoint s exists
        for i, r in which:
            r.ckpt.save(s, self.steps.unstack(self.state, i) if self.K else self.state, {**r.meta, "step": s})
            r.ckpt_step = s

    def preempted(self, which: list[tuple[int, _Run]]) -> None:
        for _, r in which:  # each was saved at its ckpt_step, where it resumes
            r.end("preempted", r.ckpt_step, f"preempted: checkpoint saved at step {r.ckpt_step}; run again to "
                  "resume")

    def train_chunks(self) -> None:
        t_cfg, steps = self.t_cfg, self.steps
        with contextlib.ExitStack() as open_batches:
            by_seed = {s: open_batches.enter_context(contextlib.closing(tokenstore.batches(
                self.store, s, self.start, self.S_max, t_cfg.batch_size, self.cfg.model.seq_len, self.k, self.rows)))
                for s in dict.fromkeys(r.cfg.train.data_seed for r in self.runs)}
            seeds, ends = [r.cfg.train.data_seed for r in self.runs], sorted({r.S for r in self.runs})
            pieces = pack_pieces(by_seed, seeds, ends, self.K)
            with together():
                piece = next(pieces, None)
            while piece is not None and self.active():
                s, x, y = piece
                axis = 2 if self.K else 1
                B = t_cfg.batch_size
                self.state, metrics = steps.train(self.state, to_global(x, steps.batch_sharding, B, axis),
                                                  to_global(y, steps.batch_sharding, B, axis), self.lrs_dev)
                self.pending.append((s, metrics))
                # While the device trains: the previous chunk's metrics (lagged fetch) and the next
                # chunk's batches. Either can fail in one process only (process 0 alone writes metrics;
                # each reads its own rows), so a failure is part of the one decision every process
                # takes per chunk, with preemption (a SIGTERM may reach one of them only) and the
                # time-based checkpoint (each has its own clock).
                error: Exception | None = None
                bad: dict[int, int] = {}
                try:
                    if len(self.pending) >= 2 and self.pending[-2][0] % t_cfg.log_every == 0:
                        bad = self.flush(upto=self.pending[-2][0])
                    piece = next(pieces, None)
                except Exception as e:  # noqa: BLE001 - raised by agree, in every process
                    error = e
                self.after_chunk(s, error, bad)

    def after_chunk(self, s: int, error: Exception | None, bad: dict[int, int]) -> None:
        """The decisions after the chunk ending at step `s`: stop, checkpoint, evaluate, close the runs
        that end here."""
        t_cfg = self.t_cfg
        stop, due = agree(error, self.preempt.requested, any(r.ckpt.due(s) for _, r in self.active()))
        self.diverged(bad, "train loss")
        aligned = (s - self.start) % self.k == 0 or s == self.S_max
        stop, due = stop and aligned, due and aligned
        ending = [(i, r) for i, r in self.active() if r.S == s]
        is_eval = s % t_cfg.eval_every == 0 or bool(ending)
        saving = self.active() if (stop or due or s == self.S_max) else ending
        if is_eval or saving:
            with together():
                bad = self.flush()
            self.diverged(bad, "train loss")
            saving = [(i, r) for i, r in saving if r.result is None]
        if is_eval and not stop:
            # A pack's run that ends inside a chunk is evaluated whatever the flag says: the
            # pack can stop only where its chunks start anew, and that run has no later step.
            owed = [(i, r) for i, r in self.active() if s % t_cfg.eval_every == 0 or s == r.S]
            if owed and not self.eval_at(s, owed, may_stop=aligned):  # preempted during the eval
                stop = True
                saving = self.active()  # the eval is owed to their resume
        self.save(s, [(i, r) for i, r in saving if r.result is None])
        for _, r in ending:
            if r.result is None and not stop:
                r.end("done", r.S)
        if stop:
            self.preempted(self.active())
