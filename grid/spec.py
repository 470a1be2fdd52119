"""Grid specs: a YAML base run config plus axes and rules, expanded into cells with stable ids.

A spec (see configs/demo.yaml and docs/grid.md)::

    name: demo
    tokens_mode: separate          # separate | wsd
    base:                          # a run config (model / data / optim / train sections)
      model: {variant: gpt2, seq_len: 64}
      train: {batch_size: 16, steps_per_call: 10, log_every: 10, eval_every: 50}
    rules:                         # derived fields, each {rule: <kind>, ...}
      heads: {rule: head_dim, head_dim: 16}
      warmup: {rule: fraction, fraction: 0.05}
      lr: {rule: fixed}
      batch_size: {rule: fixed}
    axes:                          # full factorial over these
      width: [32, 64, 128]
      depth: [1, 2, 4]
      tokens: [100k, 200k, 400k]
      seed: [0]
    cells:                         # explicit extra cells (or the whole grid, without axes)
      - {width: 64, depth: 2, tokens: 400k, seed: 1}

Expansion gives :class:`Cell` objects. A cell's id is a readable name plus a short hash of everything
that changes its loss curve (its resolved run config, and for a wsd branch its trunk and start step),
so the same spec always gives the same ids and a changed config gives a new id: results of two
different configs never land in one cell.

Token modes:

- ``separate``: one run per (shape, budget), each with the base schedule (cosine by default) over
  its own length.
- ``wsd``: per shape, one *trunk* at constant lr (after warmup) up to the last branch point, and one
  *branch* per budget: a run with ``schedule: wsd`` over that budget, started from the trunk's
  checkpoint at the step where its linear decay begins (``init_from``). Warmup, peak lr, batch and
  data order are the trunk's, so a branch's lr (and tau = sum of lr) continues the trunk's exactly.
  The decay length of a branch is ``optim.decay_fraction`` of its steps, adjusted by at most
  ``train.steps_per_call - 1`` steps so that its start step is a multiple of steps_per_call (the
  trunk can only checkpoint at chunk boundaries); the resolved config records the exact value.
  A grown spec lists its earlier versions' budgets under ``grown_from``: each version's trunk keeps
  its id and the next version's trunk segment continues it from its last checkpoint (grid/grow.py).
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scaling_grid.trainer import (
    ConfigError,
    RunConfig,
    from_dict,
    parse_count,
    read_yaml_text,
)
from scaling_grid.trainer import expected_vocab as tokenizer_vocab

TOP_KEYS = ("name", "description", "tokens_mode", "base", "rules", "axes", "cells", "grown_from")
AXES = ("variant", "width", "depth", "tokens", "seed", "lr")
TOKEN_MODES = ("separate", "wsd")
# rule name -> kind -> required parameters
RULES: dict[str, dict[str, tuple[str, ...]]] = {
    "heads": {"fixed": (), "head_dim": ("head_dim",)},
    "warmup": {"fixed": (), "fraction": ("fraction",)},
    "lr": {"fixed": (), "width_scaled": ("base_width",)},
    "batch_size": {"fixed": (), "by_tokens": ("table",)},
}
RULE_OPTIONAL = {("lr", "width_scaled"): ("exponent",)}
ROLES = ("separate", "trunk", "branch")


@dataclass(frozen=True)
class GridSpec:
    name: str
    tokens_mode: str
    base: dict[str, Any]
    rules: dict[str, dict[str, Any]]
    axes: dict[str, list[Any]]
    cells: list[dict[str, Any]]
    text: str = ""               # the spec as given (stored verbatim in the store)
    source: str = "<spec>"
    folder: str = ""             # relative paths in the spec resolve here ("": the current directory)
    grown_from: tuple[tuple[int, ...], ...] = ()  # wsd: the token budgets of earlier versions, oldest first

    @property
    def hash(self) -> str:
        return hashlib.blake2b(self.text.encode(), digest_size=4).hexdigest()


@dataclass(frozen=True)
class Cell:
    id: str                      # name-hash, unique and stable
    name: str                    # readable: gpt2-w128-d4-t20M-s0 (+ -trunk / -wsd)
    config: RunConfig            # resolved run config (out_dir is set by the launcher)
    role: str                    # separate | trunk | branch
    variant: str
    m: int
    l: int
    seed: int
    tokens: int                  # the budget this cell stands for (trunk: its own length)
    parent: str | None = None    # branch: the trunk's cell id
    init_step: int | None = None  # branch: the trunk step it starts from
    keep_steps: tuple[int, ...] = ()  # trunk: its branch points, checkpointed and kept
    group: str = ""              # cells that must run on one host, in order (a trunk and its branches)

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def train_steps(self) -> int:
        """Optimizer updates this cell itself runs (a branch starts at init_step)."""
        return self.config.steps - (self.init_step or 0)

    @property
    def train_tokens(self) -> int:
        return self.train_steps * self.config.tokens_per_step


# ----------------------------------------------------------------------------------------- loading

def _err(where: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{where}={value!r}: {allowed}")


def load_spec(path: str | os.PathLike[str]) -> GridSpec:
    """Read and structurally check a YAML grid spec (cells are checked by :func:`expand`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid spec {str(p)!r} does not exist (give the path of a YAML file, e.g. configs/demo.yaml)")
    text = read_yaml_text(p, "grid spec")
    return parse_spec(text, source=str(p), default_name=p.stem, folder=os.path.abspath(p.parent))


def parse_spec(text: str, source: str = "<spec>", default_name: str = "grid", folder: str = "") -> GridSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"grid spec {source!r} is not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"grid spec {source!r}: expected a mapping with keys {list(TOP_KEYS)}, "
                          f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"grid spec: unknown top-level key(s) {unknown}; allowed: {list(TOP_KEYS)}")
    name = str(raw.get("name") or default_name)
    mode = raw.get("tokens_mode", "separate")
    if mode not in TOKEN_MODES:
        raise _err("tokens_mode", mode, f"allowed: {list(TOKEN_MODES)}")

    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise _err("base", base, "expected a run config mapping with sections model/data/optim/train")
    if "out_dir" in base:
        raise _err("base.out_dir", base["out_dir"], "cells write into the grid store; remove out_dir "
                   "(choose the store with --store)")
    try:
        from_dict(base)  # unknown sections / keys / types, named as base.<section>.<key>
    except ConfigError as e:
        raise ConfigError(f"base: {e}") from None
    base = copy.deepcopy(dict(base))

    rules = _parse_rules(raw.get("rules") or {})
    axes = _parse_axes(raw.get("axes"))
    cells = _parse_cells(raw.get("cells"))
    grown = _parse_grown_from(raw.get("grown_from"), mode)
    if not axes and not cells:
        raise ConfigError("grid spec: no cells: give axes (a full factorial) and/or an explicit cells list")
    for ax in ("width", "depth", "tokens"):
        if ax in axes or any(ax in c for c in cells):
            continue
        sect = "train" if ax == "tokens" else "model"
        if ax not in (base.get(sect) or {}):
            raise ConfigError(f"axes.{ax}: missing; give axes.{ax} (a list) or base.{sect}.{ax}")
    return GridSpec(name, mode, base, rules, axes, cells, text, source, folder, grown)


