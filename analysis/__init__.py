"""scaling_grid.analysis: tables of losses in; fits with honest uncertainty, tables, plots, report out.

Knows nothing of the store, of JAX or of grids: its input is a *table*, a dict of equal-length 1-D
numpy arrays (columns; the schema is in ``points.py``). The CLI builds it from a store, or
:func:`load_table` reads a CSV/parquet file.

Public API (what ``grid/cli.py`` calls)::

    load_table(path: str, mapping: dict[str, str] | str | None = None) -> dict[str, np.ndarray]
        CSV or parquet; mapping = {schema name: file column}, or "N=model_size,D=tokens,loss=loss"
    parse_mapping(text: str) -> dict[str, str]
        "k=v,k=v" -> {k: v} (for --map)
    run_fit(table, law="universality", loss="eval", time=None, *, points="final", min_tau=None,
            drop_highest=0, exclude_variants=(), exclude_cells=(), variants=None, depth_offset=0.0,
            nan_policy="raise", huber_delta=1e-3, n_boot=1000, ci=0.95, seed=0, checks=True) -> FitResult
        law: universality | universality-free | chinchilla (laws.names()); loss: eval | train;
        time: tau_lr | tokens | steps (None: tokens for chinchilla, tau_lr otherwise);
        points: final | constant-lr | final+constant-lr | all; min_tau drops points whose time is
        below it; drop_highest drops the K highest-loss points of each variant; checks=False skips
        the held-out checks and the exclusion scan.
        FitResult.to_json() -> str, .to_dict() -> dict, .table_markdown() / .table_csv() /
        .table_latex() -> str, .variants[v] -> VariantFit (.params, .param_interval(name), .flags, ...)
        huber_delta=None is plain (1/L-weighted) least squares. A loss that does not vary, or a law
        whose every term stays below 1e-6 of the loss, is an AnalysisError; a parameter on its bound
        ("at_bound") or not determined ("unidentified") is flagged in .flags, the intervals, the
        tables and the warnings. Rows whose time variable is 0 are dropped and recorded.
    write_report(table, out_dir, *, result=None, title=..., provenance=None, **run_fit_options) -> Path
        index.html: one self-contained file (plots inline); provenance {label: text} (source, spec,
        spec hash) is listed before the environment (versions, date, hardware, command line)
    terminal_table(result, width=100) -> str
        the coefficient table for a terminal: one row per quantity, one column per variant, numbers
        at their intervals' precision (fmt_interval), notes wrapped at width
    fmt_interval(value, lo, hi) -> str
        "560 [270, 1000]": value and bounds rounded at the interval width's second significant digit
    check_output(path, what, folder=False) -> None
        raise AnalysisError naming ``what`` (e.g. "--json") if path (a file, or a folder to create)
        cannot be written; call it before a fit
    echo(result, width=None) -> (stdout lines, stderr lines)
        every exclusion and the universality verdict; every warning, prefixed with its variant;
        wrapped at width columns when given
    AnalysisError(ValueError)
        raised for bad input; the message names the problem (column, coefficient, variant, fix).

Modules: points (schema, loading, point selection, exclusions), laws (registry of laws as short
formulas), fit (NNLS/IRLS and L-BFGS fits, bootstrap over runs, held-out checks, exclusion scan,
run_fit), derived (optimal shape, penalty, frontiers), tables (md/csv/tex), plots (png/pdf),
report (report directory: one self-contained HTML file and the files beside it).
"""
from .errors import AnalysisError
from .fit import FitResult, VariantFit, run_fit
from .points import load_table, parse_mapping, select_points
from .report import check_output, write_report
from .tables import echo, fmt_interval, terminal_table

__all__ = ["AnalysisError", "FitResult", "VariantFit", "check_output", "echo", "fmt_interval", "load_table",
           "parse_mapping", "run_fit", "select_points", "terminal_table", "write_report"]
