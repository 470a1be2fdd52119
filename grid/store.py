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

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError

FORMAT, VERSION = "scaling-grid-store", 1
# damaged: status only; partial: a `train` folder with no result (killed, or still being written)
STATES = ("pending", "running", "partial", "preempted", "done", "diverged", "failed", "damaged")
FINAL_STATES = ("done", "diverged")   # never run again (a changed config is a new cell)
_NO_VALUE = b"\x02"  # TensorStore's storage generation of a missing key: write-if-absent


class StoreDamaged(ConfigError):
    """A record of the store that exists but cannot be read; the message names it and the way out."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_url(url: str) -> bool:
    return "://" in str(url)


def check_writable(url: str, name: str = "--store") -> None:
    """A store (or checkpoint root, `name`) must be creatable: a local folder's nearest existing ancestor
    is a writable folder; a bucket answers a probe write (trainer.check_writable)."""
    T.check_writable(name, url)
    if T.is_remote(url):
        return
    p = Path(T.local(url))
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
        T.check_readable("store", self.url)  # an unsupported scheme, or a bucket that does not answer: exit 2
        if is_url(self.url):
            spec: Any = self.url if self.url.endswith("/") else self.url + "/"
        else:  # normalised: TensorStore refuses a path with '..' in it (--store ../stores/x)
            spec = {"driver": "file", "path": os.path.abspath(os.path.expanduser(self.url)) + "/"}
        self.kv = T.bucket_result(ts.KvStore.open(spec), self.url)  # bounded in a bucket: trainer/bucket.py
        # What TensorStoreSink / read_metrics get: a local absolute path or the URL as given.
        self.root = self.url if is_url(self.url) else os.path.abspath(os.path.expanduser(self.url))

    # ---- raw objects
    def read_bytes(self, key: str) -> tuple[bytes | None, bytes]:
        r = T.bucket_result(self.kv.read(key), self.url)
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
        gen = T.bucket_result(self.kv.write(key, value, if_equal=if_equal), self.url)
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
        keys = T.bucket_result(self.kv.list(ts.KvStore.KeyRange(inclusive_min="cells/", exclusive_max="cells0")),
                               self.url)
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

    def checked_metrics(self, cell_id: str, total_steps: int, state: str, expected: T.Expected | None = None
                        ) -> tuple[dict[str, np.ndarray] | None, list[str], bool]:
        """(the cell's metrics or None, what is wrong with them, whether `run` can repair all of it).
        A done cell must have its final train and eval points: every fit of its budget needs them; with
        `expected` (its schedule: grid/damage.py), every point it records, in every field."""
        from scaling_grid.trainer import MetricsDamaged
        try:
            m = self.read_metrics(cell_id, total_steps)
        except MetricsDamaged as e:
            return None, [str(e)], e.in_metadata
        if state != "done":
            return m, [], True
        return (m, *T.check_final(m, total_steps, f"{self.root}/{self.metrics_prefix(cell_id)}", expected))

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
        """A cell's checkpoint folder (trainer.path_of: local, or in a bucket): <root>/<cell>, by
        default <store>/checkpoints/<cell>."""
        if root is not None:
            T.check_scheme("--checkpoints", root)
            return T.path_of(root) / cell_id
        return T.path_of(self.url) / "checkpoints" / cell_id


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(type(o).__name__)


def repair_hint(url: str) -> str:
    """How to repair a damaged store or `train` run folder."""
    if T.is_run_folder(url):
        return ("run the same `scaling-grid train` command again: it rewrites damaged metric metadata and "
                "re-evaluates a missing final point from the last checkpoint")
    return (f"`scaling-grid run SPEC --store {url}` repairs what is repairable: it rewrites damaged records from "
            "the spec and recomputes lost points by running their cell again from a checkpoint before them")


def lost(store: Store, cell_id: str) -> str:
    """The way out for a cell whose recorded values are lost."""
    return (f"these values are lost: delete {store.root}/cells/{cell_id}/ and the cell's checkpoints, then "
            "`scaling-grid run SPEC` retrains it")