def placed_data(spec: GridSpec) -> dict[str, Any]:
    """The data fields of every cell whose paths the spec writes relative to its own folder
    (``base.data.paths`` and ``base.data.root``), resolved against it: {field: value} to replace in
    each cell's config. Absolute paths, ``~`` and URLs stay as written; a default (data.root
    ``data``) is not written in the spec and stays relative to the current directory. Cell ids hash
    the paths as written, so they do not depend on where the spec or the current directory is."""
    written = spec.base.get("data") or {}
    data = from_dict(spec.base).data
    out: dict[str, Any] = {}
    if "paths" in written:
        out["paths"] = tuple(_against(spec.folder, p) for p in data.paths)
    if "root" in written:
        out["root"] = _against(spec.folder, data.root)
    return out


def _against(folder: str, path: str) -> str:
    if not folder or "://" in path or os.path.isabs(os.path.expanduser(path)):
        return path
    return os.path.normpath(os.path.join(folder, path))


def _parse_rules(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise _err("rules", raw, f"expected a mapping of rules {list(RULES)}")
    out = {}
    for name, r in raw.items():
        if name not in RULES:
            raise ConfigError(f"rules.{name}: unknown rule; allowed: {list(RULES)}")
        kinds = RULES[name]
        if not isinstance(r, Mapping) or "rule" not in r:
            raise _err(f"rules.{name}", r, f"expected a mapping {{rule: <kind>, ...}} with kind one of {list(kinds)}")
        kind = r["rule"]
        if kind not in kinds:
            raise _err(f"rules.{name}.rule", kind, f"unknown rule; allowed: {list(kinds)}")
        allowed = {"rule", *kinds[kind], *RULE_OPTIONAL.get((name, kind), ())}
        extra = sorted(set(r) - allowed)
        if extra:
            raise ConfigError(f"rules.{name}: unknown key(s) {extra} for rule {kind!r}; allowed: {sorted(allowed)}")
        for k in kinds[kind]:
            if k not in r:
                raise ConfigError(f"rules.{name}: rule {kind!r} needs {k!r}")
        r = dict(r)
        if name == "heads" and kind == "head_dim":
            r["head_dim"] = _pos_int("rules.heads.head_dim", r["head_dim"])
        if name == "warmup" and kind == "fraction":
            f = _number("rules.warmup.fraction", r["fraction"])
            if not 0 <= f < 1:
                raise _err("rules.warmup.fraction", f, "must be in [0, 1): warmup steps = fraction * run steps")
            r["fraction"] = f
        if name == "lr" and kind == "width_scaled":
            r["base_width"] = _pos_int("rules.lr.base_width", r["base_width"])
            r["exponent"] = _number("rules.lr.exponent", r.get("exponent", 1.0))
        if name == "batch_size" and kind == "by_tokens":
            table = r["table"]
            if not isinstance(table, Mapping) or not table:
                raise _err("rules.batch_size.table", table,
                           "expected a mapping {token budget: batch size}, e.g. {20M: 32}")
            r["table"] = {parse_count(k, f"rules.batch_size.table key {k!r}"):
                          _pos_int(f"rules.batch_size.table[{k}]", v) for k, v in table.items()}
        out[name] = r
    return out


def _pos_int(where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _err(where, v, "must be a positive integer")
    return v


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool):
        raise _err(where, v, "expected a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise _err(where, v, "expected a number") from None
    if not math.isfinite(f):
        raise _err(where, v, "must be finite")
    return f


def _axis_value(axis: str, v: Any, where: str) -> Any:
    if axis == "variant":
        from scaling_grid.trainer import VARIANTS
        if not isinstance(v, str) or v not in VARIANTS:
            raise _err(where, v, f"unknown variant; allowed: {sorted(VARIANTS)}")
        return v
    if axis in ("width", "depth"):
        return _pos_int(where, v)
    if axis == "tokens":
        n = parse_count(v, where)
        if n <= 0:
            raise _err(where, v, "must be a positive token count such as 20M")
        return n
    if axis == "seed":
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _err(where, v, "must be a non-negative integer")
        return v
    if axis == "lr":
        f = _number(where, v)
        if f <= 0:
            raise _err(where, v, "must be a positive learning rate")
        return f
    raise AssertionError(axis)


def _parse_axes(raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _err("axes", raw, f"expected a mapping of axis -> list of values; axes: {list(AXES)}")
    out = {}
    for axis, values in raw.items():
        if axis not in AXES:
            raise ConfigError(f"axes.{axis}: unknown axis; allowed: {list(AXES)} (other fields go in base)")
        if not isinstance(values, list):
            raise _err(f"axes.{axis}", values, "expected a list of values, e.g. [64, 128]")
        if not values:
            raise ConfigError(f"axes.{axis}: empty list; give at least one value or remove the axis")
        parsed = [_axis_value(axis, v, f"axes.{axis}[{i}]") for i, v in enumerate(values)]
        dup = sorted({repr(v) for v in parsed if parsed.count(v) > 1})
        if dup:
            raise ConfigError(f"axes.{axis}: duplicate value(s) {', '.join(dup)}; each value must appear once")
        out[axis] = parsed
    return out


def _parse_cells(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err("cells", raw, "expected a list of mappings such as {width: 64, depth: 2, tokens: 20M}")
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, Mapping):
            raise _err(f"cells[{i}]", c, f"expected a mapping with keys from {list(AXES)}")
        bad = sorted(set(c) - set(AXES))
        if bad:
            raise ConfigError(f"cells[{i}]: unknown key(s) {bad}; allowed: {list(AXES)}")
        out.append({k: _axis_value(k, v, f"cells[{i}].{k}") for k, v in c.items()})
    return out


def _parse_grown_from(raw: Any, mode: str) -> tuple[tuple[int, ...], ...]:
    """grown_from: [[budgets], ...], the token budgets of the spec's earlier versions, oldest first: in
    wsd mode each version's trunk is kept (same id) and extended by the next (grid/grow.py)."""
    if raw is None:
        return ()
    if mode != "wsd":
        raise _err("grown_from", raw, "only a wsd grid needs it (its trunks are extended); in separate mode a new "
                   "budget is a new cell and every other id stays: remove grown_from")
    if not isinstance(raw, list) or not all(isinstance(v, list) and v for v in raw):
        raise _err("grown_from", raw, "expected a list of earlier token lists, oldest first, e.g. [[128k, 256k]]")
    return tuple(tuple(_axis_value("tokens", v, f"grown_from[{i}][{j}]") for j, v in enumerate(vs))
                 for i, vs in enumerate(raw))


# ------------------------------------------------------------------------------------ cell records

def expected_vocab(cfg: RunConfig) -> int:
    """Vocabulary size a data config will have (exact for bytes and gpt2; bpe: the requested size)."""
    return tokenizer_vocab(cfg.data.tokenizer, cfg.data.bpe_vocab)


def derived(cell: Cell, vocab: int) -> dict[str, Any]:
    """The fields the store keeps beside a cell's config (and the export carries per row)."""
    from scaling_grid.trainer import flops_per_token, make_arch, non_embedding_formula
    cfg = cell.config
    arch = make_arch(cfg.model, vocab)
    n = non_embedding_formula(arch)
    return {
        "id": cell.id, "name": cell.name, "role": cell.role, "parent": cell.parent,
        "init_step": cell.init_step, "keep_steps": list(cell.keep_steps), "group": cell.group,
        "variant": cell.variant, "m": cell.m, "l": cell.l, "heads": cfg.model.heads, "seed": cell.seed,
        "tokens": cell.tokens, "total_steps": cfg.steps, "tokens_per_step": cfg.tokens_per_step,
        "schedule": cfg.optim.schedule, "peak_lr": cfg.optim.lr, "warmup_steps": cfg.optim.warmup_steps,
        "decay_steps": cfg.optim.decay_steps(cfg.steps),
        "vocab": vocab, "N": n, "flops_per_token": flops_per_token(arch, n),
    }


def shard_of(cells: Sequence[Cell], n: int, cost: Mapping[str, float] | None = None) -> dict[str, int]:
    """Deterministic, balanced assignment of cell groups to n shards: groups sorted by cost (then id)
    go one by one to the least-loaded shard. Every host computes the same map from the same spec; a
    trunk and its branches share a shard. Returns cell id -> shard."""
    groups: dict[str, float] = {}
    for c in cells:
        w = (cost or {}).get(c.id, float(c.train_tokens * c.m * c.m * c.l + 1))
        groups[c.group] = groups.get(c.group, 0.0) + w
    load = [0.0] * n
    where: dict[str, int] = {}
    for g in sorted(groups, key=lambda g: (-groups[g], g)):
        i = min(range(n), key=lambda j: (load[j], j))
        where[g] = i
        load[i] += groups[g]
    return {c.id: where[c.group] for c in cells}


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    if text is None:
        return 0, 1
    parts = str(text).split("/")
    try:
        i, n = (int(x) for x in parts)
        ok = len(parts) == 2 and n >= 1 and 0 <= i < n
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--shard={text!r}: expected i/n with 0 <= i < n, e.g. 0/4 for the first of 4 hosts")
    return i, n
