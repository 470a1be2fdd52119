"""The one CSV writer of the analysis (numpy and the standard library only).

One rule for every cell (:func:`csv_cell`): a float at full precision (``repr``); NaN and None as an
empty field (a missing value: :func:`loading.load_table` reads it back as NaN); +-inf as ``inf`` and
``-inf`` (``float()`` reads them back); a bool as ``true``/``false``; anything else as ``str``.
Rows end with ``\\r\\n`` (the csv module's default) unless told otherwise.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def csv_cell(x: Any) -> str:
    """One value as a CSV field (module docstring)."""
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (float, np.floating)):
        return "" if math.isnan(x) else repr(float(x))
    return str(x)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], lineterminator: str = "\r\n") -> str:
    """``header`` then ``rows`` as CSV text, every cell by :func:`csv_cell`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerow(header)
    w.writerows([csv_cell(x) for x in row] for row in rows)
    return buf.getvalue()


def write_csv(columns: Mapping[str, Sequence[Any] | np.ndarray], path: str | Path) -> Path:
    """A table (a dict of equal-length columns) as a CSV file, one row per index; returns its path."""
    p = Path(path)
    keys = list(columns)
    n = len(next(iter(columns.values()))) if keys else 0
    with p.open("w", newline="") as f:
        f.write(csv_text(keys, ([columns[k][i] for k in keys] for i in range(n))))
    return p
