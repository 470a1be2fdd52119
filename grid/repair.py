"""Damaged records, repaired where that can be done and said, with the way out, where it cannot:
before a launch runs anything, what its finished cells' records lost (rewritten metadata; a done
cell run again from a checkpoint before its first lost value); while it runs, a branch's unreadable
start checkpoint in its trunk (the trunk reruns from the checkpoint before)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from scaling_grid.trainer import UnreadableCheckpoint, first_lost_step, saved_steps, set_aside

from . import spec as S
from .claim import Claimed
from .exits import EXIT_FAILED, EXIT_OK
from .store import Store, lost

RERUN_TRUNK = "rerun trunk"  # what a branch whose trunk must rerun first reports


def still_damaged(damaged: list[str], out: Callable[[str], None]) -> int:
    """EXIT_FAILED, said once at the end, while a done cell's record has damage `run` cannot repair:
    the grid is not whole, whatever else ran."""
    if not damaged:
        return EXIT_OK
    out(f"{len(damaged)} cell(s) still DAMAGED (their values are lost; see above): {', '.join(damaged)}")
    return EXIT_FAILED


def damaged_done_cells(store: Store, cells: Sequence[S.Cell], states: dict[str, dict[str, Any]], writer: bool,
                       out: Callable[[str], None], opts_checkpoints: str | None = None
                       ) -> tuple[set[str], list[str]]:
    """Repair what a finished cell's records lost: damaged metric metadata is rewritten (it is a
    function of the cell's length), and a done cell whose final point is missing is returned, to be
    run again: it resumes from its last checkpoint and re-evaluates. Values lost with a damaged data
    chunk cannot be repaired here; that is said, with the way out. Returns (cells to run again, cells
    still damaged)."""
    redo, damaged = set(), []
    for c in cells:
        if states[c.id].get("state") != "done":
            continue
        m, problems, fixable = store.checked_metrics(c.id, c.steps, "done")
        if problems and fixable and writer and store.repair_metadata(c.id, c.steps):
            out(f"{c.id}: rewrote damaged metric metadata ({problems[0]})")
            m, problems, fixable = store.checked_metrics(c.id, c.steps, "done")
        lost_from = first_lost_step(m) if problems and m is not None else None
        if lost_from is not None:
            # Training is a pure function of the config: rerun from the newest checkpoint before the
            # first lost value (or from the start), which writes every value from there on again.
            ckpts = store.checkpoint_dir(c.id, opts_checkpoints)
            later = [s for s in saved_steps(ckpts) if s >= lost_from]
            if writer and later:
                set_aside(ckpts, later)  # kept beside the cell's checkpoints, never listed as steps
            out(f"{c.id}: {problems[0]}; running it again from before step {lost_from:,}")
            redo.add(c.id)
        elif problems and fixable:
            out(f"{c.id}: {problems[0]}; running it again (it resumes from its last checkpoint)")
            redo.add(c.id)
        elif problems:
            out(f"{c.id}: DAMAGED: {'; '.join(problems)}; {lost(store, c.id)}")
            damaged.append(c.id)
    return redo, damaged


def trunk_unreadable(branch: Claimed, e: UnreadableCheckpoint, store: Store, say: Callable[[str], None], writer: bool,
                     multi: bool) -> str:
    """A branch whose start checkpoint in its trunk is unreadable: set the trunk's checkpoints from
    there aside and ask for the trunk to rerun (one process alone; on many the user is told how)."""
    cell, base = branch.cell, branch.base
    where = f"its trunk {cell.parent}'s checkpoint at step {e.step}, where this branch starts, is unreadable"
    if multi:  # moving shared checkpoints is a decision for one process; left to the user here
        msg = (f"{where} ({e}); move {e.directory}/{e.step} and the trunk's later checkpoints aside, then run "
               "again: the trunk reruns from its previous checkpoint")
        say(f"{cell.id}: FAILED: {msg}")
        if writer:
            store.set_status(cell.id, {**base, "state": "failed", "message": msg})
        return "failed"
    moved = [s for s in saved_steps(e.directory) if s >= e.step]
    dest = set_aside(e.directory, moved)
    say(f"{cell.id}: {where}; moved the trunk's checkpoints {moved} to {dest} and rerunning the trunk from its "
        "previous checkpoint")
    if writer:
        assert cell.parent is not None  # init_from is set: a branch
        store.set_status(cell.id, {**base, "state": "pending", "message": f"{where}; waiting for the trunk"})
        store.set_status(cell.parent, {**store.status(cell.parent)[0], "state": "preempted",
                                       "message": f"checkpoint {e.step} unreadable; rerunning from the one before"})
    return RERUN_TRUNK
