"""A grid spec expanded into cells with stable ids (the token modes are described in `spec`).

A cell's id is a readable name plus a short hash of everything that changes its loss curve or what is
recorded (`trainer.identity` of its resolved run config; for a wsd branch also its trunk and start
step), so the same spec always gives the same ids and a changed config gives a new id. The ids hash
the data paths as the spec writes them; the cells' configs carry them resolved against the spec's
folder (`spec.placed_data`)."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from scaling_grid.trainer import (
    ConfigError,
    RunConfig,
    check_data_paths,
    format_count,
    from_dict,
    identity,
)

from .spec import AXES, Cell, GridSpec, placed_data


def _points(spec: GridSpec) -> list[tuple[str, dict[str, Any]]]:
    """(where, point) for every factorial and explicit cell; a point maps axes to values."""
    pts = []
    if spec.axes:
        names = [a for a in AXES if a in spec.axes]
        for combo in itertools.product(*(spec.axes[a] for a in names)):
            pts.append(("axes", dict(zip(names, combo))))
    for i, c in enumerate(spec.cells):
        p = {}
        for a in AXES:
            if a in c:
                p[a] = c[a]
            elif a in spec.axes:
                if len(spec.axes[a]) > 1:
                    raise ConfigError(f"cells[{i}].{a}: missing, and axes.{a} has several values "
                                      f"{spec.axes[a]}; give {a} for this cell")
                p[a] = spec.axes[a][0]
        pts.append((f"cells[{i}]", p))
    return pts


def _resolve(spec: GridSpec, where: str, p: Mapping[str, Any], *, schedule: str | None = None,
             tokens: int | None = None, warmup_steps: int | None = None,
             decay_fraction: float | None = None) -> dict[str, Any]:
    """The run config (as plain data) of one point; rules applied."""
    d = copy.deepcopy(spec.base)
    for s in ("model", "data", "optim", "train"):
        d[s] = dict(d.get(s) or {})
    m, t, o = d["model"], d["train"], d["optim"]
    for axis, sect, key in (("variant", "model", "variant"), ("width", "model", "width"),
                            ("depth", "model", "depth"), ("tokens", "train", "tokens")):
        if axis in p:
            d[sect][key] = p[axis]
    if "seed" in p:  # a seed is a whole replicate: init and data order
        t["seed"] = t["data_seed"] = p["seed"]
    if "lr" in p:
        o["lr"] = p["lr"]
    if tokens is not None:
        t["tokens"] = tokens
    cfg0 = from_dict(d)  # typed defaults for what the rules read
    width, budget = cfg0.model.width, cfg0.train.tokens

    r = spec.rules.get("heads")
    if r and r["rule"] == "head_dim":
        if "heads" in (spec.base.get("model") or {}):
            raise ConfigError("base.model.heads and rules.heads (head_dim) are both set; remove one")
        if width % r["head_dim"]:
            raise ConfigError(f"{where}: width={width} is not divisible by rules.heads.head_dim="
                              f"{r['head_dim']} (heads = width / head_dim); use widths that are multiples "
                              f"of {r['head_dim']} or change head_dim")
        m["heads"] = width // r["head_dim"]
    r = spec.rules.get("lr")
    if r and r["rule"] == "width_scaled":
        o["lr"] = cfg0.optim.lr * (r["base_width"] / width) ** r["exponent"]
    r = spec.rules.get("batch_size")
    if r and r["rule"] == "by_tokens":
        key = p.get("tokens", budget)
        if key not in r["table"]:
            raise ConfigError(f"{where}: rules.batch_size.table has no entry for tokens={format_count(key)}; "
                              f"it has {[format_count(k) for k in r['table']]}")
        t["batch_size"] = r["table"][key]
    if schedule is not None:
        o["schedule"] = schedule
    if decay_fraction is not None:
        o["decay_fraction"] = decay_fraction
    if warmup_steps is not None:
        o["warmup_steps"] = warmup_steps
    else:
        r = spec.rules.get("warmup")
        if r and r["rule"] == "fraction":
            cfg1 = from_dict(d)
            o["warmup_steps"] = int(round(r["fraction"] * cfg1.steps))
    return d


def _short_hash(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=3).hexdigest()


def _name(p: Mapping[str, Any], cfg: RunConfig, with_lr: bool, tokens: int | None, suffix: str = "") -> str:
    parts = [cfg.model.variant, f"w{cfg.model.width}", f"d{cfg.model.depth}"]
    if tokens is not None:
        parts.append(f"t{format_count(tokens)}")
    parts.append(f"s{cfg.train.seed}")
    if with_lr:
        lr = f"{p.get('lr', cfg.optim.lr):g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
        parts.append(f"lr{lr}")
    return "-".join(parts) + suffix


def _check_cell(where: str, cfg: RunConfig) -> None:
    if cfg.steps < 1:
        raise ConfigError(f"{where}: tokens={format_count(cfg.train.tokens)} is below one batch "
                          f"(batch_size {cfg.train.batch_size} x seq_len {cfg.model.seq_len} = "
                          f"{cfg.tokens_per_step} tokens per step); raise the budget or shrink the batch")
    try:
        from scaling_grid import trainer as T
        T.validate(cfg, check_paths=False)  # data files and root: once per spec, in expand
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def expand(spec: GridSpec, check_paths: bool = True, lenient_wsd: bool = False) -> list[Cell]:
    """All cells of a spec, validated, in run order (a trunk before its branches). Raises ConfigError.

    lenient_wsd: a wsd shape with a single budget becomes a separate run instead of an error (used
    only to report what the wsd mode would cost)."""
    placed = placed_data(spec)  # axes and rules never change data: the same paths for every cell
    if check_paths:  # one check for all cells, before any compute
        try:
            check_data_paths(replace(from_dict(spec.base).data, **placed))
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
    pts = _points(spec)
    with_lr = "lr" in spec.axes or any("lr" in c for c in spec.cells)
    cells: list[Cell] = []
    if spec.tokens_mode == "separate":
        for where, p in pts:
            wh = _where(where, p)
            cfg = from_dict(_resolve(spec, wh, p))
            _check_cell(wh, cfg)
            name = _name(p, cfg, with_lr, cfg.train.tokens)
            cid = f"{name}-{_short_hash({'config': identity(cfg), 'role': 'separate'})}"
            cells.append(Cell(cid, name, cfg, "separate", cfg.model.variant, cfg.model.width,
                              cfg.model.depth, cfg.train.seed, cfg.train.tokens, group=cid))
    else:
        cells = _expand_wsd(spec, pts, with_lr, check_paths, lenient_wsd)
    seen: dict[str, str] = {}
    for c in cells:
        if c.id in seen:
            raise ConfigError(f"duplicate cell {c.name}: the same cell is given twice (check cells: against "
                              f"axes:, or duplicate entries in cells:)")
        seen[c.id] = c.name
    return [replace(c, config=replace(c.config, data=replace(
        c.config.data, **placed))) for c in cells] if placed else cells


def _where(where: str, p: Mapping[str, Any]) -> str:
    vals = ", ".join(f"{k}={format_count(v) if k == 'tokens' else v}" for k, v in p.items())
    return f"{where} ({vals})"


def _expand_wsd(spec: GridSpec, pts: list[tuple[str, dict[str, Any]]], with_lr: bool,
                check_paths: bool, lenient: bool = False) -> list[Cell]:
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for where, p in pts:
        key = json.dumps({k: v for k, v in p.items() if k != "tokens"}, sort_keys=True)
        groups.setdefault(key, []).append((where, p))
    cells: list[Cell] = []
    for members in groups.values():
        probe = [from_dict(_resolve(spec, _where(w, p), p)) for w, p in members]
        if len(members) < 2 and lenient:
            cells += expand(replace(spec, tokens_mode="separate", axes={}, cells=[members[0][1]], grown_from=()),
                            check_paths)
            continue
        cells += _wsd_shape(spec, members, probe, with_lr)
    return cells


def _wsd_shape(spec: GridSpec, members: list[tuple[str, dict[str, Any]]], probe: list[RunConfig],
               with_lr: bool) -> list[Cell]:
    """One shape's trunk (one segment per stage of the spec's growth, each continuing the last) and its
    branches, validated."""
    wh0 = _where(*members[0])
    budgets = [c.train.tokens for c in probe]
    dup = sorted({b for b in budgets if budgets.count(b) > 1})
    if dup:
        raise ConfigError(f"{wh0}: token budget(s) {[format_count(b) for b in dup]} given twice for one shape")
    if len(budgets) < 2:
        raise ConfigError(f"{wh0}: tokens_mode=wsd needs at least 2 token budgets per shape (got "
                          f"{[format_count(b) for b in budgets]}): one trunk serves several budgets; "
                          f"add budgets or use tokens_mode: separate")
    tps = {c.tokens_per_step for c in probe}
    if len(tps) > 1:
        raise ConfigError(f"{wh0}: tokens_mode=wsd needs one batch size per shape (branches continue "
                          f"the trunk), but rules.batch_size gives {sorted(tps)} tokens per step")
    order = sorted(range(len(members)), key=lambda i: budgets[i])
    members, probe = [members[i] for i in order], [probe[i] for i in order]
    stages = _stages([c.train.tokens for c in probe], spec.grown_from)
    first = probe[stages[0][-1]]  # the warmup (rule fraction) is of the first stage's largest budget
    d_frac, k, warm = first.optim.decay_fraction, first.train.steps_per_call, first.optim.warmup_steps
    if not 0 < d_frac < 1:
        raise ConfigError(f"base.optim.decay_fraction={d_frac}: tokens_mode=wsd needs a decay fraction "
                          f"in (0, 1) (the share of each branch spent in its linear cooldown), e.g. 0.2")
    if (spec.base.get("optim") or {}).get("schedule", "wsd") != "wsd":
        raise ConfigError(f"base.optim.schedule={first.optim.schedule!r}: tokens_mode=wsd sets the schedules "
                          f"itself (trunk constant, branches wsd); remove it or set it to wsd")
    plan = []
    for (w, p), c in zip(members, probe):
        wh = _where(w, p)
        S = c.steps
        if S < 1:
            _check_cell(wh, c)
        bp = (S - max(1, round(d_frac * S))) // k * k
        if bp < max(warm, 1):
            raise ConfigError(f"{wh}: its cooldown would start at step {bp}, before the end of warmup "
                              f"({warm} steps) or at step 0 (run of {S} steps, decay_fraction {d_frac}, "
                              f"steps_per_call {k}); raise this budget, lower optim.decay_fraction or the "
                              f"warmup")
        plan.append((wh, p, S, bp))
    cells: list[Cell] = []
    parent: Cell | None = None
    for j, stage in enumerate(stages):
        trunk = _trunk(spec, wh0, [plan[i] for i in stage], parent, j, warm, first.tokens_per_step, with_lr,
                       cells[0].id if cells else None)
        cells.append(trunk)
        for wh, p, S, bp in (plan[i] for i in stage):
            frac = (S - bp) / S
            bcfg = from_dict(_resolve(spec, wh, p, schedule="wsd", warmup_steps=warm, decay_fraction=frac))
            assert bcfg.optim.decay_steps(S) == S - bp
            _check_cell(wh, bcfg)
            bname = _name(p, bcfg, with_lr, bcfg.train.tokens, "-wsd")
            bkey = {'config': identity(bcfg), 'role': 'branch', 'parent': trunk.id, 'init_step': bp}
            cells.append(Cell(f"{bname}-{_short_hash(bkey)}", bname, bcfg, "branch", bcfg.model.variant,
                              bcfg.model.width, bcfg.model.depth, bcfg.train.seed, bcfg.train.tokens, parent=trunk.id,
                              init_step=bp, group=trunk.group))
        parent = trunk
    return cells


def _stages(budgets: list[int], grown_from: tuple[tuple[int, ...], ...]) -> list[list[int]]:
    """A shape's budgets (sorted) split by the version of the spec that added them, as index lists:
    a budget belongs to the first earlier token list holding it, else to this version. A first stage
    of one budget is merged into the next (such a shape could not run before: wsd needs 2 budgets)."""
    where = [next((j for j, vs in enumerate(grown_from) if b in vs), len(grown_from)) for b in budgets]
    stages = [[i for i in range(len(budgets)) if where[i] == j] for j in range(len(grown_from) + 1)]
    stages = [s for s in stages if s]
    while len(stages) > 1 and len(stages[0]) < 2:
        stages[:2] = [stages[0] + stages[1]]
    return stages


def _trunk(spec: GridSpec, wh0: str, plan: list[tuple[str, dict[str, Any], int, int]], parent: Cell | None,
           stage: int, warm: int, tokens_per_step: int, with_lr: bool, group: str | None) -> Cell:
    """The trunk segment (constant lr after warmup) up to the last branch point of one stage's budgets;
    a later stage's segment starts from the previous segment's last checkpoint (``parent``), the same
    run continued: its steps, lr and data order go on where the previous one stopped."""
    wh_big, p_big, _, _ = plan[-1]
    trunk_steps = max(bp for *_, bp in plan)
    start = parent.steps if parent is not None else 0
    low = [(wh, bp) for wh, _, _, bp in plan if bp <= start]
    if low:
        raise ConfigError(f"{low[0][0]}: added to a grown wsd grid, but its cooldown would start at step {low[0][1]}, "
                          f"within the earlier trunk (steps 0-{start}): a grown wsd grid adds only budgets whose "
                          f"cooldown starts after the earlier trunk ends; list it in grown_from's first stage only "
                          f"if it trained with that trunk")
    cfg = from_dict(_resolve(spec, wh0, p_big, schedule="constant", tokens=trunk_steps * tokens_per_step,
                             warmup_steps=warm))
    _check_cell(f"{wh0} trunk", cfg)
    keep = tuple(sorted({bp for *_, bp in plan}))
    key: dict[str, Any] = {'config': identity(cfg), 'role': 'trunk', 'keep': list(keep)}
    suffix = "-trunk"
    if parent is not None:  # a continuation: its own id; the first segment's id is the ungrown trunk's
        key.update(parent=parent.id, init_step=start)
        suffix = f"-trunk{stage + 1}"
    name = _name(p_big, cfg, with_lr, None, suffix)
    tid = f"{name}-{_short_hash(key)}"
    return Cell(tid, name, cfg, "trunk", cfg.model.variant, cfg.model.width, cfg.model.depth, cfg.train.seed,
                cfg.train.tokens, parent=None if parent is None else parent.id, init_step=None if parent is None
                else start, keep_steps=keep, group=group or tid)


def with_mode(spec: GridSpec, mode: str) -> GridSpec:
    """The same spec in another token mode (to report what each mode costs)."""
    return replace(spec, tokens_mode=mode)


