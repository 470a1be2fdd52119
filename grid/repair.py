"""Damaged records, repaired where that can be done and said, with the way out, where it cannot:
before a launch runs anything, what its finished cells' records lost (rewritten metadata; a done
cell, or one whose folder is gone, run again from a checkpoint before its first lost value); while
it runs, a branch's unreadable start checkpoint in its trunk (the trunk reruns from the checkpoint
before)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from scaling_grid.trainer import UnreadableCheckpoint, saved_steps, set_aside

from . import spec as S
from .claim import Claimed
from .damage import expected_of_cell, missing_cells, missing_line, rerun_from
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
    function of the cell's length), and a done cell with any point missing from its record (in any
    field, anywhere on the curve, or its arrays or whole folder gone) is returned, to be run again from
    the newest checkpoint before the first lost point (from scratch if none is left): training is a
    pure function of the config, and it writes every value from there on again. Values in a data
    chunk that does not decode cannot be repaired here; that is said, with the way out. Returns
    (cells to run again, cells still damaged)."""
    redo, damaged = set(), []
    gone = dict(missing_cells(store))
    for c in cells:
        if c.id in gone:  # no record at all: pending to the launcher, and its checkpoints would resume it
            _rerun(store, c, 0, missing_line(store, c.id, gone[c.id]), writer, out, opts_checkpoints)
            continue
        if states[c.id].get("state") != "done":
            continue
        expected = expected_of_cell(c)
        m, problems, fixable = store.checked_metrics(c.id, c.steps, "done", expected)
        if problems and fixable and writer and store.repair_metadata(c.id, c.steps):
            out(f"{c.id}: rewrote damaged metric metadata ({problems[0]})")
            m, problems, fixable = store.checked_metrics(c.id, c.steps, "done", expected)
        if problems and not fixable:
            out(f"{c.id}: DAMAGED: {'; '.join(problems)}; {lost(store, c.id)}")
            damaged.append(c.id)
        elif problems:
            cut = rerun_from(m, expected)
            if cut is None:  # metadata a non-writer cannot rewrite: process 0 does
                out(f"{c.id}: {problems[0]}; running it again (it resumes from its last checkpoint)")
            else:
                _rerun(store, c, cut, problems[0], writer, out, opts_checkpoints)
            redo.add(c.id)
    return redo, damaged


def _rerun(store: Store, c: S.Cell, cut: int, why: str, writer: bool, out: Callable[[str], None],
           opts_checkpoints: str | None) -> None:
    """Set the cell's checkpoints from step `cut` on aside (kept beside them, never listed as steps), so
    it runs again from the newest one before (from scratch at 0)."""
    ckpts = store.checkpoint_dir(c.id, opts_checkpoints)
    saved = saved_steps(ckpts)
    later, kept = [s for s in saved if s >= cut], [s for s in saved if s < cut]
    if writer and later:
        set_aside(ckpts, later)
    start = f"its checkpoint at step {max(kept):,}" if kept else "scratch"
    out(f"{c.id}: {why}; running it again " + (f"from before step {cut:,} (from {start})" if cut else "from scratch"))


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
