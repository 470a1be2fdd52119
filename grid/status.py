"""`scaling-grid status`: one row per cell of a grid store (or the one run of a `train` run folder),
read live while the grid runs, and the table that shows them."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from scaling_grid import trainer as T

from .damage import expected_of, missing_cells, missing_line
from .liveness import age_s
from .store import STATES, Store, lost, repair_hint


def status_rows(url: str) -> list[dict[str, Any]]:
    """One row per cell for `scaling-grid status`: state, step/total, last train loss, last eval loss,
    tokens/s, heartbeat age, host. Running cells are read live from their metric arrays. A `train` run
    folder gives one row."""
    if T.is_run_folder(url):
        return [_run_folder_row(url)]
    store = Store(url)
    store.check_format()
    rows = []
    records, damage = store.records()
    for line in damage:
        cid, what = line.split(": ", 1)
        rows.append({"cell": cid.removeprefix("cell "), "role": "?", "state": "damaged", "step": None, "total": "?",
                     "loss": None, "eval_loss": None, "tokens_per_s": None, "age_s": None, "host": "",
                     "message": what})
    for rec in records:
        cfg, st = rec["config"], rec["status"]
        state = st.get("state", "pending")
        row = {"cell": cfg["id"], "role": cfg["role"], "state": state, "step": st.get("step"),
               "total": cfg["total_steps"], "loss": st.get("loss"), "eval_loss": st.get("eval_loss"),
               "tokens_per_s": st.get("tokens_per_s"), "age_s": age_s(st) if state == "running" else None,
               "host": st.get("host", ""), "message": st.get("message", "")}
        m, problems, fixable = store.checked_metrics(cfg["id"], int(cfg["total_steps"]), state, expected_of(cfg))
        problems = ([st["problem"]] if "problem" in st else []) + problems
        if problems:
            row["state"] = "damaged"
            row["message"] = "; ".join(problems) + ("" if fixable else f"; {lost(store, cfg['id'])}")
        if state != "pending":
            _live_values(row, m)
        rows.append(row)
    for cid, key in missing_cells(store):
        rows.append({"cell": cid, "role": "?", "state": "damaged", "step": None, "total": "?", "loss": None,
                     "eval_loss": None, "tokens_per_s": None, "age_s": None, "host": "",
                     "message": missing_line(store, cid, key)})
    return rows


def _run_folder_row(url: str) -> dict[str, Any]:
    """The status row of a `train` run folder."""
    cfg, st, m, problems, fixable = T.read_run_folder(url)
    row = {"cell": T.run_name(url), "role": "run", "state": st["state"], "step": st.get("step"),
           "total": cfg.steps if cfg is not None else "?", "loss": None, "eval_loss": st.get("eval_loss"),
           "tokens_per_s": None, "age_s": None, "host": st.get("host", ""), "message": st.get("message", "")}
    if problems:
        row["state"] = "damaged"
        row["message"] = "; ".join(problems) + ("" if fixable else f"; {T.lost_run(url)}")
    _live_values(row, m)
    return row

def _live_values(row: dict[str, Any], m: dict[str, np.ndarray] | None) -> None:
    """Step, train loss and eval loss of a row from the metric arrays (newer than a status record)."""
    if m is None:
        return
    logged = np.flatnonzero(np.isfinite(m["tokens"]))
    if len(logged):
        row["step"] = max(int(logged[-1]), row["step"] or 0)
        row["loss"] = float(m["loss"][logged[-1]])
    ev = np.flatnonzero(np.isfinite(m["eval_loss"]))
    if len(ev):
        row["eval_loss"] = float(m["eval_loss"][ev[-1]])


WIDTH = 100  # status rows fit a laptop terminal; --wide prints every column and whole notes


def format_status(rows: Iterable[Mapping[str, Any]], url: str = "STORE", wide: bool = False) -> str:
    """The status table. Rows fit WIDTH columns (the role is in the cell id's suffix, -trunk / -wsd, and
    notes are cut to the room left) unless `wide`; damage messages below the table stay whole (they
    name paths to act on)."""
    rows = list(rows)
    head: tuple[str, ...] = ("cell", "role", "state", "step/total", "loss", "eval", "tok/s", "note")
    table: list[tuple[str, ...]] = []
    for r in rows:
        # narrow: the host's first label, and a message without the state it repeats ("preempted: ...")
        note = (r["host"] if wide else r["host"].split(".")[0]) if r["state"] == "running" else ""
        if r["state"] == "running" and r["age_s"] is not None and math.isfinite(r["age_s"]):
            note += f" ({r['age_s']:.0f}s ago)"
        if r["state"] in ("failed", "diverged", "preempted") and r["message"]:
            note = r["message"].splitlines()[0]
            if not wide:
                note = note.removeprefix(f"{r['state']}: ")
        if r["state"] == "damaged":
            note = "see below"
        table.append((r["cell"], r["role"], r["state"], f"{r['step'] or 0}/{r['total']}", _num(r["loss"]),
                      _num(r["eval_loss"]), _num(r["tokens_per_s"], "{:,.0f}"), note))
    cut = False
    if not wide:
        head, table = head[:1] + head[2:], [t[:1] + t[2:] for t in table]
        fixed = sum(max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head[:-1]))
        room = max(WIDTH - fixed - 2 * (len(head) - 1), 12)  # 12: something of the note even beside a long id
        cut = any(len(t[-1]) > room for t in table)
        table = [t[:-1] + (t[-1] if len(t[-1]) <= room else t[-1][:room - 3] + "...",) for t in table]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() for t in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"{len(rows)} cell{'s' if len(rows) != 1 else ''}: "
                 + ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts))
    if cut:
        lines.append(f"(notes cut to {WIDTH} columns: --wide shows them whole)")
    damaged = [r for r in rows if r["state"] == "damaged"]
    if damaged:
        what = "run folder" if T.is_run_folder(url) else "store"
        lines.append(f"DAMAGED ({len(damaged)} cells; `export`, `fit` and `report` refuse this {what} until repaired):")
        lines += [f"  {r['cell']}: {r['message']}" for r in damaged]
        lines.append(repair_hint(url))
    return "\n".join(lines)


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else str(v)
    return fmt.format(v)
