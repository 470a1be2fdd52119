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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from . import tokenstore
from .checkpoint import Checkpointer, restore_from
from .config import ConfigError, RunConfig
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
from .model import Arch, make_arch
from .paths import is_remote, name_of, path_of
from .preemption import Preemption
from .runtime import agree, any_process, barrier, is_writer, together
from .sharding import make_mesh
from .step import Steps, abstract_state, build, check_batch, check_state_fits, lr_table


@dataclass
class RunResult:
    status: str          # done | diverged | preempted
    step: int            # last step completed (for diverged: the first step with a non-finite loss)
    message: str = ""
    eval_loss: float = math.nan


def compute_dtype(name: str) -> Any:
    if name == "auto":  # bf16 matmuls pay on accelerators; on CPU they gained nothing (notes/cpu-speed.md)
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


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
             stop: Callable[[], bool] = lambda: False) -> tuple[float, float] | None:
    """Mean validation loss over the fixed set and its standard error across sequences.
    Returns None if `stop()` became true part-way (a preemption landed during eval)."""
    rows = _host_rows(steps.eval_sharding, batch_size)
    losses = []
    for lo in range(0, len(val_BT1), batch_size):
        if stop():
            return None
        chunk = val_BT1[lo:lo + batch_size][rows]
        losses.append(steps.eval(params, _to_global(chunk, steps.eval_sharding, batch_size, 0)))
    per_seq = np.concatenate([np.asarray(x) for x in jax.device_get(losses)]).astype(np.float64)
    return float(per_seq.mean()), float(per_seq.std(ddof=1) / math.sqrt(len(per_seq)))


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
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
    t_cfg, S = cfg.train, cfg.steps
    store = store or tokenstore.prepare(cfg.data)
    arch = make_arch(cfg.model, store.vocab_size, compute_dtype(t_cfg.dtype))
    steps = steps or build(arch, cfg.optim, t_cfg.grad_accum, make_mesh(cfg.mesh))
    val_BT1 = store.val_set(t_cfg.eval_batches * t_cfg.batch_size, cfg.model.seq_len)
    lrs = lr_table(cfg.optim, S, table_len)
    lrs_dev = jax.device_put(lrs, steps.lr_sharding)
    lrs = lrs[:S].astype(np.float64)
    tau = np.concatenate([[0.0], np.cumsum(lrs)])  # tau[s] = sum of the lr of updates 1..s
    tps, k = cfg.tokens_per_step, t_cfg.steps_per_call
    rows = _host_rows(steps.eval_sharding, t_cfg.batch_size)

    ckpt = Checkpointer(ckpt_dir, t_cfg.keep, t_cfg.ckpt_every, t_cfg.ckpt_minutes, keep_steps, warn)
    own_signal = preempt is None
    preempt = preempt or Preemption()
    start, failed = 0, False
    try:
        # A process failing here alone would leave the others waiting in the first train step.
        with together():
            restored = ckpt.restore_latest(abstract_state(steps))
            if restored is None and init_from is not None:
                state, start = restore_from(init_from[0], init_from[1], abstract_state(steps)), init_from[1]
            elif restored is None:
                state, start = steps.init(jax.random.key(t_cfg.seed)), 0
            else:
                state, start = restored[0], int(restored[1]["step"])
            sink.start(S, start)
        meta = {"fingerprint": fingerprint(cfg)}

        pending: list[tuple[int, dict[str, jax.Array]]] = []

        def flush(upto: int | None = None) -> int | None:
            """Fetch pending chunk metrics (all, or those ending at or before `upto`), write the
            logged steps, and return the first step whose loss is not finite, if any."""
            nonlocal pending
            take = [p for p in pending if upto is None or p[0] <= upto]
            pending = [p for p in pending if not (upto is None or p[0] <= upto)]
            if not take:
                return None
            host = jax.device_get([m for _, m in take])
            s_all = np.concatenate([np.arange(end - len(m["loss"]) + 1, end + 1) for (end, _), m in zip(take, host)])
            loss = np.concatenate([m["loss"] for m in host]).astype(np.float64)
            gnorm = np.concatenate([m["grad_norm"] for m in host]).astype(np.float64)
            bad = ~np.isfinite(loss)
            first_bad = int(s_all[bad][0]) if bad.any() else None
            keep = (s_all % t_cfg.log_every == 0) | (s_all == S) | (s_all == first_bad)
            if first_bad is not None:
                keep &= s_all <= first_bad
            s = s_all[keep]
            sink.write_train(s, {"tokens": s * float(tps), "tau": tau[s], "lr": lrs[s - 1],
                                 "loss": loss[keep], "grad_norm": gnorm[keep]})
            return first_bad

        def diverged(step: int, what: str) -> RunResult:
            msg = f"diverged: {what} is not finite at step {step}; no checkpoint saved past step {ckpt_step}"
            sink.close("diverged", step, msg)
            return RunResult("diverged", step, msg)

        def eval_at(step: int) -> float | None:
            out = evaluate(steps, state.params, val_BT1, t_cfg.batch_size, lambda: any_process(preempt.requested)[0])
            if out is None:
                return None
            with together():  # a metrics write: process 0's alone
                sink.write_eval(step, *out)
            return out[0]

        ckpt_step, last_eval = start, math.nan
        with preempt.installed() if own_signal else contextlib.nullcontext():
            # Step 0 (init), or a resume at a step that owes an eval: a preemption may have skipped or
            # abandoned it (at the last step too: the state is saved there, the eval is not).
            if start % t_cfg.eval_every == 0 or start == S:
                loss = eval_at(start)
                if loss is None:  # preempted during this eval: checkpoint `start` holds the state
                    msg = f"preempted: checkpoint saved at step {start}; run again to resume"
                    sink.close("preempted", start, msg)
                    return RunResult("preempted", start, msg)
                last_eval = loss
            if start >= S:
                sink.close("done", S)
                return RunResult("done", S, "already complete", last_eval)
            batches = tokenstore.batches(store, t_cfg.data_seed, start, S, t_cfg.batch_size,
                                       cfg.model.seq_len, k, rows)
            with contextlib.closing(batches):
                with together():
                    chunk = next(batches, None)
                while chunk is not None:
                    first, x, y = chunk
                    s = first + x.shape[0]
                    state, metrics = steps.train(state, _to_global(x, steps.batch_sharding, t_cfg.batch_size, 1),
                                                 _to_global(y, steps.batch_sharding, t_cfg.batch_size, 1), lrs_dev)
                    pending.append((s, metrics))
                    # While the device trains: the previous chunk's metrics (lagged fetch) and the next
                    # chunk's batches. Either can fail in one process only (process 0 alone writes metrics;
                    # each reads its own rows), so a failure is part of the one decision every process
                    # takes per chunk, with preemption (a SIGTERM may reach one of them only) and the
                    # time-based checkpoint (each has its own clock).
                    error: Exception | None = None
                    bad = None
                    try:
                        if len(pending) >= 2 and pending[-2][0] % t_cfg.log_every == 0:
                            bad = flush(upto=pending[-2][0])
                        chunk = next(batches, None)
                    except Exception as e:  # noqa: BLE001 - raised by agree, in every process
                        error = e
                    stop, due = agree(error, preempt.requested, ckpt.due(s))
                    if bad is not None:
                        return diverged(bad, "train loss")
                    is_eval = s % t_cfg.eval_every == 0 or s == S
                    save = s == S or stop or due
                    if is_eval or save:
                        with together():
                            bad = flush()
                        if bad is not None:
                            return diverged(bad, "train loss")
                    if is_eval and not stop:
                        loss = eval_at(s)
                        if loss is None:  # a preemption landed during the eval: save, then stop
                            stop = save = True
                        elif not math.isfinite(loss):
                            return diverged(s, "eval loss")
                        else:
                            last_eval = loss
                    if save:
                        with together():
                            sink.flush()  # metrics up to s are durable before checkpoint s exists
                        ckpt.save(s, state, {**meta, "step": s})
                        ckpt_step = s
                    if stop:
                        ckpt.wait()
                        msg = f"preempted: checkpoint saved at step {s}; run again to resume"
                        sink.close("preempted", s, msg)
                        return RunResult("preempted", s, msg, last_eval)
        ckpt.wait()
        sink.close("done", S)
        return RunResult("done", S, "", last_eval)
    except BaseException:
        failed = True
        raise
    finally:
        try:
            ckpt.close()  # first, as before sinks had anything to close: its errors are the ones reported
        finally:
            if failed:
                # Sinks that hold something open (a TensorBoard writer, a W&B run) must end with the run,
                # or the next cell of a grid starts beside them. The run's own error is what matters: a
                # sink failing to close as well is not reported.
                with contextlib.suppress(Exception):
                    sink.close("failed", start)


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a config that change the loss curve (a resume must match them)."""
    d = cfg.to_dict()
    for key in ("log_every", "eval_every", "ckpt_every", "ckpt_minutes", "keep"):
        d["train"].pop(key)
    d.pop("out_dir")
    d.pop("mesh", None)  # a checkpoint restores onto any mesh (trainer/sharding.py)
    d["data"].pop("root")
    return d


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
    arch = make_arch(cfg.model, store.vocab_size, compute_dtype(cfg.train.dtype))
    steps = build(arch, cfg.optim, cfg.train.grad_accum, make_mesh(cfg.mesh))
    check_state_fits(steps)
    if not writer:
        return train(cfg, Sinks(), out / "checkpoints", store=store, steps=steps)
    out.mkdir(parents=True, exist_ok=True)
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
        shown = LogLineSink(cfg.tokens_per_step)
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
