"""A lost peer in a multi-process job is a decision, not a crash: every process learns within a bound
(``--peer-timeout``) that a process of its job is gone, records the running work as preempted and exits
with :data:`EXIT_PEER_LOST` and one line naming the lost process, the cell and its last checkpoint.

JAX's coordination service is the detector. :func:`initialize` joins the job with the bound as its
initialization, heartbeat and shutdown timeouts, so a process that does not join, or stops
heart-beating, is noticed by the service within the bound, and the service tells every other process.
What JAX then does (jax 0.10) is a C++ ``LOG(FATAL)``: a "Check failure stack trace" and SIGABRT
(exit 134), from a thread of its own, with no Python in between (the client's
``missed_heartbeat_callback`` cannot be set from Python: its status argument has no converter, and
calling it throws ``std::bad_cast``). So this module turns that abort into the documented exit:

- fd 2 (where C++ logs) goes through a pipe that a thread forwards line by line (Python's
  ``sys.stderr`` stays where it was); the fatal line of JAX's coordination agent is the signal that a
  peer is gone, and the stack trace after it is dropped;
- SIGABRT gets a C handler (libc's ``sleep``: it sleeps ``SIGABRT`` = 6 seconds and returns, and the
  abort goes on) that gives that thread the time to record the cell and exit;
- a collective that fails because its peer vanished (gloo: "Connection closed by peer") raises in
  the main thread first; :func:`check` holds it until the service has decided (the bound), so the
  cell is recorded preempted, not failed. An error that does not look like a lost peer goes on at once.

A process that never joins: ``jax.distributed.initialize`` raises after the bound; that is the same
exit. Nothing here runs on one process.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

EXIT_PEER_LOST = 75  # sysexits' EX_TEMPFAIL: run the same command again (every process) to resume
DEFAULT_TIMEOUT = 60.0
_FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
# Errors of a collective, a barrier or the coordination service whose peer went away (gloo on CPU,
# NCCL on GPU, the gRPC codes of the coordination service).
_PEER_ERROR = re.compile(r"gloo|nccl|connection (closed|reset|refused)|broken pipe|unavailable|deadline_exceeded|"
                         r"deadline exceeded|coordination service|heartbeat|barrier", re.IGNORECASE)


class _Watch:
    def __init__(self, timeout: float, process_id: int | None) -> None:
        self.timeout, self.process_id = timeout, process_id
        self.stderr = 2                      # where lines go: the original stderr once the pipe is in
        self.forwarder: threading.Thread | None = None
        self.handlers: list[Handler] = []
        self.fallback: Handler | None = None  # when no handler is in place (`train`: one run)
        self.lost = threading.Event()
        self.lock = threading.Lock()


_watch: _Watch | None = None
Handler = Callable[[str, bool], str]


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None,
               timeout: float = DEFAULT_TIMEOUT) -> None:
    """`jax.distributed.initialize` with `timeout` as the bound on joining, heart-beating and shutting
    down, and a lost peer turned into :data:`EXIT_PEER_LOST` from here on."""
    import jax
    global _watch
    _watch = _Watch(timeout, process_id)
    _forward_stderr(_watch)
    _delay_abort()
    bound = max(1, math.ceil(timeout))
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=bound,
                                   heartbeat_timeout_seconds=bound, shutdown_timeout_seconds=bound)
    except Exception as e:  # noqa: BLE001 - a peer that does not join is a lost peer; anything else is raised
        if not _PEER_ERROR.search(f"{type(e).__name__} {e}"):
            raise
        lost(f"not every process joined within {timeout:g} s ({_first_line(e)})")


@contextlib.contextmanager
def on_loss(handler: Handler) -> Iterator[None]:
    """While inside: if a peer is lost, `handler(why, record)` returns the words for the exit line
    (which cell, its last checkpoint) and, if `record`, records the running work as preempted
    (`record`: this is process 0, or process 0 is the one lost and the survivors record it). Runs on
    another thread while the main thread waits in a collective or in :func:`check`; it must be quick."""
    if _watch is None:
        yield
        return
    _watch.handlers.append(handler)
    try:
        yield
    finally:
        _watch.handlers.remove(handler)


def by_default(handler: Handler) -> None:
    """`handler` (as in :func:`on_loss`) for the rest of the process, when no other is in place."""
    if _watch is not None:
        _watch.fallback = handler


def exit_if_peer_lost(error: BaseException, handler: Handler | None = None) -> None:
    """Call before treating an exception as a failure: if it looks like a collective whose peer is
    gone, wait (at most the bound, and a margin) for the coordination service to decide; if it
    decides a peer is lost, `handler` (as in :func:`on_loss`) records the work and this process exits
    with :data:`EXIT_PEER_LOST`, never returning. Otherwise it returns and the error is a failure."""
    w = _watch
    if w is None or not _PEER_ERROR.search(f"{type(error).__name__} {error}"):
        return
    with on_loss(handler) if handler is not None else contextlib.nullcontext():
        if not w.lost.is_set():
            _say(w, f"a collective failed ({_first_line(error)}); waiting up to {w.timeout:g} s for the job's "
                 "heartbeat to tell whether a process was lost")
        w.lost.wait(w.timeout + 15)
        while w.lost.is_set():  # the forwarder records the loss and exits the process
            time.sleep(1)


def lost(why: str, coordinator: bool = False) -> None:
    """A peer is gone (`coordinator`: process 0): record it (the handlers), say so in one line, exit
    with EXIT_PEER_LOST."""
    w = _watch
    assert w is not None
    w.lost.set()
    if not w.lock.acquire(blocking=False):  # another thread is already on it
        while True:
            time.sleep(1)
    if threading.current_thread() is not w.forwarder and w.forwarder is not None:
        with contextlib.suppress(Exception):  # what is in the pipe first, then the line
            sys.stderr.flush()
            os.dup2(w.stderr, 2)
            w.forwarder.join(timeout=2)
    where = []
    for h in list(w.handlers) or ([w.fallback] if w.fallback else []):
        try:
            where.append(h(why, w.process_id in (None, 0) or coordinator))
        except Exception as e:  # noqa: BLE001 - the exit must happen whatever the record does
            where.append(f"(could not record it: {_first_line(e)})")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    _say(w, f"peer lost: {why}; {'; '.join(where) or 'no cell was running'}; exit {EXIT_PEER_LOST}: run the "
         "same command on every process again to resume")
    os._exit(EXIT_PEER_LOST)


def _say(w: _Watch, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(w.stderr, f"scaling-grid: {line}\n".encode())


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _who(w: _Watch, text: str) -> tuple[str, bool]:
    """The lost process, from the status JAX's agent reports; whether it is process 0."""
    m = re.search(r"stopped sending heartbeats\):\s*([\d,\s]+)", text)
    if m:
        ids = re.findall(r"\d+", m.group(1))
        return f"process {', '.join(ids)} stopped sending heartbeats", "0" in ids
    if "RegisterTask" in text:  # the service's registration barrier: a process never joined
        return f"not every process joined within {w.timeout:g} s", w.process_id not in (None, 0)
    if w.process_id not in (None, 0):
        return "process 0 (the coordinator) cannot be reached", True
    return "a process of this job is gone (its log says why)", False


