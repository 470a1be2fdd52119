"""Optional experiment trackers as metrics sinks: ``TensorBoardSink`` (tensorboardX) and ``WandbSink``
(Weights & Biases), whose packages are imported only when asked for (`optional_import`), and the labels
(`run_labels`) a grid's runs are filtered and compared by in both: W&B's flat config keys and tags,
TensorBoard's hparams."""
from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .config import ConfigError, RunConfig, approx_count


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


def run_labels(cfg: RunConfig, role: str) -> dict[str, Any]:
    """What a run of a grid is compared by: W&B's flat config keys, TensorBoard's hparams, and (see
    `tags`) W&B's tags. role: separate | trunk | branch for a grid's cell, single for `train`."""
    return {"variant": cfg.model.variant, "width": cfg.model.width, "depth": cfg.model.depth,
            "tokens": cfg.train.tokens, "peak_lr": cfg.optim.lr, "role": role}


def tags(labels: dict[str, Any]) -> list[str]:
    """W&B tags from `run_labels`: variant=gpt2, width=64, depth=2, tokens=20M, lr=0.003, role=trunk."""
    shown = {"tokens": approx_count, "peak_lr": lambda v: f"{v:g}"}
    return [f"{'lr' if k == 'peak_lr' else k}={shown.get(k, str)(v)}" for k, v in labels.items()]


class TensorBoardSink:
    """TensorBoard event files of one run in `logdir` (a run of `tensorboard --logdir` its parent),
    written with tensorboardX, scalars keyed by step. Flushed at every eval and checkpoint (and every
    `flush_secs`), so TensorBoard shows a run while it trains."""

    def __init__(self, logdir: str | Path, flush_secs: int = 10,
                 recorded: Callable[[int], dict[str, float]] | None = None, hparams: dict[str, Any] | None = None):
        """recorded(step): the train metrics the run's store holds at a step (see `read_step`); hparams:
        the run's `run_labels`, shown in TensorBoard's HPARAMS tab against its eval and train loss."""
        self.tbx = optional_import("tensorboardX", "--tensorboard")
        self.logdir, self.flush_secs, self.recorded, self.hparams = str(logdir), flush_secs, recorded, hparams
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
        if self.hparams:
            # In the run's own folder (add_hparams would open a sibling run): the hparams plugin pairs
            # these values with this run's scalars, the metrics named here.
            metrics = {EVAL_TAGS[0]: math.nan, SCALAR_TAGS["loss"]: math.nan}
            for summary in self.tbx.summary.hparams(self.hparams, metrics):
                self.writer.file_writer.add_summary(summary)
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
    its W&B run), `config` attached, in W&B group `group` (a grid's: its spec name) with `tags`.
    WANDB_MODE=offline and the other WANDB_* settings are wandb's own."""

    def __init__(self, project: str, run_id: str, config: dict[str, Any], group: str | None = None,
                 tags: list[str] | None = None):
        self.wandb = optional_import("wandb", "--wandb")
        self.project, self.run_id, self.config, self.group, self.tags = project, run_id, config, group, tags
        self.run: Any = None
        self.floor = 0

    def open(self) -> None:
        """Start the W&B run (`start` does it when not done): `train` calls it before it writes anything,
        so a refused login leaves no run folder behind."""
        if self.run is not None:
            return
        try:
            # console="off": our own lines and bars stay ours; silent: no banner per run of a grid
            self.run = self.wandb.init(project=self.project, id=self.run_id, name=self.run_id, config=self.config,
                                       group=self.group, tags=self.tags, resume="allow",
                                       settings=self.wandb.Settings(silent=True, console="off"))
        except Exception as e:  # noqa: BLE001 - wandb raises its own types (UsageError, CommError, ...)
            raise SinkSetupError(f"--wandb {self.project}: wandb.init failed ({type(e).__name__}: {e}); log in with "
                                 "`wandb login`, or set WANDB_MODE=offline and `wandb sync` later") from None
        # W&B drops (with a warning each) steps below a resumed run's last one: skip them here
        self.floor = int(self.run.step or 0)

    def start(self, total_steps: int, first_step: int) -> None:
        self.open()

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
