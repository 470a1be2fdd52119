"""The grid store: one folder (or kvstore URL) that is the record of a whole grid.

Layout (docs/store.md describes it for readers without this code)::

    <store>/store.json                      {"format": "scaling-grid-store", "version": 1, ...}
    <store>/spec.yaml                       the first grid spec launched into this store, verbatim
    <store>/specs/<hash>.yaml               every spec launched into it, verbatim
    <store>/cells/<cell>/config.json        resolved run config + derived fields (m, l, N, FLOPs/token, ...)
    <store>/cells/<cell>/status.json        state, step/total, message, host, times, tokens/s
    <store>/cells/<cell>/metrics/<field>    zarr v3 arrays, float64, NaN fill, length total_steps + 1,
                                            indexed by step: tokens tau lr loss grad_norm eval_loss eval_stderr
    <store>/checkpoints/<cell>/<step>/      orbax checkpoints (local stores; else --checkpoints DIR)

Every object belongs to one cell and is written by the one process running that cell, so writers
never share a chunk or a metadata file; arrays are created at their final size and never resized.
JSON objects go through TensorStore's kvstore API, so ``gs://`` and ``s3://`` stores work like local
folders.
"""
from __future__ import annotations

import csv
import json
import math
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import tensorstore as ts

from scaling_grid.trainer.config import ConfigError

FORMAT, VERSION = "scaling-grid-store", 1
STATES = ("pending", "running", "preempted", "done", "diverged", "failed")
FINAL_STATES = ("done", "diverged")   # never run again (a changed config is a new cell)
EXPORT_COLUMNS = ("variant", "cell", "m", "l", "N", "seed", "step", "tokens", "tau_lr", "lr", "peak_lr",
                  "train_loss", "eval_loss", "eval_stderr", "schedule", "role", "parent", "is_final",
                  "flops_per_token", "total_steps")
# parent: a wsd branch's trunk id (empty otherwise), so a bootstrap resamples a trunk with its branches.
_STR_COLUMNS = ("variant", "cell", "schedule", "role", "parent")
_INT_COLUMNS = ("m", "l", "N", "seed", "step", "flops_per_token", "total_steps")
_NO_VALUE = b"\x02"  # TensorStore's storage generation of a missing key: write-if-absent


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_url(url: str) -> bool:
    return "://" in str(url)


def check_writable(url: str) -> None:
    """A local store must be creatable (URL stores are checked by their first write)."""
    if is_url(url):
        if url.startswith("file://"):
            check_writable(url[len("file://"):])
        return
    p = Path(url).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--store={url!r}: is a file, not a directory; choose a new path or an existing store")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--store={url!r}: is not writable (nearest existing ancestor {str(probe)!r} is not a "
                          f"writable directory); choose another path")


