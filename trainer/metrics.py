"""Where metrics go. The training loop calls a MetricsSink; it never knows what is behind it.

Here: the metric fields, the ``MetricsSink`` protocol, ``Sinks`` (fans out to several) and the record
of a run's metrics, ``TensorStoreSink`` (one zarr array per metric, indexed by step, so a resumed run
overwrites rather than duplicates and unwritten steps read as NaN) with what opens, reads and repairs
those arrays. The sinks that show a run are in :mod:`.logsinks` (a tqdm bar, plain log lines); the
optional ``TensorBoardSink`` and ``WandbSink`` are in :mod:`.trackers`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import tensorstore as ts

from .bucket import bucket_result, url_of
from .config import ConfigError

# Per logged step. `step` counts completed optimizer updates (1..steps); it is the array index.
TRAIN_FIELDS = ("tokens", "tau", "lr", "loss", "grad_norm")
# Per evaluation (step 0 is the model at init).
EVAL_FIELDS = ("eval_loss", "eval_stderr")


class MetricsSink(Protocol):
    def start(self, total_steps: int, first_step: int) -> None:
        """Called once before training (also on resume, with the step training resumes from)."""

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Train metrics of several logged steps at once; values maps TRAIN_FIELDS to arrays."""

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        """Mean validation loss at `step` and its standard error."""

    def flush(self) -> None:
        """Make everything written so far durable (called before each checkpoint)."""

    def close(self, status: str, step: int, message: str = "") -> None:
        """End of the run: status is done | diverged | preempted | failed."""


class Sinks:
    """Fan out every call to several sinks."""

    def __init__(self, *sinks: MetricsSink):
        self.sinks = [s for s in sinks if s is not None]

    def start(self, total_steps: int, first_step: int) -> None:
        for s in self.sinks:
            s.start(total_steps, first_step)

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        for s in self.sinks:
            s.write_train(steps, values)

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        for s in self.sinks:
            s.write_eval(step, loss, stderr)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self, status: str, step: int, message: str = "") -> None:
        for s in self.sinks:
            s.close(status, step, message)


KvStoreSpec = str | dict[str, Any]  # a URL, or a TensorStore kvstore spec


def kvstore_spec(url_or_path: str) -> KvStoreSpec:
    """A TensorStore kvstore for a local path or a URL (file://, gs://, s3://, memory://)."""
    if "://" in url_or_path:
        return url_or_path
    return {"driver": "file", "path": os.path.abspath(url_or_path)}  # TensorStore refuses '..' in a path


class MetricsDamaged(ConfigError):
    """A metric array that exists but cannot be read: its metadata (``in_metadata``: repairable, it is
    a function of the shape) or a data chunk (the values in it are lost)."""

    def __init__(self, message: str, in_metadata: bool):
        super().__init__(message)
        self.in_metadata = in_metadata


def _where(kvstore: KvStoreSpec, path: str) -> str:
    base = kvstore if isinstance(kvstore, str) else kvstore.get("path", "")
    return f"{str(base).rstrip('/')}/{path}"


def _metric_spec(kvstore: KvStoreSpec, path: str, length: int, row: int | None, rows: int) -> dict[str, Any]:
    """Shape [length] or [rows, length], float64, NaN fill; chunks one row wide so concurrent writers
    of different rows never share a chunk."""
    shape = [length] if row is None else [rows, length]
    chunk = [min(length, 8192)] if row is None else [1, min(length, 8192)]
    return {"driver": "zarr3", "kvstore": kvstore, "path": path,
            "metadata": {"shape": shape, "data_type": "float64", "fill_value": float("nan"),
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}}}}


def open_metric(kvstore: KvStoreSpec, path: str, length: int, row: int | None = None, rows: int = 1,
                create: bool = True) -> ts.TensorStore:
    """Open (or create) one metric array. Raises MetricsDamaged for an array whose metadata is
    unreadable; without `create`, ValueError (NOT_FOUND) for one not created yet."""
    spec = _metric_spec(kvstore, path, length, row, rows)
    try:
        if create:
            return bucket_result(ts.open(spec, create=True, open=True), url_of(kvstore))
        return bucket_result(ts.open({"driver": "zarr3", "kvstore": kvstore, "path": path}, open=True), url_of(kvstore))
    except ValueError as e:
        if "NOT_FOUND" in str(e):
            raise
        raise damaged(kvstore, path, e) from None


def damaged(kvstore: KvStoreSpec, path: str, e: Exception, in_metadata: bool = True) -> MetricsDamaged:
    what = str(e).split(" [tensorstore_spec", 1)[0][:300]
    part = "its metadata (zarr.json)" if in_metadata else "a data chunk"
    return MetricsDamaged(f"metric array {_where(kvstore, path)}: {part} is damaged ({what})", in_metadata)


def rewrite_metadata(kvstore: str | dict[str, Any], path: str, length: int, row: int | None = None,
                     rows: int = 1) -> None:
    """Write the metadata (zarr.json) of the metric array at `path` anew, over a damaged one."""
    kv = bucket_result(ts.KvStore.open(kvstore), url_of(kvstore))
    kv.path = kv.path.rstrip("/") + "/" if kv.path else ""  # a folder: keys go inside it
    bucket_result(kv.write(f"{path}/zarr.json", metric_metadata(length, row, rows)), url_of(kvstore))


