"""The options of one launch of a grid (`scaling-grid run`, and its --dry-run)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scaling_grid.trainer import Distributed


@dataclass
class Options:
    store: str
    shard: tuple[int, int] = (0, 1)
    checkpoints: str | None = None     # checkpoint root: a folder or a gs:// URL (default: <store>/checkpoints)
    status_every: float = 15.0         # seconds between heartbeats of a running cell's status.json
    stale_after: float = 600.0         # a 'running' cell of another host with no heartbeat this long is taken over
    memory_check: bool = True          # AOT-compile the largest cells against device memory before launch
    measure: bool = True               # dry run: time a few steps for the estimate
    progress: bool = True
    retry_failed: bool = True
    distributed: Distributed | None = None  # join a multi-process job: all processes run every cell together
    tensorboard: str | None = None     # TensorBoard event files, one run per cell in <tensorboard>/<cell id>
    wandb: str | None = None           # a W&B project: one W&B run per cell, its id the cell id
    wandb_group: str | None = None     # the cells' W&B group (default: the spec's name)
    wide: bool = False                 # dry run: every column (default: lines fit plan.WIDTH columns)
    compile_cache: str | None = None   # JAX's persistent compile cache: a folder or a gs:// URL (runtime.setup)
    target: str | None = None          # dry run: check memory for this accelerator with its compiler (grid/aot.py)
    out: Callable[[str], None] = field(default=lambda s: print(s, flush=True))