def _forward_stderr(w: _Watch) -> None:
    """fd 2 into a pipe; a thread forwards it, and on JAX's fatal line records the loss and exits."""
    saved = os.dup(2)
    r, wfd = os.pipe()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(wfd, 2)
    os.close(wfd)
    w.stderr = saved
    # Python's own stderr stays on the terminal (or file) as it was: tqdm's bars, tracebacks and every
    # line of ours go there directly, unchanged; only what C++ writes to fd 2 passes the forwarder.
    sys.stderr = open(saved, "w", buffering=1, closefd=False, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace")

    def forward() -> None:
        buf = b""
        while chunk := os.read(r, 65536):
            buf += chunk
            at = buf.find(_FATAL)
            if at >= 0:
                head = buf[:at]
                os.write(saved, head[:head.rfind(b"\n") + 1])
                time.sleep(0.2)  # the rest of the status (which process), from the same write burst
                with contextlib.suppress(BlockingIOError):
                    os.set_blocking(r, False)
                    buf += os.read(r, 65536)
                lost(*_who(w, buf[at:].decode(errors="replace")))
            *lines, buf = buf.split(b"\n")
            for line in lines:
                os.write(saved, line + b"\n")
        if buf:
            os.write(saved, buf)

    w.forwarder = threading.Thread(target=forward, name="stderr-forwarder", daemon=True)
    w.forwarder.start()

    def restore() -> None:  # at exit: what is still in the pipe reaches the terminal
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder reads to the end and stops
        if w.forwarder is not None:
            w.forwarder.join(timeout=5)
    atexit.register(restore)


def _delay_abort() -> None:
    """SIGABRT runs libc's sleep(6) first (then the abort goes on): the forwarder's grace to exit."""
    if threading.current_thread() is not threading.main_thread():
        return
    libc: Any = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.signal(signal.SIGABRT, ctypes.cast(libc.sleep, ctypes.c_void_p).value)
