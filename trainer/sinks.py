"""The sinks of one run among many (a grid's cell), built in one call: the caller says where the
metrics go and what to show, the trainer knows which sink does what (metrics, logsinks and trackers hold the sinks)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import RunConfig
from .logsinks import LogLineSink, ProgressSink
from .metrics import MetricsSink, Sinks, TensorStoreSink, read_step
from .trackers import TensorBoardSink, WandbSink, run_labels, tags


def run_sinks(metrics: str, config: RunConfig, name: str, *, prefix: str = "", label: str | None = None,
              bar: bool = False, position: int = 1, say: Callable[[str], None] | None = None, origin: int = 0,
              flops_per_token: float | None = None, tensorboard: str | Path | None = None,
              wandb: str | None = None, record: Mapping[str, Any] | None = None, group: str | None = None,
              role: str = "single", first: Sequence[MetricsSink] = ()) -> Sinks:
    """`first`, then the metric arrays under `metrics` (a folder or a kvstore URL) at `prefix`, then a
    progress bar (`bar`, labelled `label`) or a log line every 30 s (prefixed with `name`; no per-eval
    lines, which would flood a log of many runs), then TensorBoard event files in <tensorboard>/<name>
    and a W&B run `name` in project `wandb` and group `group` with `record` (default: the config) as
    its config, when asked for. Both carry the run's labels (`trackers.run_labels`, its `role`): W&B as
    flat config keys and tags, TensorBoard as hparams.
    SinkSetupError when an optional sink cannot start."""
    sinks: list[MetricsSink] = [*first, TensorStoreSink(metrics, config.steps, prefix=prefix)]
    if bar:
        sinks.append(ProgressSink(config.tokens_per_step, desc=label or name, position=position, leave=False))
    else:
        import jax

        from .model import compute_dtype
        from .peaks import peak_flops
        sinks.append(LogLineSink(config.tokens_per_step, prefix=f"{name}: ", evals=False, out=say, origin=origin,
                                 flops_per_token=flops_per_token,
                                 peak_flops=peak_flops(jax.devices(), compute_dtype(config.train.dtype))))
    labels = run_labels(config, role)
    if tensorboard is not None:
        sinks.append(TensorBoardSink(Path(tensorboard) / name, hparams=labels,
                                     recorded=lambda step: read_step(metrics, step, prefix=prefix)))
    if wandb is not None:
        sinks.append(WandbSink(wandb, name, {**labels, **(record if record is not None else config.to_dict())},
                               group=group, tags=tags(labels)))
    return Sinks(*sinks)