class Store:
    """Read and write the JSON records of a grid store; metrics go through trainer.metrics."""

    def __init__(self, url: str):
        self.url = str(url)
        if is_url(self.url):
            spec: Any = self.url if self.url.endswith("/") else self.url + "/"
        else:
            spec = {"driver": "file", "path": str(Path(self.url).expanduser().absolute()) + "/"}
        self.kv = ts.KvStore.open(spec).result()
        # What TensorStoreSink / read_metrics get: a local absolute path or the URL as given.
        self.root = self.url if is_url(self.url) else str(Path(self.url).expanduser().absolute())

    # ---- raw objects
    def read_bytes(self, key: str) -> tuple[bytes | None, bytes]:
        r = self.kv.read(key).result()
        return (r.value if r.state == "value" else None), r.stamp.generation

    def read_json(self, key: str) -> dict[str, Any] | None:
        value, _ = self.read_bytes(key)
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return None  # a torn write on a filesystem without atomic rename: treat as absent

    def write(self, key: str, value: bytes | str, if_equal: bytes | None = None) -> bool:
        """Write (atomically on local disk and object stores). With if_equal, only if the key's
        generation still matches; returns whether it was written."""
        if isinstance(value, str):
            value = value.encode()
        gen = self.kv.write(key, value, if_equal=if_equal).result()
        return bool(gen.generation) or if_equal is None

    def write_json(self, key: str, obj: Mapping[str, Any], if_equal: bytes | None = None) -> bool:
        return self.write(key, json.dumps(obj, indent=1, default=_json_default) + "\n", if_equal)

    def write_if_absent(self, key: str, value: bytes | str) -> bool:
        return self.write(key, value, if_equal=_NO_VALUE)

    def exists(self) -> bool:
        return self.read_bytes("store.json")[0] is not None

    # ---- grid-level records
    def init(self, spec_text: str, spec_hash: str, name: str) -> None:
        self.write_if_absent("store.json", json.dumps({"format": FORMAT, "version": VERSION, "name": name,
                                                       "created": now()}, indent=1) + "\n")
        self.write_if_absent("spec.yaml", spec_text)
        self.write_if_absent(f"specs/{spec_hash}.yaml", spec_text)

    def check_format(self) -> None:
        meta = self.read_json("store.json")
        if meta is None:
            raise ConfigError(f"store {self.url!r}: not a grid store (no store.json); run `scaling-grid run SPEC "
                              f"--store {self.url}` first")
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
            raise ConfigError(f"store {self.url!r}: format {meta.get('format')} v{meta.get('version')} is not "
                              f"readable by this version (reads {FORMAT} v{VERSION})")

    # ---- cells
    def cell_key(self, cell_id: str, name: str) -> str:
        return f"cells/{cell_id}/{name}"

    def metrics_prefix(self, cell_id: str) -> str:
        return f"cells/{cell_id}/metrics/"

    def put_config(self, record: Mapping[str, Any]) -> None:
        self.write_if_absent(self.cell_key(record["id"], "config.json"),
                             json.dumps(record, indent=1, default=_json_default) + "\n")

    def config(self, cell_id: str) -> dict[str, Any] | None:
        return self.read_json(self.cell_key(cell_id, "config.json"))

    def status(self, cell_id: str) -> tuple[dict[str, Any], bytes]:
        """(status, generation); a cell never started reads as {"state": "pending"}."""
        value, gen = self.read_bytes(self.cell_key(cell_id, "status.json"))
        st = None
        if value is not None:
            try:
                st = json.loads(value)
            except ValueError:
                st = None
        return (st or {"state": "pending"}), gen

    def set_status(self, cell_id: str, status: Mapping[str, Any], if_equal: bytes | None = None) -> bool:
        return self.write_json(self.cell_key(cell_id, "status.json"), {**status, "updated": now()}, if_equal)

    def cell_ids(self) -> list[str]:
        """Every cell with a config.json (listing only cells/*/config.json, not metric chunks)."""
        keys = self.kv.list(ts.KvStore.KeyRange(inclusive_min="cells/", exclusive_max="cells0")).result()
        out = set()
        for k in keys:
            parts = k.decode().split("/")
            if len(parts) == 3 and parts[2] == "config.json":
                out.add(parts[1])
        return sorted(out)

    def records(self) -> list[dict[str, Any]]:
        """config + status of every cell, in a stable order (shape, seed, role, budget)."""
        out = []
        for cid in self.cell_ids():
            cfg = self.config(cid)
            if cfg is None:
                continue
            st, _ = self.status(cid)
            out.append({"config": cfg, "status": st})
        role_order = {"trunk": 0, "branch": 1, "separate": 1}
        out.sort(key=lambda r: (r["config"]["variant"], r["config"]["m"], r["config"]["l"], r["config"]["seed"],
                                r["config"].get("peak_lr", 0), role_order.get(r["config"]["role"], 2),
                                r["config"]["tokens"], r["config"]["id"]))
        return out

    def read_metrics(self, cell_id: str) -> dict[str, np.ndarray] | None:
        """The cell's metric arrays (NaN where unwritten), or None if it has none yet. Re-reads data
        from storage on every call, so it sees a writer's progress."""
        from scaling_grid.trainer.metrics import read_metrics
        try:
            return read_metrics(self.root, prefix=self.metrics_prefix(cell_id))
        except ValueError:  # arrays not created yet (NOT_FOUND) or mid-creation
            return None

    def checkpoint_dir(self, cell_id: str, root: str | None = None) -> Path:
        if root is not None:
            return Path(root).expanduser().absolute() / cell_id
        if is_url(self.url) and not self.url.startswith("file://"):
            raise ConfigError(f"--store={self.url!r} is a URL: the trainer's checkpoints need a filesystem path; "
                              f"pass --checkpoints DIR (a local or shared disk)")
        base = self.url[len("file://"):] if self.url.startswith("file://") else self.url
        return Path(base).expanduser().absolute() / "checkpoints" / cell_id


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(type(o).__name__)


def host_id() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def age_s(status: Mapping[str, Any]) -> float:
    t = status.get("updated")
    if not t:
        return math.inf
    try:
        return time.time() - datetime.fromisoformat(t).timestamp()
    except ValueError:
        return math.inf


def is_stale(status: Mapping[str, Any], stale_after_s: float) -> bool:
    """A 'running' status whose writer is gone: a dead pid on this host, or no heartbeat for a while."""
    if status.get("state") != "running":
        return True
    if status.get("host") == host_id() and isinstance(status.get("pid"), int):
        return not pid_alive(status["pid"]) or status["pid"] == os.getpid()
    return age_s(status) > stale_after_s


# ------------------------------------------------------------------------------------------- export