def metric_metadata(length: int, row: int | None = None, rows: int = 1) -> bytes:
    """The exact zarr.json `open_metric` writes for such an array (to repair a damaged one: the
    metadata is a function of the shape alone, and the data chunks are separate objects)."""
    arr = ts.open(_metric_spec({"driver": "memory"}, "a", length, row, rows), create=True, open=True).result()
    assert arr.kvstore is not None  # a zarr array has one
    return arr.kvstore.read("zarr.json").result().value


class TensorStoreSink:
    """Metrics of one run as zarr arrays ``<root>/<field>`` of length steps+1, indexed by step.

    With ``row`` set, arrays are [rows, steps+1] and this run owns one row (the grid store's layout).
    Writes are asynchronous; they are awaited at the next write and at close, so at most one batch
    of metrics is in flight when a process dies."""

    def __init__(self, url_or_path: str, total_steps: int, row: int | None = None, rows: int = 1,
                 prefix: str = "", warn: Callable[[str], None] | None = None):
        self.kvstore = kvstore_spec(url_or_path)
        self.length = total_steps + 1
        self.row, self.rows, self.prefix = row, rows, prefix
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
        self.arrays = {f: self._open(prefix + f) for f in TRAIN_FIELDS + EVAL_FIELDS}
        self.pending: list[tuple[str, ts.WriteFutures]] = []

    def _open(self, path: str) -> ts.TensorStore:
        """Open or create an array; damaged metadata is rewritten (it is a function of the shape
        alone, which the run's config fixes), so the data chunks beside it become readable again."""
        try:
            return open_metric(self.kvstore, path, self.length, self.row, self.rows)
        except MetricsDamaged as e:
            rewrite_metadata(self.kvstore, path, self.length, self.row, self.rows)
            self.warn(f"{e}; rewrote its metadata (zarr.json) from the run's config, its data chunks are kept")
            return open_metric(self.kvstore, path, self.length, self.row, self.rows)

    def _index(self, arr: ts.TensorStore, lo: int, hi: int) -> ts.TensorStore:
        return arr[lo:hi] if self.row is None else arr[self.row, lo:hi]

    def _wait(self) -> None:
        pending, self.pending = self.pending, []
        for path, f in pending:
            try:
                bucket_result(f, url_of(self.kvstore))  # bounded in a bucket (trainer/bucket.py)
            except ValueError as e:  # a partial-chunk write re-reads the chunk, which may not decode
                raise damaged(self.kvstore, path, e, in_metadata=False) from None

    def start(self, total_steps: int, first_step: int) -> None:
        pass

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self._wait()
        steps = np.asarray(steps, dtype=np.int64)
        lo, hi = int(steps.min()), int(steps.max()) + 1
        for f in TRAIN_FIELDS:
            # A dense block over [lo, hi): steps that are not logged stay NaN, so one write suffices.
            block = np.full(hi - lo, np.nan)
            block[steps - lo] = values[f]
            self.pending.append((self.prefix + f, self._index(self.arrays[f], lo, hi).write(block)))

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        self._wait()
        for f, v in (("eval_loss", loss), ("eval_stderr", stderr)):
            self.pending.append((self.prefix + f, self._index(self.arrays[f], step, step + 1).write(np.array([v]))))

    def flush(self) -> None:
        self._wait()

    def close(self, status: str, step: int, message: str = "") -> None:
        self._wait()


def read_metrics(url_or_path: str, row: int | None = None, prefix: str = "",
                 length: int | None = None) -> dict[str, np.ndarray]:
    """Read a run's metric arrays (as written by TensorStoreSink) into numpy, NaN where unwritten.
    With ``length`` (the run's steps + 1), an array of another length is damaged metadata: a zarr.json
    that parses but describes another array."""
    kv = kvstore_spec(url_or_path)
    out = {}
    for f in TRAIN_FIELDS + EVAL_FIELDS:
        try:
            arr = bucket_result(ts.open({"driver": "zarr3", "kvstore": kv, "path": prefix + f,
                                         "recheck_cached_data": True}, open=True), url_of(kv))
        except ValueError as e:
            if "NOT_FOUND" in str(e):
                raise
            raise damaged(kv, prefix + f, e) from None
        if length is not None and arr.shape[-1] != length:
            raise damaged(kv, prefix + f, ValueError(f"shape {list(arr.shape)}, where the run has {length} steps "
                                                     "and step 0"))
        try:
            out[f] = bucket_result((arr if row is None else arr[row]).read(), url_of(kv))
        except ValueError as e:  # a data chunk that does not decode
            raise damaged(kv, prefix + f, e, in_metadata=False) from None
    return out


def read_step(url_or_path: str, step: int, prefix: str = "") -> dict[str, float]:
    """The train metrics recorded at one step (NaN where that step was not logged)."""
    kv = kvstore_spec(url_or_path)
    out = {}
    for f in TRAIN_FIELDS:
        arr = ts.open({"driver": "zarr3", "kvstore": kv, "path": prefix + f, "recheck_cached_data": True},
                      open=True).result()
        out[f] = float(arr[step].read().result())
    return out
