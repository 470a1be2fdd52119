"""Whether a cell's launcher is alive: the heartbeat a running cell writes into its status.json, what
the heartbeat reports (LiveSink, one of the cell's metric sinks), and when another launcher's
'running' status is stale enough to take the cell over."""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaling_grid.trainer import pid_alive

from .store import Store

if TYPE_CHECKING:
    from .spec import Cell


def host_id() -> str:
    """This machine, as a status names it (the name `train` writes in its lock, too)."""
    return socket.gethostname()


def age_s(status: Mapping[str, Any]) -> float:
    """Seconds since a status was written (inf when it does not say)."""
    t = status.get("updated")
    if not t:
        return math.inf
    try:
        return time.time() - datetime.fromisoformat(t).timestamp()
    except ValueError:
        return math.inf


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that cannot
    be read: with the pid it names one process for good, since the kernel reuses pids."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): starttime


def is_stale(status: Mapping[str, Any], stale_after_s: float) -> bool:
    """A 'running' status whose writer is gone: no heartbeat for ``stale_after_s``, whatever its pid
    says; or, on this host, sooner: its pid dead, or alive but started at another time than the writer
    (the pid reused), or this very process."""
    if status.get("state") != "running":
        return True
    if age_s(status) > stale_after_s:
        return True
    if status.get("host") == host_id() and isinstance(status.get("pid"), int):
        pid, started = status["pid"], status.get("pid_start")
        return (not pid_alive(pid) or pid == os.getpid()
                or started is not None and process_start(pid) not in (None, started))
    return False


class LiveSink:
    """Tracks a running cell for the heartbeat and the overall bar."""

    def __init__(self, cell: Cell, bar: Any) -> None:
        self.cell, self.bar = cell, bar
        self.step = cell.init_step or 0
        self.first_step: int | None = None
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.t_start: float | None = None
        self.ended: tuple[str, int, str] | None = None  # (status, step, message) once the run has ended
        self.lock = threading.Lock()

    def start(self, total_steps: int, first_step: int) -> None:
        self.t_start = time.perf_counter()
        if self.bar is not None:  # a resumed cell: the steps before its checkpoint are already done
            self.bar.update((first_step - self.step) * self.cell.config.tokens_per_step)
        self.first_step = self.step = first_step

    def write_train(self, steps: np.ndarray, values: dict[str, np.ndarray]) -> None:
        new = int(steps[-1])
        if self.bar is not None:
            self.bar.update((new - self.step) * self.cell.config.tokens_per_step)
        with self.lock:
            self.step, self.loss = new, float(values["loss"][-1])

    def write_eval(self, step: int, loss: float, stderr: float) -> None:
        with self.lock:
            self.eval_loss = float(loss)

    def flush(self) -> None:
        pass

    def close(self, status: str, step: int, message: str = "") -> None:
        self.ended = (status, step, message)

    def tokens_per_s(self) -> float | None:
        if self.t_start is None or self.first_step is None:
            return None
        dt = time.perf_counter() - self.t_start
        return (self.step - self.first_step) * self.cell.config.tokens_per_step / dt if dt > 0 else None


class Heartbeat:
    """Rewrites a running cell's status.json every `every` seconds from a background thread."""

    def __init__(self, store: Store, base: dict[str, Any], live: LiveSink, every: float) -> None:
        self.store, self.base, self.live, self.every = store, base, live, every
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def snapshot(self) -> dict[str, Any]:
        with self.live.lock:
            return {**self.base, "step": self.live.step, "loss": self.live.loss, "eval_loss": self.live.eval_loss,
                    "tokens_per_s": self.live.tokens_per_s()}

    def _run(self) -> None:
        while not self.stop_ev.wait(self.every):
            try:
                self.store.set_status(self.base["id"], self.snapshot())
            except Exception:  # noqa: BLE001 - a missed heartbeat must not kill training
                pass

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_ev.set()
        self.thread.join()

