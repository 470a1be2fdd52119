"""A run config from a YAML file with command-line overrides, checked (`load`); and a config back to
YAML with every field's meaning in a comment (`describe`, what `scaling-grid config` prints)."""
from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from .checks import validate
from .config import SECTIONS, ConfigError, RunConfig, from_dict
from .registry import VARIANTS


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) to nested plain data."""
    d = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. model.width=256")
        parsed = yaml.safe_load(value) if value else ""
        parts = key.split(".")
        if len(parts) == 1:
            d[key] = parsed
        elif len(parts) == 2:
            d.setdefault(parts[0], {})
            if not isinstance(d[parts[0]], dict):
                raise ConfigError(f"override {item!r}: {parts[0]} is not a section")
            d[parts[0]][parts[1]] = parsed
        else:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. model.width=256")
    return d


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file, or a ConfigError naming it if it is not UTF-8 (a binary file, or
    Latin-1 text) or cannot be read. ``what`` names the file's role, e.g. "config file"."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}: "
                          f"{e.object[e.start:e.start + 1]!r}): expected a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from None


def load(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML run config (or the defaults when path is None), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            raw = yaml.safe_load(read_yaml_text(p, "config file"))
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if raw is None:  # empty, or only comments: the defaults
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config file {str(p)!r}: expected a mapping of sections "
                              f"{sorted(SECTIONS)} and out_dir, got a {type(raw).__name__}")
    cfg = from_dict(apply_overrides(raw, overrides))
    validate(cfg)
    return cfg



def _yaml_value(v: Any) -> str:
    """One value as a single-line YAML scalar or flow list."""
    if isinstance(v, str) and not v.isprintable():  # newlines, tabs: a JSON string is valid YAML
        return json.dumps(v)
    text = yaml.safe_dump(list(v) if isinstance(v, tuple) else v, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...")


def describe(cfg: RunConfig | None = None, width: int = 100) -> str:
    """Every field of a run config as YAML with its meaning in a comment: the defaults, or with
    ``cfg`` that config's values (a value that is not the default names the default). The text
    loads back with ``yaml.safe_load`` to every field's value."""
    allowed = {"model.variant": f"; one of {', '.join(VARIANTS)}"}
    rows: list[tuple[str, str]] = []  # (yaml line, comment)

    def add(prefix: str, f: dataclasses.Field[Any], value: Any) -> None:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[operator]
        note = f.metadata["help"] + allowed.get(prefix + f.name, "")
        if value != default:
            note += f" (default:\xa0{_yaml_value(default)})"  # no line break inside "(default: x)"
        rows.append((f"{'  ' if prefix else ''}{f.name}: {_yaml_value(value)}", note))

    cfg = RunConfig() if cfg is None else cfg
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            rows.append((f"{f.name}:", ""))
            for g in fields(SECTIONS[f.name]):
                add(f"{f.name}.", g, getattr(getattr(cfg, f.name), g.name))
        else:
            add("", f, getattr(cfg, f.name))
    col = min(max(len(line) for line, _ in rows), 34) + 2
    out = []
    for line, note in rows:
        if not note:
            out.append(line)
            continue
        wrapped = [w.replace("\xa0", " ") for w in textwrap.wrap(note, max(width - col - 2, 30))] or [""]
        out.append(f"{line.ljust(col)}# {wrapped[0]}" if len(line) < col else f"{line}  # {wrapped[0]}")
        out += [f"{'':{col}}# {w}" for w in wrapped[1:]]
    return "\n".join(out) + "\n"
