"""Claiming cells: of two launchers (or two launches of one multi-host job) only one runs a cell.

Process 0 decides, with a conditional write of the cell's status.json, and says why a cell is not run
now (finished meanwhile, running elsewhere, a branch whose trunk has not reached its start); every
other process of a multi-process job follows its answer.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scaling_grid.trainer import from_process_0, saved_steps

from . import spec as S
from .liveness import host_id, is_stale, process_start
from .options import Options
from .store import FINAL_STATES, Store, now

SKIPS = ("done", "diverged", "running elsewhere", "skipped")  # why a cell is not run now


@dataclass
class Claimed:
    """A cell this launch runs now."""
    cell: S.Cell
    ckpt_dir: Any                     # its checkpoint folder
    base: dict[str, Any]              # the running status written when it was claimed
    init_from: tuple[str, int] | None  # a branch or trunk segment: (its trunk's checkpoints, the start step)


def _branch_start(cell: S.Cell, store: Store, ckpt_dir: Any, opts: Options, say: Callable[[str], None],
                  writer: bool) -> tuple[str | None, tuple[str, int] | None]:
    """A branch (or a grown trunk's next segment) starts from its trunk's checkpoint at its start step:
    (why it cannot now, or None; that checkpoint). A trunk that diverged before the start step makes the
    branch diverged too."""
    assert cell.parent is not None and cell.init_step is not None  # a branch has both (expand._wsd_shape)
    parent_dir = store.checkpoint_dir(cell.parent, opts.checkpoints)
    pst, _ = store.status(cell.parent)
    have_own = bool(saved_steps(ckpt_dir))
    if not have_own and cell.init_step not in saved_steps(parent_dir):
        if pst.get("state") == "diverged":
            msg = (f"trunk {cell.parent} diverged at step {pst.get('step')}, before this branch's start step "
                   f"{cell.init_step}")
            if writer:
                store.set_status(cell.id, {"id": cell.id, "state": "diverged", "step": cell.init_step,
                                           "total": cell.steps, "message": msg, "host": host_id()})
            say(f"{cell.id}: diverged ({msg})")
            return "diverged", None
        say(f"{cell.id}: skipped: its trunk {cell.parent} is {pst.get('state')} and has no checkpoint at step "
            f"{cell.init_step} yet")
        return "skipped", None
    return None, (str(parent_dir), cell.init_step)


def claim(cell: S.Cell, store: Store, st: dict[str, Any], gen: bytes, ckpt_dir: Any, opts: Options,
          say: Callable[[str], None], writer: bool, rerun_done: bool
          ) -> tuple[str | None, tuple[str, int] | None, dict[str, Any]]:
    """(why the cell is not run now, or None; the trunk state a branch starts from; the running
    status written). Only process 0 writes; the caller makes its answer everyone's."""
    if st.get("state") in FINAL_STATES and not rerun_done:  # finished meanwhile by another launcher
        return st["state"], None, {}
    if st.get("state") == "running" and not is_stale(st, opts.stale_after):
        say(f"{cell.id}: running on {st.get('host')} (pid {st.get('pid')}, heartbeat {st.get('updated')}); skipped")
        return "running elsewhere", None, {}
    init_from: tuple[str, int] | None = None
    if cell.parent is not None:  # a branch, or a trunk segment continuing its parent
        skip, init_from = _branch_start(cell, store, ckpt_dir, opts, say, writer)
        if skip is not None:
            return skip, None, {}

    attempt = int(st.get("attempt", 0)) + 1
    base: dict[str, Any] = {
        "id": cell.id, "state": "running", "total": cell.steps, "host": host_id(), "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "shard": f"{opts.shard[0]}/{opts.shard[1]}", "attempt": attempt, "started": now(), "message": ""}
    # A conditional write: of two launchers (or two launches of one multi-host job) only one gets it.
    if writer and not store.set_status(cell.id, {**base, "step": st.get("step")}, if_equal=gen):
        say(f"{cell.id}: claimed by another launcher meanwhile; skipped")
        return "running elsewhere", None, {}
    return None, init_from, base


def claim_cells(cells: Sequence[S.Cell], store: Store, opts: Options, say: Callable[[str], None], writer: bool,
                rerun_done: bool) -> tuple[dict[str, str], list[Claimed]]:
    """(why each cell not claimed is not run, the cells claimed): process 0 claims and says why; the
    others follow its answer (their own reading may race its claim)."""
    result: dict[str, str] = {}
    claimed: list[Claimed] = []
    for cell in cells:
        st, gen = store.status(cell.id)
        ckpt_dir = store.checkpoint_dir(cell.id, opts.checkpoints)
        skip, init_from, base = claim(cell, store, st, gen, ckpt_dir, opts, say if writer else lambda _: None, writer,
                                      rerun_done)
        code, from_trunk = from_process_0([SKIPS.index(skip) if skip else -1, init_from is not None])
        if code >= 0:
            result[cell.id] = SKIPS[code]
            continue
        init_from = None
        if from_trunk:
            assert cell.parent is not None and cell.init_step is not None  # a branch, alone
            init_from = (str(store.checkpoint_dir(cell.parent, opts.checkpoints)), cell.init_step)
        claimed.append(Claimed(cell, ckpt_dir, base, init_from))
    return result, claimed
