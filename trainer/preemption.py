"""Graceful preemption: SIGTERM sets a flag the training loop polls between compiled calls."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from . import bucket

_early = threading.Event()  # a SIGTERM before any Preemption was installed (catch_early_sigterm)


def catch_early_sigterm() -> None:
    """From now on a SIGTERM before the training loop installs its handler is kept, not fatal: every
    Preemption made later starts requested, so the job's first joint decision (`runtime.any_process`)
    stops every process together (a multi-process job, from jax.distributed's start)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _early_handler)


def _early_handler(signum: int, frame: Any) -> None:
    _early.set()
    bucket.sigterm_received()


class Preemption:
    """SIGTERM sets a flag; the loop finishes its current chunk (or abandons an eval), saves, exits."""

    def __init__(self) -> None:
        self.requested = _early.is_set()

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        bucket.sigterm_received()  # a wait on a bucket that does not answer ends (trainer/bucket.py)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Preemption]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = signal.signal(signal.SIGTERM, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, old)
