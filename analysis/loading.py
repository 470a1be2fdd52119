"""Reading a table from a CSV/TSV or parquet file, with a column mapping (``--map``)."""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .columns import SCHEMA
from .errors import AnalysisError


def parse_mapping(text: str | None) -> dict[str, str]:
    """Parse ``"N=model_size,D=tokens,loss=loss"`` into ``{"N": "model_size", ...}`` (schema name ->
    file column)."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise AnalysisError(f"column mapping {item!r}: expected name=column, e.g. N=model_size")
        if key not in SCHEMA:
            raise AnalysisError(f"column mapping {item!r}: {key!r} is not a column of the analysis; "
                                f"allowed: {', '.join(SCHEMA)}")
        if key in out:
            raise AnalysisError(f"column mapping: {key!r} is mapped twice")
        out[key] = value
    return out


def _column(values: list[str]) -> np.ndarray:
    vals = [v.strip() for v in values]
    low = {v.lower() for v in vals if v}
    if low and low <= {"true", "false"}:
        return np.array([v.lower() == "true" for v in vals])
    try:
        return np.array([float(v) if v else np.nan for v in vals], dtype=float)
    except ValueError:
        return np.array(vals, dtype=str)


def _read_text_rows(p: Path, delimiter: str) -> list[list[str]]:
    """The rows of a delimited UTF-8 text file (a byte-order mark is allowed). Another encoding or a
    binary file is an AnalysisError naming the file, not a UnicodeDecodeError traceback."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnalysisError(f"table file {str(p)!r} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at "
                            f"offset {e.start} cannot be decoded ({e.reason}); a binary file, or text in "
                            f"another encoding (re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8)") from None
    if "\x00" in text:  # csv accepts NUL bytes since Python 3.11: they would end up inside values
        raise AnalysisError(f"table file {str(p)!r} contains NUL bytes at offset {text.index(chr(0))}: a "
                            f"binary file, not UTF-8 CSV text")
    try:
        return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as e:
        raise AnalysisError(f"table file {str(p)!r} is not valid CSV text: {e}") from None


def load_table(path: str, mapping: Mapping[str, str] | str | None = None) -> dict[str, np.ndarray]:
    """Read a CSV or parquet file into a table (dict of 1-D numpy arrays).

    ``mapping`` maps schema names to the file's column names (``{"N": "model_size"}`` or the string
    ``"N=model_size,D=tokens"``); mapped columns are added under their schema name, the others are
    kept as they are. Numeric columns become float64 (empty cells NaN), true/false columns bool,
    the rest str."""
    p = Path(path)
    if isinstance(mapping, str):
        mapping = parse_mapping(mapping)
    mapping = dict(mapping or {})
    if not p.is_file():
        raise AnalysisError(f"table file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        rows = _read_text_rows(p, "\t" if suffix == ".tsv" else ",")
        if not rows:
            raise AnalysisError(f"table file {str(p)!r} is empty")
        header, body = [h.strip() for h in rows[0]], rows[1:]
        bad = [i for i, r in enumerate(body) if len(r) != len(header)]
        if bad:
            raise AnalysisError(f"table file {str(p)!r}: row {bad[0] + 2} has {len(body[bad[0]])} fields, "
                                f"the header has {len(header)}")
        cols = {h: _column([r[i] for r in body]) for i, h in enumerate(header)}
    elif suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            t = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:  # a truncated or non-parquet file
            raise AnalysisError(f"table file {str(p)!r} is not a readable parquet file: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        cols = {}
        for name in t.column_names:
            c = t.column(name)
            if pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_decimal(c.type):
                cols[name] = c.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(float)
            elif pa.types.is_boolean(c.type):
                cols[name] = np.array(c.fill_null(False).to_pylist(), dtype=bool)
            else:
                cols[name] = np.array(["" if v is None else str(v) for v in c.to_pylist()], dtype=str)
    else:
        raise AnalysisError(f"table file {str(p)!r}: unknown format {suffix!r}; expected .csv or .parquet")
    for key, src in mapping.items():
        if src not in cols:
            raise AnalysisError(f"column mapping {key}={src}: the file has no column {src!r}; "
                                f"its columns: {', '.join(cols)}")
    out = dict(cols)
    for key, src in mapping.items():
        out[key] = cols[src]
    return out
