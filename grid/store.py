"""The grid store: one folder (or kvstore URL) that is the record of a whole grid.

Layout (docs/store.md describes it for readers without this code)::

    <store>/store.json                      {"format": "scaling-grid-store", "version": 1, ...}
    <store>/spec.yaml                       the first grid spec launched into this store, verbatim
    <store>/specs/<hash>.yaml               every spec launched into it, verbatim
    <store>/cells/<cell>/config.json        resolved run config + derived fields (m, l, N, FLOPs/token, ...)
    <store>/cells/<cell>/status.json        state, step/total, message, host, times, tokens/s
    <store>/cells/<cell>/metrics/<field>    zarr v3 arrays, float64, NaN fill, length total_steps + 1,
                                            indexed by step: tokens tau lr loss grad_norm eval_loss eval_stderr
    <store>/checkpoints/<cell>/<step>/      orbax checkpoints (unless --checkpoints DIR|URL)

Every object belongs to one cell and is written by the one process running that cell, so writers
never share a chunk or a metadata file; arrays are created at their final size and never resized.
JSON objects go through TensorStore's kvstore API, so a ``gs://`` store works like a local folder (as
does a ``file://`` URL); checkpoints go through orbax and ``etils.epath`` (trainer/paths.py).
"""
from __future__ import annotations

import csv
import json
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from scaling_grid.trainer import ConfigError
from scaling_grid.trainer import paths as P

FORMAT, VERSION = "scaling-grid-store", 1
# damaged: status only; partial: a `train` folder with no result (killed, or still being written)
STATES = ("pending", "running", "partial", "preempted", "done", "diverged", "failed", "damaged")
FINAL_STATES = ("done", "diverged")   # never run again (a changed config is a new cell)
EXPORT_COLUMNS = ("variant", "cell", "m", "l", "N", "seed", "step", "tokens", "tau_lr", "lr", "peak_lr",
                  "train_loss", "eval_loss", "eval_stderr", "schedule", "role", "parent", "is_final",
                  "flops_per_token", "total_steps")
# parent: a wsd branch's trunk id (empty otherwise), so a bootstrap resamples a trunk with its branches.
_STR_COLUMNS = ("variant", "cell", "schedule", "role", "parent")
_INT_COLUMNS = ("m", "l", "N", "seed", "step", "flops_per_token", "total_steps")
_NO_VALUE = b"\x02"  # TensorStore's storage generation of a missing key: write-if-absent


