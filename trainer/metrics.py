"""Where metrics go. The training loop calls a MetricsSink; it never knows what is behind it.

Sinks here: ``TensorStoreSink`` (one zarr array per metric, indexed by step, so a resumed run
overwrites rather than duplicates and unwritten steps read as NaN), ``ProgressSink`` (a tqdm bar, on a
terminal), ``LogLineSink`` (plain periodic lines, for logs), and the optional ``TensorBoardSink``
(tensorboardX) and ``WandbSink`` (Weights & Biases), whose packages are imported only when asked for.
``Sinks`` fans out to several.
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import tensorstore as ts

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
            return ts.open(spec, create=True, open=True).result()
        return ts.open({"driver": "zarr3", "kvstore": kvstore, "path": path}, open=True).result()
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
    kv = ts.KvStore.open(kvstore).result()
    kv.path = kv.path.rstrip("/") + "/" if kv.path else ""  # a folder: keys go inside it
    kv.write(f"{path}/zarr.json", metric_metadata(length, row, rows)).result()


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
                f.result()
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
            arr = ts.open({"driver": "zarr3", "kvstore": kv, "path": prefix + f,
                           "recheck_cached_data": True}, open=True).result()
        except ValueError as e:
            if "NOT_FOUND" in str(e):
                raise
            raise damaged(kv, prefix + f, e) from None
        if length is not None and arr.shape[-1] != length:
            raise damaged(kv, prefix + f, ValueError(f"shape {list(arr.shape)}, where the run has {length} steps "
                                                     "and step 0"))
        try:
            out[f] = (arr if row is None else arr[row]).read().result()
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


class ProgressSink:
    """A tqdm progress bar over steps showing train loss, eval loss and tokens/s."""

    def __init__(self, tokens_per_step: int, desc: str = "train", position: int = 0, leave: bool = True):
        self.tokens_per_step, self.desc, self.position, self.leave = tokens_per_step, desc, position, leave
        self.bar: Any = None  # a tqdm bar, from start()
        self.postfix: dict[str, str] = {}
        self.t_last, self.step_last = 0.0, 0  # set by start()

    def start(self, total_steps: int, first_step: int) -> None:
        from tqdm.auto import tqdm
        # disable=None: no bar when stderr is not a terminal (a log file would fill with redraws)
        self.bar = tqdm(total=total_steps, initial=first_step, desc=self.desc, unit="step",
                        position=self.position, leave=self.leave, dynamic_ncols=True, disable=None)
        self.t_last, self.step_last = time.perf_counter(), first_step

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        now, step = time.perf_counter(), int(steps[-1])
        if step > self.step_last and now > self.t_last:
            tok_s = (step - self.step_last) * self.tokens_per_step / (now - self.t_last)
            self.postfix["tok/s"] = f"{tok_s:,.0f}"
        self.postfix["loss"] = f"{float(values['loss'][-1]):.4f}"
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(self.postfix, refresh=True)
        self.t_last, self.step_last = now, step

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        self.postfix["eval"] = f"{loss:.4f}±{stderr:.4f}" if math.isfinite(loss) else "nan"
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=True)

    def flush(self) -> None:
        pass

    def close(self, status: str, step: int, message: str = "") -> None:
        if self.bar is not None:
            if status != "failed":  # a failed run's step is where it started, not where it got to
                self.bar.update(step - self.bar.n)
            self.bar.close()


def interactive() -> bool:
    """Whether progress bars make sense: stderr (where tqdm draws) is a terminal."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


WIDTH = 100  # log lines fit a laptop terminal


