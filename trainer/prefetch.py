"""Reading a token store ahead of training: `Prefetcher` draws chunks of batches on a background
thread, so reading overlaps the device's work (`tokenstore.batches` opens one)."""
from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class WindowSource(Protocol):
    """What a Prefetcher reads from (a `tokenstore.TokenStore`)."""

    def starts(self, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray: ...

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray: ...


_DONE = object()


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(q: queue.Queue[Any], stop: threading.Event, store: WindowSource, seed: int, start: int, stop_step: int,
             batch_size: int, seq_len: int, k: int, rows: slice | Sequence[int] | None) -> None:
    # A plain function, not a method: the thread must not keep the Prefetcher alive, so an
    # abandoned Prefetcher is collected and its __del__ stops this thread.
    try:
        for first in range(start, stop_step, k):
            n = min(k, stop_step - first)
            starts = [store.starts(seed, s, batch_size, seq_len) for s in range(first, first + n)]
            if rows is not None:
                starts = [s[rows] for s in starts]
            flat = np.concatenate([np.atleast_1d(s) for s in starts])
            w = store.windows(flat, seq_len + 1).reshape(n, -1, seq_len + 1)  # all k*B reads at once
            if not _put(q, stop, (first, np.ascontiguousarray(w[..., :-1]), np.ascontiguousarray(w[..., 1:]))):
                return
        _put(q, stop, _DONE)
    except BaseException as e:  # surfaced to the consumer on its next()
        _put(q, stop, e)


class Prefetcher:
    """Iterator of ``(first_step, x[k, B, T], y[k, B, T])`` for consecutive chunks of
    ``steps_per_call`` steps in [start_step, stop_step) (the last chunk may be shorter), read ahead
    on a background thread into a queue of ``depth`` chunks so reading overlaps training.
    Close it (or use ``with``) to stop the thread; closing never blocks on the producer."""

    def __init__(self, store: WindowSource, seed: int, start_step: int, stop_step: int, batch_size: int,
                 seq_len: int, steps_per_call: int = 1, rows: slice | Sequence[int] | None = None,
                 depth: int = 2) -> None:
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)  # chunks, then _DONE or an exception
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=_produce, name="prefetch", daemon=True,
            args=(self._q, self._stop, store, seed, start_step, stop_step, batch_size, seq_len, steps_per_call, rows))
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[int, np.ndarray, np.ndarray]:
        if self._finished:
            raise StopIteration
        item = self._q.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()
