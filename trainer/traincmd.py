"""`scaling-grid train`: one run in a folder of its own (config.yaml, metrics/, checkpoints/,
result.json), checked against the config it was started with and held under a lock while it trains."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import tokenstore
from .backend import accelerator_unused, backend_line
from .config import ConfigError, RunConfig, fingerprint, from_dict
from .logsinks import LogLineSink, ProgressSink, interactive, within
from .loop import RunResult, train
from .metrics import MetricsSink, Sinks, TensorStoreSink, read_step
from .model import Arch, compute_dtype, flops_per_token, make_arch, param_counts
from .paths import is_remote, name_of, path_of
from .peaks import peak_flops
from .runtime import barrier, is_writer
from .sharding import make_mesh
from .step import Steps, abstract_state, build, check_batch, check_state_fits
from .trackers import TensorBoardSink, WandbSink, run_labels, tags


def run_name(cfg: RunConfig) -> str:
    """A `train` run's id for W&B: the out_dir's name and a hash of what changes its curve, so the same
    folder name used for two different runs never appends one to the other's W&B run."""
    digest = hashlib.blake2b(json.dumps(fingerprint(cfg), sort_keys=True).encode(), digest_size=3).hexdigest()
    return f"{name_of(cfg.out_dir)}-{digest}"


def train_cli(cfg: RunConfig, *, progress: bool = True, tensorboard: str | None = None,
              wandb: str | None = None, wandb_group: str | None = None) -> RunResult:
    """`scaling-grid train`: a run directory with config.yaml, metrics/ (zarr) and checkpoints/.
    Every check (config against the folder's, memory, optional sinks' packages) runs before anything
    is written there. progress: a bar on a terminal (plain lines otherwise and without it);
    tensorboard: event files in <tensorboard>/<out_dir name>; wandb: a W&B run in this project (and
    group wandb_group); both with the run's labels (trackers.run_labels).
    out_dir may be a gs:// URL (an etils.epath.Path there, see paths.path_of; metrics go through
    TensorStore's kvstore)."""
    out = path_of(cfg.out_dir)
    writer = is_writer()  # on many processes, process 0 writes the folder; all write checkpoint shards
    if writer:
        print(backend_line(), flush=True)
        if (warning := accelerator_unused()) is not None:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    extra: list[MetricsSink] = []
    labels = run_labels(cfg, "single")
    if tensorboard is not None and writer:
        extra.append(TensorBoardSink(Path(tensorboard) / out.name, hparams=labels,
                                     recorded=lambda step: read_step(os.fspath(out / "metrics"), step)))
    wandb_run = None
    if wandb is not None and writer:
        wandb_run = WandbSink(wandb, run_name(cfg), {**labels, **cfg.to_dict()}, group=wandb_group, tags=tags(labels))
        extra.append(wandb_run)
    saved = out / "config.yaml"
    if saved.exists():
        old = fingerprint(saved_config(saved))
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
    if wandb_run is not None:
        wandb_run.open()  # a refused login is a refusal too
    out.mkdir(parents=True, exist_ok=True)  # only now: a run refused above leaves nothing behind
    with exclusive(out):
        if not saved.exists():
            saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return _train_in(out, cfg, store, arch, steps, progress, extra)


@contextlib.contextmanager
def exclusive(out: Any) -> Iterator[None]:
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


def saved_config(path: Any) -> RunConfig:
    """The config a run folder was started with (its config.yaml); ConfigError if unreadable."""
    try:
        return from_dict(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path} (the config this run folder was started with) is unreadable: "
                          f"{str(e).splitlines()[0][:200]}; restore it, or choose a new out_dir") from None


def _train_in(out: Any, cfg: RunConfig, store: tokenstore.TokenStore, arch: Arch, steps: Steps,
              progress: bool = True, extra: Sequence[MetricsSink] = ()) -> RunResult:
    counts = param_summary(steps, arch)
    print(within(f"{cfg.model.variant} width {arch.width} depth {arch.depth} heads {arch.heads}: "
                 f"{counts['non_embedding']:,} non-embedding params, {counts['embedding']:,} embedding, "
                 f"{counts['head']:,} head; {counts['flops_per_token']:,} FLOPs/token; "
                 f"{cfg.steps:,} steps x {cfg.tokens_per_step:,} tokens"), flush=True)
    if progress and interactive():
        shown: MetricsSink = ProgressSink(cfg.tokens_per_step, desc=out.name)
    else:  # a log file: a line every 30 s and one per eval instead of a bar's redraws
        shown = LogLineSink(cfg.tokens_per_step, flops_per_token=counts["flops_per_token"],
                            peak_flops=peak_flops(steps.mesh.devices.flat, arch.dtype))
    t0 = time.perf_counter()
    result = train(cfg, Sinks(TensorStoreSink(os.fspath(out / "metrics"), cfg.steps), shown, *extra),
                   out / "checkpoints", store=store, steps=steps)
    dt = time.perf_counter() - t0
    if result.status == "done":
        what = "already complete" if result.message else f"{cfg.steps:,} steps in {dt:.1f} s"
        print(within(f"metrics in {_shown(out / 'metrics')}"))  # a path may be long: the result goes last
        print(within(f"done: {what}; final eval loss {result.eval_loss:.4f} "
                     f"(ln vocab = {math.log(store.vocab_size):.3f})"))
    else:
        print(result.message, file=sys.stderr)
    loss = result.eval_loss if math.isfinite(result.eval_loss) else None  # JSON has no NaN
    # vocab: `export` of this folder derives N and FLOPs/token from it (a bpe vocabulary may differ
    # from the size asked for)
    (out / "result.json").write_text(json.dumps({"status": result.status, "step": result.step,
                                                 "message": result.message, "eval_loss": loss,
                                                 "vocab": store.vocab_size}, allow_nan=False))
    return result


def _shown(path: Any) -> str:
    """A local path relative to the working folder when it is under it (shorter on a line), else whole."""
    p = os.fspath(path)
    rel = p if is_remote(p) else os.path.relpath(p)
    return p if rel.startswith("..") else rel


def param_summary(steps: Steps, arch: Arch) -> dict[str, int]:
    """Parameter counts (non-embedding, embedding, head) and FLOPs per token of a run's model."""
    counts = param_counts(abstract_state(steps).params)
    counts["flops_per_token"] = flops_per_token(arch, counts["non_embedding"])
    return counts
