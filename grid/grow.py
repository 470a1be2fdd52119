"""Growing a grid: a spec extended with larger token budgets (or new widths and depths) in which every
cell of the spec as it was keeps its id, so a launch of the grown spec skips what is done.

In wsd mode the earlier budgets are recorded under ``grown_from`` (see docs/grid.md, "Growing a
grid"): each earlier version's trunk keeps its id, and the grown version adds a trunk segment that
starts from its last checkpoint (same constant lr, the data stream continuing) with the new budgets'
branches on it. :func:`register_cells` records a grown spec's cells in the store before they train, so
that ``report`` pre-registers their predictions (grid/prereg.py) and scores them once they finish.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from scaling_grid.trainer import ConfigError, format_count, parse_count

from .expand import expand
from .spec import GridSpec, load_spec, parse_spec

GROWN_COMMENT = "# the token budgets of earlier versions (docs/grid.md, Growing a grid)"


def grow_spec(spec_text: str, add_tokens: Iterable[int | str] = (), add_widths: Iterable[int] = (),
              add_depths: Iterable[int] = ()) -> str:
    """The spec's text with values added to its axes (comments, order and the other lines kept) and, in
    wsd mode when budgets are added, the current budgets appended to ``grown_from``. Raises ConfigError
    when the spec cannot grow so (an axis the spec does not have, a value it has, a wsd budget not larger
    than every earlier one) or when a cell of the spec would change its id."""
    spec = parse_spec(spec_text)
    tokens = [parse_count(t, f"tokens {t!r}") for t in add_tokens]
    adds: dict[str, list[int]] = {"tokens": tokens, "width": [int(w) for w in add_widths],
                                  "depth": [int(d) for d in add_depths]}
    lines = spec_text.splitlines()
    budgets = sorted(set(spec.axes.get("tokens", [])) | {c["tokens"] for c in spec.cells if "tokens" in c})
    if tokens and spec.tokens_mode == "wsd":
        low = [t for t in tokens if budgets and t <= budgets[-1]]
        if low:
            raise ConfigError(f"tokens {[format_count(t) for t in low]}: a wsd grid grows only to budgets larger than "
                              f"its largest ({format_count(budgets[-1])}): a smaller budget branches inside the "
                              f"trained trunk, where no checkpoint was kept")
        lines = _add_grown_from(lines, budgets)
    for axis, values in adds.items():
        if values:
            lines = _extend_axis(lines, axis, values, spec)
    text = "\n".join(lines) + "\n"
    lost = missing_ids(spec_text, text)
    if lost:
        raise ConfigError(f"the grown spec would change the id of {len(lost)} cell(s) ({', '.join(lost[:3])}...); "
                          f"grow it by hand or start a new store")
    return text


def missing_ids(old_text: str, new_text: str) -> list[str]:
    """The cell ids of the spec ``old_text`` that the spec ``new_text`` does not have (none: it grew)."""
    new = {c.id for c in expand(parse_spec(new_text), check_paths=False)}
    return [c.id for c in expand(parse_spec(old_text), check_paths=False) if c.id not in new]


def register_cells(spec: str | GridSpec, store: str) -> list[str]:
    """Record a spec (a path, or a parsed spec) and every cell's config in the grid store ``store``
    without training anything, as ``run`` does first; returns the ids of the cells not done there. A
    ``report`` on the store then pre-registers their final losses. Raises ConfigError."""
    from scaling_grid import trainer as T

    from .cells import record_cells, records
    from .store import Store, check_writable
    spec = spec if isinstance(spec, GridSpec) else load_spec(spec)
    cells = expand(spec)
    check_writable(store)
    vocab: dict[Any, int] = {}
    for c in cells:  # the exact vocabulary (a bpe vocabulary may come out smaller than asked)
        if c.config.data not in vocab:
            vocab[c.config.data] = T.prepare(c.config.data).vocab_size
    st = Store(store)
    if st.exists():  # a spec that is not a growth of the store's own would register cells beside unrelated ones
        other = sorted(set(st.cell_ids()) - {c.id for c in cells})
        if other:
            more = ", ..." if len(other) > 3 else ""
            raise ConfigError(f"store {store!r} holds {len(other)} cell(s) this spec does not have "
                              f"({', '.join(other[:3])}{more}): it is not a growth of the spec the store ran")
    record_cells(st, spec, cells, records(cells, vocab), print)
    return [c.id for c in cells if st.status(c.id)[0].get("state") != "done"]


def latest_spec(store: str) -> str:
    """The text of the newest version of the spec a grid store holds: of its specs (specs/<hash>.yaml,
    one per version run or registered), the one whose cells include every cell the store records."""
    import tensorstore as ts

    from .store import Store
    st = Store(store)
    st.check_format()
    have = set(st.cell_ids())
    best: tuple[int, str] | None = None
    for k in sorted(st.kv.list(ts.KvStore.KeyRange(inclusive_min="specs/", exclusive_max="specs0")).result()):
        value = st.read_bytes(k.decode())[0]
        try:
            ids = {c.id for c in expand(parse_spec((value or b"").decode()), check_paths=False)}
        except (ConfigError, UnicodeDecodeError):  # a spec this version cannot read holds no current cells
            continue
        if have <= ids and (best is None or len(ids) > best[0]):
            best = (len(ids), (value or b"").decode())
    if best is None:
        raise ConfigError(f"store {store!r}: none of its specs (specs/*.yaml) gives every cell it holds; grow the "
                          f"spec it was run with by hand")
    return best[1]


# ------------------------------------------------------------------------------------ text editing

def _block(lines: Sequence[str], key: str) -> tuple[int, int] | None:
    """(the line of the top-level ``key:``, one past the last non-blank line of its block), or None."""
    head = next((i for i, s in enumerate(lines) if re.match(rf"{key}\s*:", s)), None)
    if head is None:
        return None
    end = head + 1
    for i in range(head + 1, len(lines)):
        s = lines[i]
        if s.strip() and not s[0].isspace() and not s.startswith("#"):
            break
        if s.strip() and s[0].isspace():
            end = i + 1
    return head, end


def _write_values(axis: str, values: Sequence[int]) -> list[str]:
    return [format_count(v) if axis == "tokens" else str(v) for v in values]


def _extend_axis(lines: list[str], axis: str, values: list[int], spec: GridSpec) -> list[str]:
    if axis not in spec.axes:
        raise ConfigError(f"axes.{axis}: this spec has no such axis to add to; add it by hand (its present value "
                          f"first)")
    dup = [v for v in values if v in spec.axes[axis]]
    if dup or len(set(values)) < len(values):
        raise ConfigError(f"axes.{axis}: {_write_values(axis, dup or values)} given twice")
    where = _block(lines, "axes")
    assert where is not None  # the spec has axes
    head, end = where
    if lines[head].split(":", 1)[1].split("#")[0].strip():
        raise ConfigError("axes: written on one line; write one axis a line to grow the spec")
    new = _write_values(axis, values)
    for i in range(head + 1, end):
        m = re.match(rf"(\s+){axis}\s*:\s*(.*)$", lines[i])
        if not m:
            continue
        rest = m.group(2)
        if rest.startswith("["):  # a flow list: the values go before its closing bracket
            close = rest.index("]")
            lines = list(lines)
            lines[i] = lines[i][:len(lines[i]) - len(rest) + close] + ", " + ", ".join(new) + rest[close:]
            return lines
        items = [j for j in range(i + 1, end) if re.match(r"\s+-\s", lines[j])]  # a block list
        if not items:
            break
        indent = re.match(r"(\s+-\s*)", lines[items[-1]])
        assert indent is not None
        return lines[:items[-1] + 1] + [indent.group(1) + v for v in new] + lines[items[-1] + 1:]
    raise ConfigError(f"axes.{axis}: not written as a list this function can extend; add the values by hand")


def _add_grown_from(lines: list[str], budgets: list[int]) -> list[str]:
    """``grown_from`` with the current budgets appended (after the axes block when it is new)."""
    item = "[" + ", ".join(_write_values("tokens", budgets)) + "]"
    where = _block(lines, "grown_from")
    if where is None:
        at = (_block(lines, "axes") or (0, len(lines)))[1]
        return lines[:at] + [f"grown_from:                      {GROWN_COMMENT}", f"  - {item}"] + lines[at:]
    head, end = where
    value = lines[head].split(":", 1)[1].split("#")[0].strip()
    if value:  # written on one line: rewritten as a block
        earlier = yaml.safe_load(value) or []
        return (lines[:head] + [f"grown_from:                      {GROWN_COMMENT}"]
                + [f"  - [{', '.join(str(v) for v in vs)}]" for vs in earlier] + [f"  - {item}"] + lines[head + 1:])
    return lines[:end] + [f"  - {item}"] + lines[end:]
