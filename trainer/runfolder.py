"""Reading what `scaling-grid train` wrote (traincmd.train_cli): a run folder's config, state and metrics,
and the checks a finished run's metric arrays must pass (a grid's cells hold the same arrays).

A run folder: <out_dir>/config.yaml, metrics/ (zarr arrays, one per field, indexed by step),
checkpoints/, result.json at the end, and .lock ("pid N on host") while its `train` runs.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from . import paths as P
from .config import ConfigError, RunConfig, from_dict
from .metrics import EVAL_FIELDS, TRAIN_FIELDS, MetricsDamaged, read_metrics

Expected = tuple[np.ndarray, np.ndarray]  # the steps a done run records: (train steps, eval steps)


def check_final(m: dict[str, np.ndarray] | None, total_steps: int, where: str, expected: Expected | None = None
                ) -> tuple[list[str], bool]:
    """(problems, repairable) of a done run's metrics: every fit of its budget needs its final train and
    eval points. A missing eval is re-evaluated from the last checkpoint; a missing train loss is not.
    With `expected` (a grid cell's schedule, :func:`expected_steps`), every point the run records is
    checked, in every field, and all of it is repairable: a point missing is a point to recompute."""
    if m is None:
        return [f"done, but its metric arrays ({where}) are missing"], expected is not None
    lost = lost_points(m, expected) if expected is not None else []
    detail = f" ({', '.join(f'{f}: {n:,} point(s) from step {s:,}' for f, s, n in lost)})" if lost else ""
    missing = [f for f in ("loss", "eval_loss") if not np.isfinite(m[f][total_steps])]
    if missing:
        return ([f"done, but its final point (step {total_steps}) has no {' or '.join(missing)}{detail}"],
                "loss" not in missing or expected is not None)
    first = first_lost_step(m)
    if first is not None or lost:
        first = min(([first] if first is not None else []) + [s for _, s, _ in lost])
        where_else = " where other fields were recorded" if not lost else ""
        return [f"done, but values are missing from step {first:,} on{where_else}: a data chunk was lost{detail}"], \
            expected is not None
    return [], True


def expected_steps(total_steps: int, log_every: int, eval_every: int, start: int = 0) -> Expected:
    """The steps a done run records (trainer/loop.py): train fields at every log_every-th step after
    `start` (a branch's trunk step) and at the end; eval fields at every eval_every-th step from
    `start` on (step 0 is the model at init) and at the end."""
    s = np.arange(start, total_steps + 1)
    end = s == total_steps
    return s[(s > start) & ((s % log_every == 0) | end)], s[(s % eval_every == 0) | end]


def lost_points(m: dict[str, np.ndarray], expected: Expected) -> list[tuple[str, int, int]]:
    """(field, first step, count) of each field that has no value at steps its run records: values
    of a lost data chunk read as NaN (the fill), in one field or in all of them."""
    out = []
    for fields, steps in zip((TRAIN_FIELDS, EVAL_FIELDS), expected):
        for f in fields:
            gone = steps[np.isnan(m[f][steps])]
            if len(gone):
                out.append((f, int(gone[0]), len(gone)))
    return out


def first_lost_step(m: dict[str, np.ndarray]) -> int | None:
    """The fields of a train (eval) record are written together, so a step recorded in one field and
    not in another is a lost data chunk, anywhere on the curve: the first such step, or None."""
    firsts = []
    for fields in (TRAIN_FIELDS, EVAL_FIELDS):
        logged = [~np.isnan(m[f]) for f in fields]
        every, common = np.logical_or.reduce(logged), np.logical_and.reduce(logged)
        gaps = np.flatnonzero(every & ~common)
        if len(gaps):
            firsts.append(int(gaps[0]))
    return min(firsts) if firsts else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(url: str, key: str) -> bytes | None:
    """`url/key` (None if absent), through TensorStore's kvstore: a run folder may be in a bucket."""
    if "://" in url and P.scheme_of(url) not in P.SCHEMES:
        return None
    P.check_readable("store", url)  # a bucket that does not answer: exit 2, not a hang
    return P.read_bytes(url, key)


def is_run_folder(url: str) -> bool:
    """A folder (local, or a file:// or gs:// URL) written by `scaling-grid train` (config.yaml, and no
    store.json)."""
    if "://" not in url and not Path(url).expanduser().is_dir():
        return False
    return _read(url, "config.yaml") is not None and _read(url, "store.json") is None


def run_name(url: str) -> str:
    """The run's name: its folder's."""
    return P.name_of(P.join(url))


def _live_holder(url: str) -> str | None:
    """'pid N on host' of the `train` that holds this folder's lock, if it is alive on this machine.
    (`train` empties the file when it ends; a killed one leaves its line, so the pid is checked. A run
    folder in a bucket has no lock: see traincmd.exclusive.)"""
    if P.is_remote(url):
        return None
    try:
        text = (Path(P.local(url)) / ".lock").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    parts = text.split()
    if len(parts) == 4 and parts[0] == "pid" and parts[1].isdigit() and parts[3] == socket.gethostname() \
            and pid_alive(int(parts[1])):
        return text
    return None


def read_run_folder(url: str) -> tuple[RunConfig | None, dict[str, Any], dict[str, np.ndarray] | None, list[str], bool]:
    """(RunConfig or None, status, metrics or None, problems, whether `train` again repairs them all).
    status: running (its `train` holds the folder), else result.json's state, else partial (metrics
    but no result: killed or crashed) or pending."""
    import yaml
    p = P.join(url)  # messages name the folder's absolute path (or its URL)
    try:
        cfg = from_dict(yaml.safe_load(_read(url, "config.yaml") or b""))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, ConfigError, TypeError, AttributeError) as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return None, {"state": "damaged"}, None, [f"{p}/config.yaml is unreadable ({why})"], False
    problems: list[str] = []
    fixable = True
    try:
        m = read_metrics(P.join(url, "metrics"), length=cfg.steps + 1)
    except MetricsDamaged as e:
        m, fixable = None, e.in_metadata
        problems.append(str(e))
    except ValueError as e:
        if "NOT_FOUND" not in str(e):
            raise
        m = None
    status = _run_status(url, m, problems)
    if status["state"] == "done" and not problems:
        more, fixable = check_final(m, cfg.steps, f"{p}/metrics")
        problems += more
    return cfg, status, m, problems, fixable


def _run_status(url: str, m: dict[str, np.ndarray] | None, problems: list[str]) -> dict[str, Any]:
    """The run's state: running, else result.json's (a damaged one is added to `problems`), else
    partial (metrics but no result) or pending."""
    holder = _live_holder(url)
    if holder is not None:
        return {"state": "running", "host": holder.split()[-1], "pid": int(holder.split()[1])}
    result_raw = _read(url, "result.json")
    if result_raw is not None:
        try:
            result = json.loads(result_raw)
            return {"state": result["status"], "step": result.get("step"), "message": result.get("message", ""),
                    "eval_loss": result.get("eval_loss"), "vocab": result.get("vocab")}
        except (OSError, ValueError, TypeError, KeyError) as e:  # ValueError: JSON and UTF-8 errors
            problems.append(f"{P.join(url)}/result.json is damaged ({type(e).__name__}: {str(e)[:100]})")
            return {"state": "partial"}
    return {"state": "partial"} if m is not None else {"state": "pending"}


def lost_run(url: str) -> str:
    """The way out for a run folder whose values are lost."""
    return (f"these values are lost: delete {url}/metrics and {url}/checkpoints, then `scaling-grid train` again "
            "retrains the run")
