"""Clear a run or a grid for an accelerator from any machine: every distinct compiled shape (packs
included) compiled for the target's real compiler (trainer/target.py), one row per shape.

Used by `scaling-grid compile` and by `scaling-grid run --dry-run --target`.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Hashable, Sequence
from typing import Any

from scaling_grid.trainer import (
    RunConfig,
    ShapeReport,
    Target,
    approx_count,
    compile_shape,
    pack_key,
    path_of,
    shape_key,
)

from . import expand as E
from . import spec as S

GiB = 2**30


def distinct_shapes(configs: Sequence[RunConfig]) -> list[tuple[RunConfig, int, int, int]]:
    """(config, vocab, lr-table length, pack) for each distinct compiled train step of these runs, in
    first-seen order. A run with train.pack K shares its step with the K-1 runs of its pack key that
    follow it (as the launcher packs them); the table is the longest run of the shape."""
    groups: dict[Hashable, list[RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(pack_key(cfg) if cfg.train.pack > 1 else ("one", id(cfg)), []).append(cfg)
    out: dict[Hashable, tuple[RunConfig, int, int, int]] = {}
    for members in groups.values():
        cfg = members[0]
        vocab = S.expected_vocab(cfg)
        pack = min(cfg.train.pack, len(members)) if cfg.train.pack > 1 else 0
        t = cfg.train
        key = (shape_key(cfg, vocab), t.steps_per_call, t.batch_size, cfg.model.seq_len, pack)
        longest = max(c.steps for c in members)
        if key in out:
            longest = max(longest, out[key][2])
        out[key] = (out[key][0] if key in out else cfg, vocab, longest, pack)
    return list(out.values())


def check(configs: Sequence[RunConfig], target: Target, progress: Any = None,
          count_flops: bool = True) -> list[ShapeReport]:
    """Compile every distinct shape of ``configs`` for ``target``; ``progress(i, n, name)`` before each;
    ``count_flops``: XLA's FLOPs per token too (two more, smaller compiles per shape)."""
    from scaling_grid.trainer import shape_name
    shapes = distinct_shapes(configs)
    devices = target.devices()
    reports = []
    for i, (cfg, vocab, table_len, pack) in enumerate(shapes):
        if progress:
            progress(i, len(shapes), shape_name(cfg, pack))
        reports.append(compile_shape(cfg, vocab, target, table_len, pack, devices=devices, count_flops=count_flops))
    return reports


def _bytes(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2**20:.1f} MiB"


def _count(x: float | None) -> str:
    return "-" if x is None else approx_count(x)


def table(reports: Sequence[ShapeReport]) -> str:
    """One row per shape (within 100 columns), then each shape's collectives and any compiler refusal."""
    head = ("#", "shape", "mem/device", "of HBM", "fits", "FLOP/tok xla", "formula", "attention")
    rows = []
    for i, r in enumerate(reports, 1):
        calls = {"splash": "splash", "cudnn_fmha": "cudnn fmha"}
        found = [f"{calls[k]} x{n}" for k, n in r.attention_kernel_calls.items() if n]
        attn = ", ".join(found) if found else ("dots" if r.bytes_per_device is not None else "-")
        rows.append((str(i), r.shape, _bytes(r.bytes_per_device), _bytes(r.hbm_bytes_per_device),
                     "yes" if r.fits else "NO", _count(r.flops_per_token_xla), _count(r.flops_per_token_formula),
                     attn))
    widths = [max(len(h), *(len(x[j]) for x in rows)) for j, h in enumerate(head)]
    right = {2, 3, 5, 6}
    def line(x: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if j in right else v.ljust(w) for j, (v, w) in enumerate(zip(x, widths))).rstrip()
    lines = [line(head), *(line(x) for x in rows)]
    for i, r in enumerate(reports, 1):
        if r.error:
            lines.append(f"{i}: does not fit: {r.error}")
            continue
        coll = "; ".join(f"{op} " + ", ".join(f"{n} {t}" for t, n in types.items())
                         for op, types in r.collectives.items()) or "none"
        lines.append(f"{i}: {r.devices} devices, mesh {_mesh(r.mesh)}; arguments and outputs {_bytes(_io(r))}, "
                     f"temporaries {_bytes(r.temp_bytes)}; collectives: {coll}")
    return "\n".join(_wrap(x) for x in lines)


def _io(r: ShapeReport) -> int | None:
    if r.argument_bytes is None or r.output_bytes is None or r.alias_bytes is None:
        return None
    return r.argument_bytes + r.output_bytes - r.alias_bytes


def _mesh(m: dict[str, int]) -> str:
    return " x ".join(f"{a} {n}" for a, n in m.items())


def _wrap(line: str, width: int = 100) -> str:
    import textwrap
    if len(line) <= width:
        return line
    return "\n".join(textwrap.wrap(line, width, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False))


def write_json(reports: Sequence[ShapeReport], where: str) -> None:
    path = path_of(where)
    path.write_text(json.dumps([dataclasses.asdict(r) for r in reports], indent=1) + "\n")


def configs_of(path: str | None, overrides: Sequence[str]) -> tuple[list[RunConfig], str]:
    """The run configs a file stands for: a grid spec (a mapping with `axes`) gives its cells, anything
    else is a run config with overrides. Returns (configs, what it was)."""
    from scaling_grid.trainer import ConfigError, load, read_yaml_text

    if path is not None and "=" in path:  # only overrides
        overrides, path = [path, *overrides], None
    if path is not None:
        from pathlib import Path

        import yaml
        try:
            doc = yaml.safe_load(read_yaml_text(Path(path), "config file"))
        except yaml.YAMLError:
            doc = None  # `load` names the error
        if isinstance(doc, dict) and "axes" in doc:
            if overrides:
                raise ConfigError("key=value overrides apply to a run config; edit the spec's base for a grid")
            cells = E.expand(S.load_spec(path), check_paths=False)
            return [c.config for c in cells], f"grid spec, {len(cells)} cells"
    return [load(path, list(overrides))], "run config"
