"""The sinks that show a run as it trains: ``ProgressSink`` (a tqdm bar, on a terminal) and
``LogLineSink`` (plain periodic lines, for logs). Both are `metrics.MetricsSink`s."""
from __future__ import annotations

import math
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import approx_count


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


def within(text: str, width: int = WIDTH) -> str:
    """`text` as lines within `width` columns, continuations indented: what the trainer and the launcher
    print fits a laptop terminal (a word longer than a line, such as a long path, stays whole)."""
    return "\n".join(textwrap.wrap(text, width, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False)) or text


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
            parts += [f"{ms:.1f} ms/step" if ms < 10 else f"{ms:,.0f} ms/step", f"{approx_count(tok_s, 3)} tok/s"]
            if self.flops_per_token and self.peak_flops:
                parts.append(f"MFU {100 * self.flops_per_token * tok_s / self.peak_flops:.0f}%")
        self._say(" ".join(parts))
        self.step_line, self.t_line = self.step, now

    def _say(self, text: str) -> None:
        """One line, or a few within WIDTH columns behind a long prefix (a grid cell's id)."""
        for piece in within(self.prefix + text).splitlines():
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