def export_table(url: str) -> dict[str, np.ndarray]:
    """One tidy table of every recorded point of the store: columns EXPORT_COLUMNS, one row per step
    that has a train or eval record (NaN where a value is absent). ``is_final`` marks the last step of a
    done separate run or wsd branch (the points a final-loss fit uses)."""
    store = Store(url)
    store.check_format()
    cols: dict[str, list[np.ndarray]] = {c: [] for c in EXPORT_COLUMNS}
    for rec in store.records():
        cfg, st = rec["config"], rec["status"]
        m = store.read_metrics(cfg["id"])
        if m is None:
            continue
        has = np.isfinite(m["tokens"]) | np.isfinite(m["eval_loss"]) | np.isfinite(m["loss"])
        steps = np.flatnonzero(has)
        if len(steps) == 0:
            continue
        n = len(steps)
        total = int(cfg["total_steps"])
        tau = m["tau"][steps].copy()
        tau[steps == 0] = 0.0
        final = (steps == total) & (st.get("state") == "done") & (cfg["role"] in ("separate", "branch"))
        vals = {
            "variant": np.full(n, cfg["variant"], dtype=object), "cell": np.full(n, cfg["id"], dtype=object),
            "m": np.full(n, cfg["m"]), "l": np.full(n, cfg["l"]), "N": np.full(n, cfg["N"]),
            "seed": np.full(n, cfg["seed"]), "step": steps.astype(np.int64),
            "tokens": steps.astype(np.float64) * cfg["tokens_per_step"], "tau_lr": tau, "lr": m["lr"][steps],
            "peak_lr": np.full(n, float(cfg["peak_lr"])), "train_loss": m["loss"][steps],
            "eval_loss": m["eval_loss"][steps], "eval_stderr": m["eval_stderr"][steps],
            "schedule": np.full(n, cfg["schedule"], dtype=object), "role": np.full(n, cfg["role"], dtype=object),
            "parent": np.full(n, cfg.get("parent") or "", dtype=object), "is_final": final,
            "flops_per_token": np.full(n, cfg["flops_per_token"]),
            "total_steps": np.full(n, total),
        }
        for c in EXPORT_COLUMNS:
            cols[c].append(vals[c])
    out = {}
    for c in EXPORT_COLUMNS:
        if c in _STR_COLUMNS:
            dtype: Any = object
        elif c in _INT_COLUMNS:
            dtype = np.int64
        elif c == "is_final":
            dtype = bool
        else:
            dtype = np.float64
        out[c] = np.concatenate(cols[c]).astype(dtype) if cols[c] else np.zeros(0, dtype)
    return out


def write_table(table: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """CSV (``.csv``) or parquet (``.parquet``); NaN is written as an empty CSV field."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        arrays = {c: pa.array(list(v) if v.dtype == object else v) for c, v in table.items()}
        pq.write_table(pa.table(arrays), p)
        return p
    if p.suffix != ".csv":
        raise ConfigError(f"--out={str(p)!r}: expected a .csv or .parquet file name")
    names = list(table)
    n = len(next(iter(table.values()))) if table else 0
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in range(n):
            w.writerow([_fmt(table[c][i]) for c in names])
    return p


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(float(v))
    return str(v)


# ------------------------------------------------------------------------------------------- status

def status_rows(url: str) -> list[dict[str, Any]]:
    """One row per cell for `scaling-grid status`: state, step/total, last train loss, last eval loss,
    tokens/s, heartbeat age, host. Running cells are read live from their metric arrays."""
    store = Store(url)
    store.check_format()
    rows = []
    for rec in store.records():
        cfg, st = rec["config"], rec["status"]
        state = st.get("state", "pending")
        row = {"cell": cfg["id"], "role": cfg["role"], "state": state, "step": st.get("step"),
               "total": cfg["total_steps"], "loss": st.get("loss"), "eval_loss": st.get("eval_loss"),
               "tokens_per_s": st.get("tokens_per_s"), "age_s": age_s(st) if state == "running" else None,
               "host": st.get("host", ""), "message": st.get("message", "")}
        if state in ("running", "preempted", "failed") or (state == "done" and row["loss"] is None):
            m = store.read_metrics(cfg["id"])
            if m is not None:
                logged = np.flatnonzero(np.isfinite(m["tokens"]))
                if len(logged):
                    row["step"] = max(int(logged[-1]), row["step"] or 0)
                    row["loss"] = float(m["loss"][logged[-1]])
                ev = np.flatnonzero(np.isfinite(m["eval_loss"]))
                if len(ev):
                    row["eval_loss"] = float(m["eval_loss"][ev[-1]])
        rows.append(row)
    return rows


def format_status(rows: Iterable[Mapping[str, Any]]) -> str:
    rows = list(rows)
    head = ("cell", "role", "state", "step/total", "loss", "eval", "tok/s", "note")
    table = []
    for r in rows:
        note = r["host"] if r["state"] == "running" else ""
        if r["state"] == "running" and r["age_s"] is not None and math.isfinite(r["age_s"]):
            note += f" ({r['age_s']:.0f}s ago)"
        if r["state"] in ("failed", "diverged", "preempted") and r["message"]:
            note = r["message"].splitlines()[0][:70]
        table.append((r["cell"], r["role"], r["state"], f"{r['step'] or 0}/{r['total']}", _num(r["loss"]),
                      _num(r["eval_loss"]), _num(r["tokens_per_s"], "{:,.0f}"), note))
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() for t in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"{len(rows)} cells: " + ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts))
    return "\n".join(lines)


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else str(v)
    return fmt.format(v)
