"""Graceful preemption: SIGTERM sets a flag the training loop polls between compiled calls."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Preemption:
    """SIGTERM sets a flag; the loop finishes its current chunk (or abandons an eval), saves, exits."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True

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
