"""A report directory: ``index.html``, one self-contained file (plots inline as PNG data URIs, CSS
inline, nothing fetched) that can be mailed or attached; beside it ``index.md``, the coefficient
tables (md/csv/tex), the fit as JSON, the provenance as JSON, and every plot as PNG and PDF.

    write_report(table, out_dir, provenance=None, **fit_options) -> Path of index.html
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import sys
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import plots as P
from . import report_sections as sections
from .errors import AnalysisError
from .fit import FitResult, run_fit
from .plot_prereg import plot_predicted_vs_actual
from .report_doc import Doc, html_page
from .tables import write_tables


def _version(package: str) -> str:
    """A package's installed version, read from its metadata (no import: JAX is slow to import)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Where and how the report was made: versions, date (UTC), hardware, command line."""
    argv = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv and sys.argv[0] else sys.argv
    return {
        "scaling-grid version": _version("scaling-grid"),
        "JAX version": _version("jax"),
        "numpy / scipy / matplotlib": " / ".join(_version(p) for p in ("numpy", "scipy", "matplotlib")),
        "Python": platform.python_version(),
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "command": shlex.join(argv),
    }


def check_output(path: str | Path, what: str, folder: bool = False) -> None:
    """Raise AnalysisError, naming ``what`` (e.g. "--json"), if ``path`` cannot be written: checked
    before a fit, so a bad path costs nothing and writes nothing. A file needs an existing writable
    folder; a folder (created with its parents) needs its nearest existing ancestor to be one."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise AnalysisError(f"{what} {str(p)!r}: is a file, not a folder")
    if not folder and p.is_dir():
        raise AnalysisError(f"{what} {str(p)!r}: is a folder; give a file name")
    parent = p.parent if not folder or not p.exists() else p
    while folder and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise AnalysisError(f"{what} {str(p)!r}: the folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise AnalysisError(f"{what} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AnalysisError(f"{what} {str(p)!r}: the folder {str(parent)!r} is not writable")
    if not folder and p.exists() and not os.access(p, os.W_OK):
        raise AnalysisError(f"{what} {str(p)!r}: the file exists and is not writable")


def plots(result: FitResult, table: Mapping[str, Iterable[Any]], out: Path,
          preregistered: Mapping[str, Any] | None) -> dict[str, list[Path]]:
    """Every plot of the report: the fit's, the eval curves of the rows it used, the pre-registration's."""
    made = P.plot_all(result, out)
    if result.options.get("where"):  # the curves of the rows the fit used, not of the rows --where removed
        from .columns import check_table
        from .expr import evaluate
        T = check_table(table)
        keep = evaluate(result.options["where"], T)
        table = {k: v[keep] for k, v in T.items()}
    made.update(P.plot_eval_curves(table, out, time=result.options.get("time_column")))
    p = plot_predicted_vs_actual((preregistered or {}).get("scored", []), out)
    if p:
        made["predicted_vs_actual"] = p
    return made


def sections_of(result: FitResult, title: str, prov: Mapping[str, str], preregistered: Mapping[str, Any] | None,
                made: dict[str, list[Path]], root: Path) -> Doc:
    """The report's sections in order: the answer first, then how the points were chosen, the
    variants, the frontier and the provenance."""
    d = Doc()
    sections.summary(d, result, title)
    sections.coefficients(d, result)       # the answer first, then how the points were chosen
    sections.comparison(d, result)
    if preregistered is not None:
        sections.preregistered(d, preregistered, made, root)
    sections.points(d, result)
    sections.eval_curves(d, made, root)
    for v, vf in result.variants.items():
        sections.variant(d, v, vf, result.law, made, root)
    sections.frontier_plot(d, made, root, result)
    sections.provenance(d, prov)
    return d


def write_report(table: Mapping[str, Iterable[Any]], out_dir: str | Path, *, result: FitResult | None = None,
                 title: str = "scaling-grid fit report", provenance: Mapping[str, object] | None = None,
                 preregistered: Mapping[str, Any] | None = None, **fit_options: Any) -> Path:
    """Fit (unless ``result`` is given; ``fit_options`` go to :func:`run_fit`) and write the report
    directory. ``provenance`` ({label: text}, e.g. source, spec name, spec hash: the table itself
    does not know them) is listed first in the provenance section, before :func:`environment`.
    ``preregistered`` (grid/prereg.py, a store still running): the predictions of its unfinished
    cells and the scores of earlier ones, shown after the coefficients.
    Returns the path of ``index.html`` (``index.md`` lies beside it)."""
    if result is None:
        result = run_fit(table, **fit_options)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    prov = {**{str(k): str(v) for k, v in (provenance or {}).items()}, **environment()}
    (root / "provenance.json").write_text(json.dumps(prov, indent=1, ensure_ascii=False) + "\n")
    with warnings.catch_warnings(record=True) as caught:  # shown in the report, not leaked to stderr
        warnings.simplefilter("always")
        (root / "fit.json").write_text(result.to_json())
        write_tables(result, root)
        made = plots(result, table, root / "plots", preregistered)
        d = sections_of(result, title, prov, preregistered, made, root)
    sections.report_warnings(d, list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)))
    (root / "index.md").write_text("\n".join(d.md))
    index = root / "index.html"
    index.write_text(html_page(title, d))
    return index
