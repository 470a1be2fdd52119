"""Waiting on a bucket: every store, metric, token and checkpoint operation on a ``gs://`` path ends
within a bound, and a SIGTERM is honoured within seconds while the bucket does not answer.

TensorStore retries a request that finds no server for many minutes, and a main thread blocked in its
C++ wait runs no Python signal handler. So a wait on a bucket is taken in short slices
(:func:`bucket_result` for TensorStore futures, :func:`bucket_call` for orbax's calls, which run on a helper
thread): between slices the signal handlers run, and the wait ends with :class:`BucketTimeout`

- after ``SCALING_GRID_BUCKET_TIMEOUT`` seconds (default 120), or
- after a SIGTERM, once the wait has lasted a few seconds and a one-object read of the bucket gets no
  answer either (a slow upload to a bucket that answers, such as the preemption checkpoint, is let
  finish).

After one such failure the process is on its way out: every later bucket wait fails at once (no
second full wait in clean-up code), and the CLI exits with one line (grid/cli.py). Nothing already
written is touched: a relaunch once the bucket answers resumes from the last complete checkpoint.
Local paths and ``file://`` URLs are waited on as before, without a bound.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

TIMEOUT_ENV = "SCALING_GRID_BUCKET_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
SLICE_S = 0.2   # how often a wait looks at the clock and lets signal handlers run
GRACE_S = 2.0   # after a SIGTERM: how long a wait goes on before asking whether the bucket answers

R = TypeVar("R")
_sigterm = threading.Event()
_gave_up: list[BucketTimeout] = []  # the first failure: later waits fail at once with it


class BucketTimeout(Exception):
    """A bucket that did not answer within the bound (or a SIGTERM while it did not answer)."""

    def __init__(self, url: str, waited: float, sigterm: bool = False):
        self.url, self.waited, self.sigterm = url, waited, sigterm
        if sigterm:
            why = f"stopped by SIGTERM while the bucket did not answer (waited {waited:.1f} s)"
        else:
            why = f"the bucket did not answer within {waited:g} s ({TIMEOUT_ENV}=S sets this wait)"
        super().__init__(f"{url}: {why}; what was written before is kept: run the same command again once the "
                         "bucket answers and it resumes from the last complete checkpoint")


def timeout_s() -> float:
    """The bound on one bucket operation, in seconds (``SCALING_GRID_BUCKET_TIMEOUT``, default 120)."""
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)


def sigterm_received() -> None:
    """Called by the SIGTERM handlers (trainer/preemption.py): a bucket wait may now be abandoned."""
    _sigterm.set()


def gave_up() -> BucketTimeout | None:
    """The bucket failure of this process, if there was one."""
    return _gave_up[0] if _gave_up else None


def is_remote(url: str | os.PathLike[str]) -> bool:
    """A URL other than file:// (paths.is_remote; not imported from there, which imports this module)."""
    s = os.fspath(url)
    return "://" in s and not s.startswith("file://")


def url_of(kvstore: Any) -> str | None:
    """The bucket URL of a TensorStore kvstore spec (a URL string), None for a local one."""
    return kvstore if isinstance(kvstore, str) and is_remote(kvstore) else None


def bucket_result(future: Any, url: str | os.PathLike[str] | None) -> Any:
    """``future.result()`` (a TensorStore future) for an operation on `url`, bounded where it is a bucket."""
    if url is None or not is_remote(url):
        return future.result()
    return _wait(lambda t: future.result(timeout=t), os.fspath(url))


def bucket_call(fn: Callable[[], R], url: str | os.PathLike[str] | None) -> R:
    """``fn()`` (an orbax call on `url`), bounded where `url` is a bucket: it runs on a daemon thread,
    which is left behind if the bucket does not answer."""
    if url is None or not is_remote(url):
        return fn()
    out: list[Any] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name="bucket-call", daemon=True).start()

    def slice_(t: float) -> Any:
        if not done.wait(t):
            raise TimeoutError
        if failed:
            raise failed[0]
        return out[0]
    return _wait(slice_, os.fspath(url))


def _wait(slice_: Callable[[float], Any], url: str) -> Any:
    if _gave_up:
        raise _gave_up[0]
    limit, t0 = timeout_s(), time.monotonic()
    asked = False
    while True:
        try:
            return slice_(SLICE_S)
        except TimeoutError:
            pass
        waited = time.monotonic() - t0
        if _gave_up:  # another thread's wait on the bucket has already failed
            raise _gave_up[0]
        if waited >= limit:
            _fail(BucketTimeout(url, limit))
        if _sigterm.is_set() and waited >= GRACE_S and not asked:
            asked = True
            if not _answers(url):
                _fail(BucketTimeout(url, time.monotonic() - t0, sigterm=True))


def _fail(e: BucketTimeout) -> None:
    if not _gave_up:
        _gave_up.append(e)
    raise e


def _answers(url: str, within: float = GRACE_S) -> bool:
    """Whether the bucket answers a read of one (absent) object within `within` seconds."""
    import tensorstore as ts
    try:
        kv = ts.KvStore.open(url.rstrip("/") + "/").result(timeout=within)
        kv.read(".scaling-grid-probe").result(timeout=within)
        return True
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001 - an error is an answer: the bucket is there
        return True
