"""The JAX runtime of one process: the persistent compile cache, `jax.distributed`, and the decisions
all processes of a multi-host job take together.

On a pod every process runs the same program, and any Python decision that leads into a collective
(save a checkpoint, stop for a preemption, abandon an eval, skip or fail a cell) must come out the same
in every process, or one waits in orbax's barrier while another waits in the train step's all-reduce,
for ever. A SIGTERM may reach one worker only and each host has its own clock, so such decisions go
through :func:`any_process` (one small all-gather) or :func:`from_process_0` (a broadcast). Host-side
work that can fail in one process only (a metrics write on process 0, a batch read) runs inside
:func:`together`, so a failure anywhere is raised everywhere. On one process these are plain returns:
nothing is added to a single-host run.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError


@dataclass(frozen=True)
class Distributed:
    """How to join a multi-process job. All None: JAX's auto-detection (TPU VM, SLURM, Open MPI, K8s)."""
    coordinator: str | None = None       # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    peer_timeout: float = 60.0           # a lost process is noticed within this many seconds (trainer/peers.py)

    def check(self) -> None:
        given = [v is not None for v in (self.coordinator, self.num_processes, self.process_id)]
        if any(given) and not all(given):
            raise ConfigError("--coordinator, --num-processes and --process-id go together (or none of them: "
                              "JAX detects TPU VMs, SLURM, Open MPI and Kubernetes by itself)")
        if not 0 < self.peer_timeout < float("inf"):
            raise ConfigError(f"--peer-timeout={self.peer_timeout:g}: must be a positive number of seconds")
        if all(given):
            host, _, port = (self.coordinator or "").rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--coordinator={self.coordinator!r}: expected HOST:PORT, e.g. 10.0.0.2:1234")
            if not (self.num_processes or 0) >= 1 or not 0 <= (self.process_id or 0) < (self.num_processes or 0):
                raise ConfigError(f"--process-id={self.process_id} --num-processes={self.num_processes}: need "
                                  "0 <= process id < number of processes")


COMPILE_CACHE_ENV = "SCALING_GRID_COMPILE_CACHE"


def setup(distributed: Distributed | None = None, compile_cache: str | None = None) -> None:
    """A persistent compilation cache, then jax.distributed when asked. Call before anything touches a
    JAX backend: initialize must come first.

    The cache: `compile_cache` (--compile-cache), else $SCALING_GRID_COMPILE_CACHE, else what the user
    configured for JAX (JAX_COMPILATION_CACHE_DIR), else ~/.cache/scaling-grid/jax. A folder, a file://
    URL or a gs:// URL (the hosts of a pod share one in a bucket; JAX reaches it through etils.epath);
    a bucket that does not answer is a ConfigError here, before any compute."""
    import jax
    # orbax logs a warning each time a branch opens its trunk's checkpoints read-only (as intended).
    logging.getLogger("absl").addFilter(lambda r: "Given directory is read only" not in r.getMessage())
    where = compile_cache or os.environ.get(COMPILE_CACHE_ENV)
    if where:
        from .paths import check_writable, is_remote, local
        check_writable("--compile-cache" if compile_cache else COMPILE_CACHE_ENV, where)
        jax.config.update("jax_compilation_cache_dir", where.rstrip("/") if is_remote(where) else local(where))
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    elif not os.environ.get("JAX_COMPILATION_CACHE_DIR") and not jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scaling-grid" / "jax"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if distributed is not None:
        distributed.check()
        from . import peers
        from .preemption import catch_early_sigterm
        peers.initialize(distributed.coordinator, distributed.num_processes, distributed.process_id,
                         distributed.peer_timeout)
        # After initialize: its preemption notifier takes SIGTERM and swallows it (jax 0.10), so a
        # SIGTERM during start-up went unseen. Kept here, it stops every process at the first decision.
        catch_early_sigterm()


def multi_process() -> bool:
    import jax
    return jax.process_count() > 1


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag, True if it is True in any process: one all-gather for all of them."""
    if not multi_process():
        return tuple(bool(f) for f in flags)
    import jax
    from jax.experimental import multihost_utils
    got = np.asarray(multihost_utils.process_allgather(np.array(flags, np.int32)))
    return tuple(bool(x) for x in np.asarray(got.reshape(jax.process_count(), len(flags)).any(axis=0)))


class FailedElsewhere(RuntimeError):
    """Another process failed at this point (its log says why); this one stops with it rather than wait
    for it in the next collective. ``fatal``: the failure stops the whole command, not only one run."""

    def __init__(self, fatal: bool = False):
        super().__init__("another process of this job failed here; its log says why")
        self.fatal = fatal


def agree(error: Exception | None, *flags: bool, fatal: bool = False) -> tuple[bool, ...]:
    """One exchange for a local failure and some decisions: raise in every process if ``error`` is set
    in any (the failing processes their own error, the others :class:`FailedElsewhere`, fatal if any
    failure was), else return each flag, True if it is True in any process."""
    failed, stop_all, *agreed = any_process(error is not None, fatal and error is not None, *flags)
    if error is not None:
        raise error
    if failed:
        raise FailedElsewhere(fatal=stop_all)
    return tuple(agreed)


@contextlib.contextmanager
def together(fatal: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Run host-side work that may fail in some processes only; then, if it failed in any, raise in
    every one (:func:`agree`; fatal if any failure was one of ``fatal``). One all-gather on many
    processes; nothing on one."""
    error: Exception | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised by agree, once every process knows
        error = e
    agree(error, fatal=isinstance(error, fatal))


def from_process_0(values: Sequence[int]) -> list[int]:
    """Process 0's values, in every process (what process 0 read or decided is what all do)."""
    if not multi_process():
        return [int(v) for v in values]
    from jax.experimental import multihost_utils
    return [int(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(np.array(values, np.int64)))]


def is_writer() -> bool:
    """Process 0 writes the records (metrics, status, configs); every process writes its checkpoint shards."""
    import jax
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (e.g. the others wait while process 0 prepares the data)."""
    if multi_process():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