def _short(x: float) -> str:
    """16384000 -> '16.4M': a rate in a few characters."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.0f}"


class LogLineSink:
    """Plain progress lines for a log file, where a bar's carriage-return redraws are noise: one every
    `every_s` seconds (step, train loss, ms per step, tokens/s and, where the devices' peak is known,
    MFU, each averaged since the previous line) and, with `evals`, one per evaluation with its value:
    an eval appears on the line of the step where it was measured, never repeated as if current."""

    def __init__(self, tokens_per_step: int, prefix: str = "", every_s: float = 30.0, evals: bool = True,
                 out: Callable[[str], None] | None = None, origin: int = 0, flops_per_token: float | None = None,
                 peak_flops: float | None = None):
        self.tokens_per_step, self.prefix, self.every_s, self.evals = tokens_per_step, prefix, every_s, evals
        self.origin = origin  # where a fresh run starts (a wsd branch: its trunk's step); later is a resume
        self.out = out or (lambda line: print(line, flush=True))
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops  # peak: all devices, FLOP/s
        self.total = 0
        self.step = self.step_line = 0
        self.t_line = 0.0
        self.loss = math.nan

    def start(self, total_steps: int, first_step: int) -> None:
        self.total, self.step = total_steps, first_step
        self.step_line, self.t_line = first_step, time.perf_counter()
        if first_step > self.origin:
            self.out(f"{self.prefix}resuming at step {first_step:,}/{total_steps:,}")

    def _timed_line(self) -> None:
        now = time.perf_counter()
        parts = [f"step {self.step:,}/{self.total:,}"]
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        steps, dt = self.step - self.step_line, now - self.t_line
        if steps > 0 and dt > 0:
            tok_s = steps * self.tokens_per_step / dt
            ms = 1000 * dt / steps
            parts += [f"{ms:.1f} ms/step" if ms < 10 else f"{ms:,.0f} ms/step", f"{_short(tok_s)} tok/s"]
            if self.flops_per_token and self.peak_flops:
                parts.append(f"MFU {100 * self.flops_per_token * tok_s / self.peak_flops:.0f}%")
        self._say(" ".join(parts))
        self.step_line, self.t_line = self.step, now

    def _say(self, text: str) -> None:
        """One line, or a few within WIDTH columns behind a long prefix (a grid cell's id)."""
        for piece in textwrap.wrap(self.prefix + text, WIDTH, subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False):
            self.out(piece)

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self.step, self.loss = int(steps[-1]), float(values["loss"][-1])
        if time.perf_counter() - self.t_line >= self.every_s:
            self._timed_line()

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        if self.evals:
            self._say(f"step {step:,}/{self.total:,} eval {loss:.4f} (se {stderr:.4f})")

    def flush(self) -> None:
        pass

    def close(self, status: str, step: int, message: str = "") -> None:
        pass


class SinkSetupError(ConfigError):
    """An optional sink that cannot start (package missing, no W&B login): a problem of the command,
    not of one run, so a grid stops instead of failing every cell the same way."""


def optional_import(module: str, flag: str, package: str | None = None) -> ModuleType:
    """Import an optional sink's package only when its flag is given; a missing one is an exit-2
    message naming the pip install that fixes it."""
    package = package or module
    try:
        return importlib.import_module(module)
    except ImportError as e:
        why = "is not installed" if e.name == module else f"does not import ({e})"
        raise SinkSetupError(f"{flag} needs the Python package {package}, which {why}: pip install {package}") from None


# train loss etc. under train/, eval under eval/: TensorBoard and W&B group charts by the prefix
SCALAR_TAGS = {"loss": "train/loss", "lr": "train/lr", "tau": "train/tau", "grad_norm": "train/grad_norm",
               "tokens": "train/tokens"}
EVAL_TAGS = ("eval/loss", "eval/stderr")


class TensorBoardSink:
    """TensorBoard event files of one run in `logdir` (a run of `tensorboard --logdir` its parent),
    written with tensorboardX, scalars keyed by step. Flushed at every eval and checkpoint (and every
    `flush_secs`), so TensorBoard shows a run while it trains."""

    def __init__(self, logdir: str | Path, flush_secs: int = 10,
                 recorded: Callable[[int], dict[str, float]] | None = None):
        """recorded(step): the train metrics the run's store holds at a step (see `read_step`)."""
        self.tbx = optional_import("tensorboardX", "--tensorboard")
        self.logdir, self.flush_secs, self.recorded = str(logdir), flush_secs, recorded
        self.writer: Any = None

    def start(self, total_steps: int, first_step: int) -> None:
        # A resume rewrites the steps after its checkpoint and re-evaluates the checkpoint's step when
        # it is an eval step. purge_step hides what earlier attempts wrote from first_step on, so each
        # step shows once; the train point at first_step, which the resume does not rewrite, is written
        # again from the store. (Without `recorded`: purged after first_step, so a re-evaluated step
        # may show twice, with the same value.)
        purge = None if not first_step else first_step if self.recorded else first_step + 1
        # The suffix: tensorboardX names files by the second and truncates an existing one, so a
        # resume within the same second would erase the first attempt's file; TensorBoard reads the
        # files in name order, which the nanoseconds keep.
        self.writer = self.tbx.SummaryWriter(self.logdir, purge_step=purge, flush_secs=self.flush_secs,
                                             filename_suffix=f".{time.time_ns()}")
        if purge == first_step and self.recorded is not None:  # (purge == first_step implies recorded)
            try:
                point = self.recorded(first_step)
            except Exception:  # noqa: BLE001 - a missing point in a view is no reason to stop a run
                point = {}
            if all(math.isfinite(point.get(f, math.nan)) for f in SCALAR_TAGS):
                self.write_train(np.array([first_step]), {f: np.array([point[f]]) for f in SCALAR_TAGS})

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        for i, s in enumerate(np.asarray(steps).tolist()):
            for field, tag in SCALAR_TAGS.items():
                self.writer.add_scalar(tag, float(values[field][i]), s)

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        self.writer.add_scalar(EVAL_TAGS[0], float(loss), step)
        self.writer.add_scalar(EVAL_TAGS[1], float(stderr), step)
        self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self, status: str, step: int, message: str = "") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbSink:
    """One Weights & Biases run per training run: run id = name = `run_id` (so a resumed run appends to
    its W&B run), `config` attached. WANDB_MODE=offline and the other WANDB_* settings are wandb's own."""

    def __init__(self, project: str, run_id: str, config: dict[str, Any]):
        self.wandb = optional_import("wandb", "--wandb")
        self.project, self.run_id, self.config = project, run_id, config
        self.run: Any = None
        self.floor = 0

    def start(self, total_steps: int, first_step: int) -> None:
        try:
            # console="off": our own lines and bars stay ours; silent: no banner per run of a grid
            self.run = self.wandb.init(project=self.project, id=self.run_id, name=self.run_id, config=self.config,
                                       resume="allow", settings=self.wandb.Settings(silent=True, console="off"))
        except Exception as e:  # noqa: BLE001 - wandb raises its own types (UsageError, CommError, ...)
            raise SinkSetupError(f"--wandb {self.project}: wandb.init failed ({type(e).__name__}: {e}); log in with "
                                 "`wandb login`, or set WANDB_MODE=offline and `wandb sync` later") from None
        # W&B drops (with a warning each) steps below a resumed run's last one: skip them here
        self.floor = int(self.run.step or 0)

    def _log(self, row: dict[str, float], step: int) -> None:
        if step >= self.floor:
            self.run.log(row, step=step)

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        for i, s in enumerate(np.asarray(steps).tolist()):
            self._log({tag: float(values[field][i]) for field, tag in SCALAR_TAGS.items()}, s)

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        self._log({EVAL_TAGS[0]: float(loss), EVAL_TAGS[1]: float(stderr)}, step)

    def flush(self) -> None:
        pass

    def close(self, status: str, step: int, message: str = "") -> None:
        if self.run is not None:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status in ("done", "diverged", "preempted") else 1)
            self.run = None