class StoreDamaged(ConfigError):
    """A record of the store that exists but cannot be read; the message names it and the way out."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_url(url: str) -> bool:
    return "://" in str(url)


def check_writable(url: str, name: str = "--store") -> None:
    """A store (or checkpoint root, `name`) must be creatable: a local folder's nearest existing ancestor
    is a writable folder; a bucket answers a probe write (trainer.paths.check_writable)."""
    P.check_writable(name, url)
    if P.is_remote(url):
        return
    p = Path(P.local(url))
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{name}={url!r}: is a file, not a directory; choose a new path or an existing store")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={url!r}: is not writable (nearest existing ancestor {str(probe)!r} is not a "
                          f"writable directory); choose another path")


class Store:
    """Read and write the JSON records of a grid store; metrics go through trainer.metrics."""

    def __init__(self, url: str):
        self.url = str(url)
        P.check_readable("store", self.url)  # an unsupported scheme, or a bucket that does not answer: exit 2
        if is_url(self.url):
            spec: Any = self.url if self.url.endswith("/") else self.url + "/"
        else:  # normalised: TensorStore refuses a path with '..' in it (--store ../stores/x)
            spec = {"driver": "file", "path": os.path.abspath(os.path.expanduser(self.url)) + "/"}
        self.kv = ts.KvStore.open(spec).result()
        # What TensorStoreSink / read_metrics get: a local absolute path or the URL as given.
        self.root = self.url if is_url(self.url) else os.path.abspath(os.path.expanduser(self.url))

    # ---- raw objects
    def read_bytes(self, key: str) -> tuple[bytes | None, bytes]:
        r = self.kv.read(key).result()
        return (r.value if r.state == "value" else None), r.stamp.generation

    def read_json(self, key: str) -> dict[str, Any] | None:
        """The object at `key`, None if absent; StoreDamaged if present but not a JSON object."""
        value, _ = self.read_bytes(key)
        return None if value is None else self._parse(key, value)

    def _parse(self, key: str, value: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(value)
        except ValueError as e:  # UnicodeDecodeError included
            raise StoreDamaged(f"{self.root}/{key} is damaged (not valid JSON: {e})") from None
        if not isinstance(obj, dict):
            raise StoreDamaged(f"{self.root}/{key} is damaged (a JSON {type(obj).__name__}, not an object)")
        return obj

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
        """Record the store's format and the spec; a damaged store.json is rewritten."""
        record = json.dumps({"format": FORMAT, "version": VERSION, "name": name, "created": now()}, indent=1) + "\n"
        try:
            self.read_json("store.json")
        except StoreDamaged:
            self.write("store.json", record)
        self.write_if_absent("store.json", record)
        self.write_if_absent("spec.yaml", spec_text)
        self.write_if_absent(f"specs/{spec_hash}.yaml", spec_text)

    def check_format(self) -> None:
        try:
            meta = self.read_json("store.json")
        except StoreDamaged as e:
            raise StoreDamaged(f"store {self.url!r}: {e}; `scaling-grid run SPEC --store {self.url}` rewrites it "
                               "(the cells' records are separate and unaffected)") from None
        if meta is None:
            raise ConfigError(f"store {self.url!r}: not a grid store (no store.json) nor a `train` run folder (no "
                              f"config.yaml); run `scaling-grid run SPEC --store {self.url}` first")
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
            raise ConfigError(f"store {self.url!r}: format {meta.get('format')} v{meta.get('version')} is not "
                              f"readable by this version (reads {FORMAT} v{VERSION})")

    # ---- cells
    def cell_key(self, cell_id: str, name: str) -> str:
        return f"cells/{cell_id}/{name}"

    def metrics_prefix(self, cell_id: str) -> str:
        return f"cells/{cell_id}/metrics/"

    def put_config(self, record: Mapping[str, Any]) -> bool:
        """Write a cell's config.json unless a readable one exists (a damaged one is replaced: the
        record is a function of the spec). Returns whether it replaced a damaged one."""
        key, text = self.cell_key(record["id"], "config.json"), json.dumps(record, indent=1, default=_json_default)
        try:
            self.read_json(key)
        except StoreDamaged:
            self.write(key, text + "\n")
            return True
        self.write_if_absent(key, text + "\n")
        return False

    def config(self, cell_id: str) -> dict[str, Any] | None:
        return self.read_json(self.cell_key(cell_id, "config.json"))

    def status(self, cell_id: str) -> tuple[dict[str, Any], bytes]:
        """(status, generation); a cell never started reads as {"state": "pending"}, and so does one
        whose status.json is damaged, with the damage under "problem" (a launcher resumes it from its
        checkpoints, which rewrites the status)."""
        value, gen = self.read_bytes(self.cell_key(cell_id, "status.json"))
        if value is None:
            return {"state": "pending"}, gen
        try:
            return self._parse(self.cell_key(cell_id, "status.json"), value), gen
        except StoreDamaged as e:
            return {"state": "pending", "problem": str(e)}, gen

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

    def records(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(config + status of every readable cell in a stable order (shape, seed, role, budget),
        the damage found: one line per cell whose config.json is unreadable)."""
        out, damage = [], []
        for cid in self.cell_ids():
            try:
                cfg = self.config(cid)
            except StoreDamaged as e:
                damage.append(f"cell {cid}: {e}")
                continue
            if cfg is None:
                continue
            st, _ = self.status(cid)
            out.append({"config": cfg, "status": st})
        role_order = {"trunk": 0, "branch": 1, "separate": 1}
        out.sort(key=lambda r: (r["config"]["variant"], r["config"]["m"], r["config"]["l"], r["config"]["seed"],
                                r["config"].get("peak_lr", 0), role_order.get(r["config"]["role"], 2),
                                r["config"]["tokens"], r["config"]["id"]))
        return out, damage

    def read_metrics(self, cell_id: str, total_steps: int | None = None) -> dict[str, np.ndarray] | None:
        """The cell's metric arrays (NaN where unwritten), or None if it has none yet. Re-reads data
        from storage on every call, so it sees a writer's progress. MetricsDamaged for an array that
        exists but does not read (or, given ``total_steps``, is not of that run's length)."""
        from scaling_grid.trainer import read_metrics
        try:
            return read_metrics(self.root, prefix=self.metrics_prefix(cell_id),
                                length=None if total_steps is None else total_steps + 1)
        except ValueError as e:
            if "NOT_FOUND" in str(e):  # arrays not created yet
                return None
            raise

    def checked_metrics(self, cell_id: str, total_steps: int, state: str
                        ) -> tuple[dict[str, np.ndarray] | None, list[str], bool]:
        """(the cell's metrics or None, what is wrong with them, whether `run` can repair all of it).
        A done cell must have its final train and eval points: every fit of its budget needs them."""
        from scaling_grid.trainer import MetricsDamaged
        try:
            m = self.read_metrics(cell_id, total_steps)
        except MetricsDamaged as e:
            return None, [str(e)], e.in_metadata
        if state != "done":
            return m, [], True
        return (m, *check_final(m, total_steps, f"{self.root}/{self.metrics_prefix(cell_id)}"))

    def repair_metadata(self, cell_id: str, total_steps: int) -> list[str]:
        """Rewrite every unreadable metric metadata file of a cell (a function of its length); returns
        the fields repaired. Data chunks are separate objects and stay as they are."""
        from scaling_grid.trainer import EVAL_FIELDS, TRAIN_FIELDS, MetricsDamaged, open_metric, rewrite_metadata
        fixed = []
        for f in TRAIN_FIELDS + EVAL_FIELDS:
            key = self.metrics_prefix(cell_id) + f
            try:
                arr = open_metric(self.root_kvstore(), key, total_steps + 1, create=False)
                if arr.shape[-1] != total_steps + 1:  # parses, but describes another array
                    raise MetricsDamaged(key, in_metadata=True)
            except MetricsDamaged:
                rewrite_metadata(self.root_kvstore(), key, total_steps + 1)
                fixed.append(f)
            except ValueError:  # not created yet
                pass
        return fixed

    def root_kvstore(self) -> Any:
        from scaling_grid.trainer import kvstore_spec
        return kvstore_spec(self.root)

    def checkpoint_dir(self, cell_id: str, root: str | None = None) -> Any:
        """A cell's checkpoint folder (trainer.paths.path_of: local, or in a bucket): <root>/<cell>, by
        default <store>/checkpoints/<cell>."""
        if root is not None:
            P.check_scheme("--checkpoints", root)
            return P.path_of(root) / cell_id
        return P.path_of(self.url) / "checkpoints" / cell_id


def check_final(m: dict[str, np.ndarray] | None, total_steps: int, where: str) -> tuple[list[str], bool]:
    """(problems, repairable) of a done run's metrics: every fit of its budget needs its final train and
    eval points. A missing eval is re-evaluated from the last checkpoint; a missing train loss is not."""
    if m is None:
        return [f"done, but its metric arrays ({where}) are missing"], False
    missing = [f for f in ("loss", "eval_loss") if not np.isfinite(m[f][total_steps])]
    if missing:
        return [f"done, but its final point (step {total_steps}) has no {' or '.join(missing)}"], "loss" not in missing
    first = first_lost_step(m)
    if first is not None:
        return [f"done, but values are missing from step {first:,} on where other fields were recorded: a data "
                "chunk was lost"], False
    return [], True


def first_lost_step(m: dict[str, np.ndarray]) -> int | None:
    """The fields of a train (eval) record are written together, so a step recorded in one field and
    not in another is a lost data chunk, anywhere on the curve: the first such step, or None."""
    from scaling_grid.trainer import EVAL_FIELDS, TRAIN_FIELDS
    firsts = []
    for fields in (TRAIN_FIELDS, EVAL_FIELDS):
        logged = [~np.isnan(m[f]) for f in fields]
        every, common = np.logical_or.reduce(logged), np.logical_and.reduce(logged)
        gaps = np.flatnonzero(every & ~common)
        if len(gaps):
            firsts.append(int(gaps[0]))
    return min(firsts) if firsts else None


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


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that cannot
    be read: with the pid it names one process for good, since the kernel reuses pids."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): starttime


def is_stale(status: Mapping[str, Any], stale_after_s: float) -> bool:
    """A 'running' status whose writer is gone: no heartbeat for ``stale_after_s``, whatever its pid
    says; or, on this host, sooner: its pid dead, or alive but started at another time than the writer
    (the pid reused), or this very process."""
    if status.get("state") != "running":
        return True
    if age_s(status) > stale_after_s:
        return True
    if status.get("host") == host_id() and isinstance(status.get("pid"), int):
        pid, started = status["pid"], status.get("pid_start")
        return (not pid_alive(pid) or pid == os.getpid()
                or started is not None and process_start(pid) not in (None, started))
    return False


# ------------------------------------------------------------------------------------------- export

def export_table(url: str) -> dict[str, np.ndarray]:
    """One tidy table of every recorded point of the store: columns EXPORT_COLUMNS, one row per step
    that has a train or eval record (NaN where a value is absent). ``is_final`` marks the last step of a
    done separate run or wsd branch (the points a final-loss fit uses). `url` may also be a `train`
    run folder: the same columns for its one run."""
    if is_run_folder(url):
        return _run_folder_table(url)
    store = Store(url)
    store.check_format()
    records, damage = store.records()
    data: dict[str, dict[str, np.ndarray] | None] = {}
    for rec in records:
        cfg, st = rec["config"], rec["status"]
        m, problems, fixable = store.checked_metrics(cfg["id"], int(cfg["total_steps"]), st.get("state", "pending"))
        problems = ([st["problem"]] if "problem" in st else []) + problems  # unknown state: is it final?
        damage += [f"cell {cfg['id']}: {p}" + ("" if fixable else f"; {lost(store, cfg['id'])}") for p in problems]
        data[cfg["id"]] = m
    if damage:  # a fit must never silently lose a cell: stop and say what to do
        raise StoreDamaged(f"store {url!r} is damaged; no table written:\n  " + "\n  ".join(damage)
                           + f"\n{repair_hint(url)}")
    return _table([_export_rows(rec["config"], rec["status"].get("state"), data[rec["config"]["id"]])
                   for rec in records])


def _export_rows(cfg: Mapping[str, Any], state: str | None, m: dict[str, np.ndarray] | None
                 ) -> dict[str, np.ndarray] | None:
    """The export rows of one run: `cfg` is its config.json record, `m` its metric arrays."""
    if m is None:
        return None
    has = np.isfinite(m["tokens"]) | np.isfinite(m["eval_loss"]) | np.isfinite(m["loss"])
    steps = np.flatnonzero(has)
    if len(steps) == 0:
        return None
    n = len(steps)
    total = int(cfg["total_steps"])
    tau = m["tau"][steps].copy()
    tau[steps == 0] = 0.0
    final = (steps == total) & (state == "done") & (cfg["role"] in ("separate", "branch"))
    return {
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


def _table(parts: Iterable[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    """Concatenate runs' rows into the columns of EXPORT_COLUMNS, with their dtypes (also when empty)."""
    kept = [p for p in parts if p is not None]
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
        out[c] = np.concatenate([p[c] for p in kept]).astype(dtype) if kept else np.zeros(0, dtype)
    return out


# ------------------------------------------------------------------------------ `train` run folders
# `scaling-grid train` writes <out_dir>/config.yaml, metrics/ (the same zarr arrays as a grid cell's),
# checkpoints/, result.json at the end, and .lock ("pid N on host") while it runs. status and export
# read such a folder as a grid of one run.

def _read(url: str, key: str) -> bytes | None:
    """`url/key` (None if absent), through TensorStore's kvstore: a run folder may be in a bucket."""
    if is_url(url) and P.scheme_of(url) not in P.SCHEMES:
        return None
    P.check_readable("store", url)  # a bucket that does not answer: exit 2, not a hang
    return P.read_bytes(url, key)


def is_run_folder(url: str) -> bool:
    """A folder (local, or a file:// or gs:// URL) written by `scaling-grid train` (config.yaml, and no
    store.json)."""
    if not is_url(url) and not Path(url).expanduser().is_dir():
        return False
    return _read(url, "config.yaml") is not None and _read(url, "store.json") is None


def _run_name(url: str) -> str:
    return P.name_of(P.join(url))


def _live_holder(url: str) -> str | None:
    """'pid N on host' of the `train` that holds this folder's lock, if it is alive on this machine.
    (`train` empties the file when it ends; a killed one leaves its line, so the pid is checked. A run
    folder in a bucket has no lock: see trainer.loop.train_cli.)"""
    if P.is_remote(url):
        return None
    try:
        text = (Path(P.local(url)) / ".lock").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    parts = text.split()
    if len(parts) == 4 and parts[0] == "pid" and parts[1].isdigit() and parts[3] == host_id() \
            and pid_alive(int(parts[1])):
        return text
    return None


def _read_run_folder(url: str) -> tuple[Any, dict[str, Any], dict[str, np.ndarray] | None, list[str], bool]:
    """(RunConfig or None, status, metrics or None, problems, whether `train` again repairs them all).
    status: running (its `train` holds the folder), else result.json's state, else partial (metrics
    but no result: killed or crashed) or pending."""
    import yaml

    from scaling_grid.trainer import MetricsDamaged, from_dict, read_metrics
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
    holder = _live_holder(url)
    status: dict[str, Any] = {"state": "pending"}
    result_raw = None if holder is not None else _read(url, "result.json")
    if holder is not None:
        status = {"state": "running", "host": holder.split()[-1], "pid": int(holder.split()[1])}
    elif result_raw is not None:
        try:
            result = json.loads(result_raw)
            status = {"state": result["status"], "step": result.get("step"), "message": result.get("message", ""),
                      "eval_loss": result.get("eval_loss"), "vocab": result.get("vocab")}
        except (OSError, ValueError, TypeError, KeyError) as e:  # ValueError: JSON and UTF-8 errors
            problems.append(f"{p}/result.json is damaged ({type(e).__name__}: {str(e)[:100]})")
            status = {"state": "partial"}
    elif m is not None:
        status = {"state": "partial"}
    if status["state"] == "done" and not problems:
        more, fixable = check_final(m, cfg.steps, f"{p}/metrics")
        problems += more
    return cfg, status, m, problems, fixable


def _run_folder_row(url: str) -> dict[str, Any]:
    cfg, st, m, problems, fixable = _read_run_folder(url)
    row = {"cell": _run_name(url), "role": "run", "state": st["state"], "step": st.get("step"),
           "total": cfg.steps if cfg is not None else "?", "loss": None, "eval_loss": st.get("eval_loss"),
           "tokens_per_s": None, "age_s": None, "host": st.get("host", ""), "message": st.get("message", "")}
    if problems:
        row["state"] = "damaged"
        row["message"] = "; ".join(problems) + ("" if fixable else f"; {lost_run(url)}")
    _live_values(row, m)
    return row


def _run_folder_table(url: str) -> dict[str, np.ndarray]:
    from scaling_grid.grid import spec as S
    cfg, st, m, problems, fixable = _read_run_folder(url)
    if problems:
        raise StoreDamaged(f"run folder {url!r} is damaged; no table written:\n  " + "\n  ".join(problems)
                           + ("" if fixable else f"; {lost_run(url)}") + f"\n{repair_hint(url)}")
    name = _run_name(url)
    cell = S.Cell(id=name, name=name, config=cfg, role="separate", variant=cfg.model.variant, m=cfg.model.width,
                  l=cfg.model.depth, seed=cfg.train.seed, tokens=cfg.train.tokens)
    # vocab: as the run recorded it (exact for a trained bpe); before its end, what the tokenizer gives
    record = S.derived(cell, st.get("vocab") or S.expected_vocab(cfg))
    return _table([_export_rows(record, st["state"], m)])


def lost_run(url: str) -> str:
    return (f"these values are lost: delete {url}/metrics and {url}/checkpoints, then `scaling-grid train` again "
            "retrains the run")


def repair_hint(url: str) -> str:
    if is_run_folder(url):
        return ("run the same `scaling-grid train` command again: it rewrites damaged metric metadata and "
                "re-evaluates a missing final point from the last checkpoint")
    return (f"`scaling-grid run SPEC --store {url}` repairs what is repairable: it rewrites damaged records from "
            "the spec and re-evaluates missing final points from each cell's last checkpoint")


def lost(store: Store, cell_id: str) -> str:
    return (f"these values are lost: delete {store.root}/cells/{cell_id}/ and the cell's checkpoints, then "
            "`scaling-grid run SPEC` retrains it")


def write_table(table: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Any:
    """CSV (``.csv``) or parquet (``.parquet``); NaN is written as an empty CSV field. `path` may be a
    gs:// URL: the file is written locally, then copied there. Returns where it was written."""
    if P.is_remote(os.fspath(path)):
        import tempfile
        dest = P.path_of(path)
        with tempfile.TemporaryDirectory() as d:
            local = write_table(table, Path(d) / f"table{dest.suffix}")
            dest.write_bytes(local.read_bytes())
        return dest
    p = Path(P.local(path)) if P.is_url(os.fspath(path)) else Path(path)  # file:// is a local path
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
    tokens/s, heartbeat age, host. Running cells are read live from their metric arrays. A `train` run
    folder gives one row."""
    if is_run_folder(url):
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
        m, problems, fixable = store.checked_metrics(cfg["id"], int(cfg["total_steps"]), state)
        problems = ([st["problem"]] if "problem" in st else []) + problems
        if problems:
            row["state"] = "damaged"
            row["message"] = "; ".join(problems) + ("" if fixable else f"; {lost(store, cfg['id'])}")
        if state != "pending":
            _live_values(row, m)
        rows.append(row)
    return rows


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
        what = "run folder" if is_run_folder(url) else "store"
        lines.append(f"DAMAGED ({len(damaged)} cells; `export`, `fit` and `report` refuse this {what} until repaired):")
        lines += [f"  {r['cell']}: {r['message']}" for r in damaged]
        lines.append(repair_hint(url))
    return "\n".join(lines)


def _num(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else str(v)
    return fmt.format(v)
