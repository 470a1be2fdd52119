"""The training loop of one run: data, compiled steps, evals, metrics, checkpoints, preemption.

Between compiled calls Python only dispatches the next chunk of steps; metrics of a chunk are fetched
after the next chunk is dispatched, so the device never waits on the host. Every k steps (log, eval,
checkpoint) the loop syncs. A run is resumable from any checkpoint, bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from . import tokenstore
from .checkpoint import Checkpointer, restore_from
from .config import ConfigError, RunConfig, fingerprint
from .metrics import (
    LogLineSink,
    MetricsSink,
    ProgressSink,
    Sinks,
    TensorBoardSink,
    TensorStoreSink,
    WandbSink,
    interactive,
    read_step,
)
from .model import Arch, compute_dtype, make_arch
from .paths import is_remote, name_of, path_of
from .preemption import Preemption
from .runtime import agree, any_process, barrier, is_writer, together
from .sharding import make_mesh
from .step import Steps, abstract_state, build, check_batch, check_state_fits, lr_table, tau


@dataclass
class RunResult:
    status: str          # done | diverged | preempted
    step: int            # last step completed (for diverged: the first step with a non-finite loss)
    message: str = ""
    eval_loss: float = math.nan


def _host_rows(sharding: Any, batch_size: int) -> slice:
    """The rows of the global batch this process feeds: those its devices hold under the batch
    sharding (all of them on one host). They are contiguous with every mesh `sharding.make_mesh`
    builds; anything else would need a gather across hosts, so it is refused."""
    index = sharding.addressable_devices_indices_map((batch_size, 1))
    rows = {i[0].indices(batch_size)[:2] for i in index.values()}
    lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
    if sum(b - a for a, b in rows) != hi - lo:
        raise ConfigError(f"this process's devices hold rows {sorted(rows)} of the batch, not one contiguous "
                          "block; change the mesh")
    return slice(lo, hi)


def _to_global(local: np.ndarray, sharding: Any, global_rows: int, axis: int) -> jax.Array:
    shape = list(local.shape)
    shape[axis] = global_rows
    return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


def evaluate(steps: Steps, params: Any, val_BT1: np.ndarray, batch_size: int,
             stop: Callable[[], bool] = lambda: False) -> list[tuple[float, float]] | None:
    """Per run of the state (one, or each of a pack's): the mean validation loss over the fixed set
    and its standard error across sequences. None if `stop()` became true part-way (a preemption
    landed during eval)."""
    rows = _host_rows(steps.eval_sharding, batch_size)
    losses = []
    for lo in range(0, len(val_BT1), batch_size):
        if stop():
            return None
        chunk = val_BT1[lo:lo + batch_size][rows]
        losses.append(steps.eval(params, _to_global(chunk, steps.eval_sharding, batch_size, 0)))
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
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
    cfg, K = lanes[0].cfg, (len(lanes) if len(lanes) > 1 else 0)
    t_cfg = cfg.train
    if K:
        from .config import pack_key
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
    val_BT1 = store.val_set(t_cfg.eval_batches * t_cfg.batch_size, cfg.model.seq_len)
    runs = [_Run(lane, table_len, warn) for lane in lanes]
    width = max(len(r.table) for r in runs)
    tables = np.stack([np.pad(r.table, (0, width - len(r.table))) for r in runs])
    lrs_dev = jax.device_put(tables if K else tables[0], steps.lr_sharding)
    S_max, k = max(r.S for r in runs), t_cfg.steps_per_call
    rows = _host_rows(steps.eval_sharding, t_cfg.batch_size)

    own_signal = preempt is None
    preempt = preempt or Preemption()
    start, failed = 0, False

    def active() -> list[tuple[int, _Run]]:
        return [(i, r) for i, r in enumerate(runs) if r.result is None]

    try:
        # A process failing here alone would leave the others waiting in the first train step.
        with together():
            restored = [r.restore(steps.lane or steps) for r in runs]
            # A run already at its end is only evaluated and closed; the others go on from one step.
            starts = sorted({s for (_, s), r in zip(restored, runs) if s < r.S})
            if len(starts) > 1:
                raise ConfigError(f"the runs of a pack resume from different steps {starts}; run them unpacked "
                                  "(train.pack=1) until they are done")
            start = starts[0] if starts else max(s for _, s in restored)
            state = steps.stack([st for st, _ in restored]) if K else restored[0][0]
            for r, (_, s) in zip(runs, restored):
                r.ckpt_step = s
                r.sink.start(r.S, s)

        pending: list[tuple[int, dict[str, jax.Array]]] = []

        def flush(upto: int | None = None) -> dict[int, int]:
            """Fetch pending chunk metrics (all, or those ending at or before `upto`), write each active
            run's logged steps; {lane: first step whose loss is not finite}."""
            nonlocal pending
            take = [p for p in pending if upto is None or p[0] <= upto]
            pending = [p for p in pending if not (upto is None or p[0] <= upto)]
            if not take:
                return {}
            host = jax.device_get([m for _, m in take])
            s_all = np.concatenate([np.arange(end - m["loss"].shape[-1] + 1, end + 1)
                                    for (end, _), m in zip(take, host)])
            loss = np.concatenate([np.atleast_2d(m["loss"]) for m in host], axis=1).astype(np.float64)
            gnorm = np.concatenate([np.atleast_2d(m["grad_norm"]) for m in host], axis=1).astype(np.float64)
            bad = {i: r.write(s_all, loss[i], gnorm[i], t_cfg.log_every, cfg.tokens_per_step) for i, r in active()}
            return {i: s for i, s in bad.items() if s is not None}

        def diverged(bad: dict[int, int], what: str) -> None:
            for i, step in bad.items():
                r = runs[i]
                r.end("diverged", step, f"diverged: {what} is not finite at step {step}; no checkpoint saved past "
                      f"step {r.ckpt_step}")

        def eval_at(step: int | None, due: list[tuple[int, _Run]], may_stop: bool = True) -> bool:
            """Evaluate the runs `due` at `step` (None: each at its checkpoint's); False if a preemption
            landed during it (and may stop it)."""
            out = evaluate(steps, state.params, val_BT1, t_cfg.batch_size,
                           lambda: may_stop and any_process(preempt.requested)[0])
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
            diverged(bad, "eval loss")
            return True

        def lane_state(i: int) -> Any:
            return steps.unstack(state, i) if K else state

        def save(s: int, which: list[tuple[int, _Run]]) -> None:
            with together():
                for _, r in which:
                    r.sink.flush()  # metrics up to s are durable before checkpoint s exists
            for i, r in which:
                r.ckpt.save(s, lane_state(i), {**r.meta, "step": s})
                r.ckpt_step = s

        def preempted(which: list[tuple[int, _Run]]) -> None:
            for _, r in which:  # each was saved at its ckpt_step, where it resumes
                r.end("preempted", r.ckpt_step, f"preempted: checkpoint saved at step {r.ckpt_step}; run again to "
                      "resume")

        with preempt.installed() if own_signal else contextlib.nullcontext():
            # Step 0 (init), or a resume at a step that owes an eval: a preemption may have skipped or
            # abandoned it (at the last step too: the state is saved there, the eval is not).
            owed = [(i, r) for i, r in active() if start % t_cfg.eval_every == 0 or r.ckpt_step >= r.S]
            if owed and not eval_at(None, owed):  # preempted during this eval: their checkpoints hold the state
                preempted(active())
            for _, r in active():
                if r.ckpt_step >= r.S:
                    r.end("done", r.S, "already complete")
            if not active():
                return [r.result for r in runs if r.result is not None]
            with contextlib.ExitStack() as open_batches:
                by_seed = {s: open_batches.enter_context(contextlib.closing(tokenstore.batches(
                    store, s, start, S_max, t_cfg.batch_size, cfg.model.seq_len, k, rows)))
                    for s in dict.fromkeys(r.cfg.train.data_seed for r in runs)}
                pieces = _pieces(by_seed, [r.cfg.train.data_seed for r in runs], sorted({r.S for r in runs}), K)
                with together():
                    piece = next(pieces, None)
                while piece is not None and active():
                    s, x, y = piece
                    axis = 2 if K else 1
                    state, metrics = steps.train(state, _to_global(x, steps.batch_sharding, t_cfg.batch_size, axis),
                                                 _to_global(y, steps.batch_sharding, t_cfg.batch_size, axis), lrs_dev)
                    pending.append((s, metrics))
                    # While the device trains: the previous chunk's metrics (lagged fetch) and the next
                    # chunk's batches. Either can fail in one process only (process 0 alone writes metrics;
                    # each reads its own rows), so a failure is part of the one decision every process
                    # takes per chunk, with preemption (a SIGTERM may reach one of them only) and the
                    # time-based checkpoint (each has its own clock).
                    error: Exception | None = None
                    bad: dict[int, int] = {}
                    try:
                        if len(pending) >= 2 and pending[-2][0] % t_cfg.log_every == 0:
                            bad = flush(upto=pending[-2][0])
                        piece = next(pieces, None)
                    except Exception as e:  # noqa: BLE001 - raised by agree, in every process
                        error = e
                    stop, due = agree(error, preempt.requested, any(r.ckpt.due(s) for _, r in active()))
                    diverged(bad, "train loss")
                    aligned = (s - start) % k == 0 or s == S_max
                    stop, due = stop and aligned, due and aligned
                    ending = [(i, r) for i, r in active() if r.S == s]
                    is_eval = s % t_cfg.eval_every == 0 or bool(ending)
                    saving = active() if (stop or due or s == S_max) else ending
                    if is_eval or saving:
                        with together():
                            bad = flush()
                        diverged(bad, "train loss")
                        saving = [(i, r) for i, r in saving if r.result is None]
                    if is_eval and not stop:
                        # A pack's run that ends inside a chunk is evaluated whatever the flag says: the
                        # pack can stop only where its chunks start anew, and that run has no later step.
                        owed = [(i, r) for i, r in active() if s % t_cfg.eval_every == 0 or s == r.S]
                        if owed and not eval_at(s, owed, may_stop=aligned):  # preempted during the eval
                            stop = True
                            saving = active()  # the eval is owed to their resume
                    save(s, [(i, r) for i, r in saving if r.result is None])
                    for _, r in ending:
                        if r.result is None and not stop:
                            r.end("done", r.S)
                    if stop:
                        preempted(active())
        return [r.result if r.result is not None else r.end("done", r.S) for r in runs]
    except BaseException:
        failed = True
        raise
    finally:
        try:
            for r in runs:  # first, as before sinks had anything to close: its errors are the ones reported
                r.ckpt.close()
        finally:
            if failed:
                # Sinks that hold something open (a TensorBoard writer, a W&B run) must end with the run,
                # or the next cell of a grid starts beside them. The run's own error is what matters: a
                # sink failing to close as well is not reported.
                for r in runs:
                    if r.result is None:
                        with contextlib.suppress(Exception):
                            r.sink.close("failed", start)


def _pieces(by_seed: Mapping[int, Iterator[tuple[int, np.ndarray, np.ndarray]]], seeds: Sequence[int],
            ends: Sequence[int], K: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(last step, x, y) of each train call: the chunks of each data seed stacked in lane order (a
    pack), cut where a run's budget ends inside a chunk so that its last state can be saved."""
    for chunks in zip(*by_seed.values()):
        got = dict(zip(by_seed, chunks))
        first, x, y = chunks[0]
        if K:
            x = np.stack([got[s][1] for s in seeds])
            y = np.stack([got[s][2] for s in seeds])
        n = x.shape[1] if K else x.shape[0]
        cuts = [e - first for e in ends if first < e < first + n]
        for a, b in zip([0, *cuts], [*cuts, n]):
            yield (first + b, x[:, a:b], y[:, a:b]) if K else (first + b, x[a:b], y[a:b])


def backend_line() -> str:
    """'jax 0.10.2 on gpu: 8 x NVIDIA H100 80GB HBM3': what this process computes on, printed first by
    `train` and `run`, so a CPU-only jaxlib on a GPU machine shows at once. Initialises the backend:
    call it after jax.distributed.initialize."""
    devices = jax.devices()
    backend, n = jax.default_backend(), len(devices)
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    what = f"{n} device{'s' if n > 1 else ''} ({kinds})" if backend == "cpu" else f"{n} x {kinds}"
    line = f"jax {jax.__version__} on {backend}: {what}"
    if jax.process_count() > 1:
        line += f"; process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local"
    return line


def accelerator_unused() -> str | None:
    """A warning when JAX runs on the CPU of a machine with an accelerator it is not using (a CPU-only
    jaxlib, or one that failed to start it), else None. JAX_PLATFORMS=cpu says the CPU is intended."""
    if jax.default_backend() != "cpu" or os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return None
    if Path("/dev/nvidia0").exists():
        return ("an NVIDIA GPU is present (/dev/nvidia0) but JAX runs on the CPU: install a CUDA jaxlib "
                "(pip install -U 'jax[cuda12]'), or set JAX_PLATFORMS=cpu to say this is intended")
    if Path("/dev/accel0").exists():  # TPU v2-v4 (later ones use vfio, which other devices share)
        return ("a TPU is present but JAX runs on the CPU: install the TPU jaxlib (pip install -U 'jax[tpu]'), "
                "or set JAX_PLATFORMS=cpu to say this is intended")
    return None


def run_name(cfg: RunConfig) -> str:
    """A `train` run's id for W&B: the out_dir's name and a hash of what changes its curve, so the same
    folder name used for two different runs never appends one to the other's W&B run."""
    import hashlib
    digest = hashlib.blake2b(json.dumps(fingerprint(cfg), sort_keys=True).encode(), digest_size=3).hexdigest()
    return f"{name_of(cfg.out_dir)}-{digest}"


def train_cli(cfg: RunConfig, *, progress: bool = True, tensorboard: str | None = None,
              wandb: str | None = None) -> RunResult:
    """`scaling-grid train`: a run directory with config.yaml, metrics/ (zarr) and checkpoints/.
    Every check (config against the folder's, memory, optional sinks' packages) runs before anything
    is written there. progress: a bar on a terminal (plain lines otherwise and without it);
    tensorboard: event files in <tensorboard>/<out_dir name>; wandb: a W&B run in this project.
    out_dir may be a gs:// URL (an etils.epath.Path there, see paths.path_of; metrics go through
    TensorStore's kvstore)."""
    out = path_of(cfg.out_dir)
    writer = is_writer()  # on many processes, process 0 writes the folder; all write checkpoint shards
    if writer:
        print(backend_line(), flush=True)
        if (warning := accelerator_unused()) is not None:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    extra: list[MetricsSink] = []
    if tensorboard is not None and writer:
        extra.append(TensorBoardSink(Path(tensorboard) / out.name,
                                     recorded=lambda step: read_step(os.fspath(out / "metrics"), step)))
    if wandb is not None and writer:
        extra.append(WandbSink(wandb, run_name(cfg), cfg.to_dict()))
    saved = out / "config.yaml"
    if saved.exists():
        old = fingerprint(_saved_config(saved))
        new = fingerprint(cfg)
        if old != new:
            diff = [f"{s}.{k}: {old.get(s, {}).get(k, '(default)')!r} -> {new[s].get(k, '(default)')!r}"
                    for s in new if isinstance(new[s], dict) for k in sorted(set(new[s]) | set(old.get(s, {})))
                    if old.get(s, {}).get(k) != new[s].get(k)]  # to_dict omits some fields at their defaults
            raise ConfigError(f"out_dir={cfg.out_dir!r} holds a run with a different config ({'; '.join(diff)}); "
                              "choose a new out_dir or restore the old values")
    check_batch(cfg.train.batch_size, cfg.train.grad_accum, mesh=cfg.mesh)
    if not writer:  # process 0 tokenizes; the others open what it wrote
        barrier("token store prepared")
    store = tokenstore.prepare(cfg.data)
    if writer:
        barrier("token store prepared")
    store.check_fits(cfg.train.eval_batches * cfg.train.batch_size, cfg.model.seq_len)
    arch = make_arch(cfg.model, store.vocab_size, compute_dtype(cfg.train.dtype))
    steps = build(arch, cfg.optim, cfg.train.grad_accum, make_mesh(cfg.mesh))
    check_state_fits(steps)
    if not writer:
        return train(cfg, Sinks(), out / "checkpoints", store=store, steps=steps)
    out.mkdir(parents=True, exist_ok=True)  # only now: a run refused above leaves nothing behind
    with _exclusive(out):
        if not saved.exists():
            saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return _train_in(out, cfg, store, arch, steps, progress, extra)


@contextlib.contextmanager
def _exclusive(out: Any) -> Iterator[None]:
    """Hold an exclusive lock on a run folder for the whole run: a second `train` on the same out_dir
    would write checkpoints and metrics over the first. The kernel drops the lock when the process
    dies, so a crash never leaves it held. (flock: one machine; a grid's claim covers shared stores.)

    A run folder in a bucket is not locked: a bucket has no flock, and a lock object there would outlive
    a killed `train` with nothing to tell it is stale (there is no pid to check on another machine).
    Two `train`s on one bucket out_dir are the user's to avoid; a grid's conditional claims cover that."""
    if is_remote(os.fspath(out)):
        yield
        return
    fd = os.open(Path(os.fspath(out)) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"out_dir={str(out)!r} is in use by {holder}: wait for it to finish, stop it, or "
                              "choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: `status` reads a holder's line as "running" while its pid lives
    finally:
        os.close(fd)


def _saved_config(path: Any) -> RunConfig:
    from .config import from_dict
    try:
        return from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path} (the config this run folder was started with) is unreadable: "
                          f"{str(e).splitlines()[0][:200]}; restore it, or choose a new out_dir") from None


def _train_in(out: Any, cfg: RunConfig, store: tokenstore.TokenStore, arch: Arch, steps: Steps,
              progress: bool = True, extra: Sequence[MetricsSink] = ()) -> RunResult:
    counts = param_summary(steps, arch)
    print(f"{cfg.model.variant} width {arch.width} depth {arch.depth} heads {arch.heads}: "
          f"{counts['non_embedding']:,} non-embedding params, {counts['embedding']:,} embedding, "
          f"{counts['head']:,} head; {counts['flops_per_token']:,} FLOPs/token; "
          f"{cfg.steps:,} steps x {cfg.tokens_per_step:,} tokens", flush=True)
    if progress and interactive():
        shown: MetricsSink = ProgressSink(cfg.tokens_per_step, desc=out.name)
    else:  # a log file: a line every 30 s and one per eval instead of a bar's redraws
        from .peaks import peak_flops
        shown = LogLineSink(cfg.tokens_per_step, flops_per_token=counts["flops_per_token"],
                            peak_flops=peak_flops(steps.mesh.devices.flat, arch.dtype))
    t0 = time.perf_counter()
    result = train(cfg, Sinks(TensorStoreSink(os.fspath(out / "metrics"), cfg.steps), shown, *extra),
                   out / "checkpoints", store=store, steps=steps)
    dt = time.perf_counter() - t0
    if result.status == "done":
        what = "already complete" if result.message else f"{cfg.steps:,} steps in {dt:.1f} s"
        print(f"done: {what}; final eval loss {result.eval_loss:.4f} "
              f"(ln vocab = {math.log(store.vocab_size):.3f}); metrics in {out / 'metrics'}")
    else:
        print(result.message, file=sys.stderr)
    loss = result.eval_loss if math.isfinite(result.eval_loss) else None  # JSON has no NaN
    # vocab: `export` of this folder derives N and FLOPs/token from it (a bpe vocabulary may differ
    # from the size asked for)
    (out / "result.json").write_text(json.dumps({"status": result.status, "step": result.step,
                                                 "message": result.message, "eval_loss": loss,
                                                 "vocab": store.vocab_size}, allow_nan=False))
    return result


def param_summary(steps: Steps, arch: Arch) -> dict[str, int]:
    from .model import flops_per_token, param_counts
    counts = param_counts(abstract_state(steps).params)
    counts["flops_per_token"] = flops_per_token(arch, counts["non_embedding"])
    return counts
