"""scaling_grid.analysis: tables of losses in; fits with honest uncertainty, tables, plots, report out.

Knows nothing of the store, of JAX or of grids: its input is a *table*, a dict of equal-length 1-D
numpy arrays (columns; the schema is in ``columns.py``). The CLI builds it from a store, or
:func:`load_table` reads a CSV/parquet file.

Public API (what ``grid/cli.py`` calls)::

    load_table(path: str, mapping: dict[str, str] | str | None = None) -> dict[str, np.ndarray]
        CSV or parquet; mapping = {schema name: file column}, or "N=model_size,D=tokens,loss=loss"
    parse_mapping(text: str) -> dict[str, str]
        "k=v,k=v" -> {k: v} (for --map)
    run_fit(table, law="universality", loss="eval", time=None, *, points="final", min_tau=None,
            drop_highest=0, exclude_variants=(), exclude_cells=(), variants=None, depth_offset=0.0,
            nan_policy="raise", huber_delta=1e-3, residual=None, n_boot=1000, ci=0.95, seed=0, checks=True,
            where=None, holdout=None, holdout_interval="law", source_columns=None) -> FitResult
        law: a registered name (universality | universality-free | chinchilla: laws.names()) or a
        formula in the grammar of laws.py, e.g. "E + A/N^a + B/D^a" (a name used twice is one tied
        parameter); loss: eval | train; time: tau_lr | tokens | steps (None: tokens for a law in D,
        tau_lr otherwise); points: final | constant-lr | final+constant-lr | all | best-lr
        (the lowest-loss lr of each shape and budget, reselected in every bootstrap draw); min_tau drops points
        whose time is below it; drop_highest drops the K highest-loss points of each variant;
        checks=False skips the held-out checks and the exclusion scan.
        The objective: residual log | relative | absolute (None: log for free exponents, relative for
        fixed ones), Huber with huber_delta, or plain squares with huber_delta=None (Objective).
        where: a condition over the table's columns (expr.py), e.g. "dataset == 'rpj' and tokens / N >= 20";
        points where it fails are dropped and recorded. holdout: a condition whose points are left out
        of the fit, then predicted with intervals and scored (VariantFit.heldout); holdout_interval:
        law | run (predict.py). source_columns: the --map ({schema name: file column}), so the
        result names the file's own columns.
        FitResult.to_json() -> str, .to_dict() -> dict, (coefficient_table(result, "markdown" | "csv" |
        "latex") -> str), .variants[v] -> VariantFit (.params, .param_interval(name), .flags, ...)
        A loss that does not vary, or a law whose every term stays below 1e-6 of the loss, is an
        AnalysisError; a parameter on its bound ("at_bound") or not determined ("unidentified") is
        flagged in .flags, the intervals, the tables and the warnings. Rows whose time variable is 0
        are dropped and recorded. An optimiser that stops abnormally is retried, then reported
        "converged": false unless a Newton step predicts no further decrease (nonlinear.py).
        Intervals are percentiles of the bootstrap draws; "se" is 1.4826 x their MAD (robust). The
        JSON keeps the draws (variants.<v>.bootstrap.draws): predictions are made from them.
    Predictor.load(fit_json) / Predictor.from_result(result) -> Predictor
    predict_table(predictor, table, *, source_columns=None, input_columns=None, ci=None, interval="law",
                  points="final", where=None) -> (columns, notes, summary)
        the law at every row of a table, with a percentile interval over the bootstrap draws
        (interval "law": the law's uncertainty; "run": plus one run's scatter); columns: the input's,
        variant, prediction, lo, hi, and with losses actual, rel_error, inside. write_prediction_csv(columns, path).
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
    echo(result, width=None, verbose=False) -> (stdout lines, stderr lines)
        every exclusion and the universality verdict; every warning, prefixed with its variant;
        wrapped at width columns when given
    AnalysisError(ValueError)
        raised for bad input; the message names the problem (column, coefficient, variant, fix).
    Candidate, Prior, Design, choose(candidates, budget, prior, goals, noise=None, spent=()) -> Design,
    predicted(cells, prior, goals) -> {goal: relative sd}, simulate(cells, prior, goals, draws) ->
    {goal: {width, coverage, ...}}, design_cost(cells, spent=()), factorial(candidates, budget),
    check_goals(goals), needs_free(goals)
        the cells to train for a budget (docs/design.md; signatures in design.py)

Modules, in layers (each imports only from the ones before it):
- the table: errors, laws (laws as short formulas, a registry of named ones), expr (safe row
  conditions), columns (the schema, typed column reads), loading (CSV/parquet in), csvfile (the one
  CSV writer);
- the points: points (the Points and Envelope types), selection (valid points, exclusions), identify
  (what the points can determine; flags);
- the estimator: objective, linear (the convex solver), resampling (the bootstrap's draws of runs),
  nonlinear (the other solver; its fit_law and bootstrap pick the solver), derived (optimal shape,
  penalty, frontiers), validation (held-out checks, exclusion scan), results (VariantFit, FitResult,
  JSON), compare (variants against each other), predict (predictions with intervals from the draws),
  fit (run_fit);
- the text: formatting (numbers, intervals, Markdown/LaTeX cells), coefficients (the coefficient
  table), compare_text (the comparison as words and tables), tables (table files, terminal lines);
- the pictures and the report: notation (the Unicode names a reader sees), plot_style, plots
  (png/pdf), plot_frontier (the compute frontier in one FLOP convention), plot_prereg (pre-registered
  predictions against the actual loss), report_doc (one document as Markdown and HTML, print-safe
  tables), report_sections, report (the report directory: one self-contained HTML file and the files
  beside it);
- the design (after fit): design (candidates, prior, goals, information, cost), design_choose (the
  search, the factorial), design_table (a table's rows as candidates), design_sim (the simulation
  check with run_fit).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> (module, attribute). Resolved on first use, as the trainer's face: a command that needs one
# small part (the CSV writer of `export`) does not import scipy and matplotlib with the rest.
_ORIGIN = {
    "AnalysisError": ("errors", "AnalysisError"), "FitResult": ("fit", "FitResult"),
    "Objective": ("objective", "Objective"), "Predictor": ("predict", "Predictor"),
    "VariantFit": ("fit", "VariantFit"), "check_output": ("report", "check_output"),
    "coefficient_table": ("coefficients", "coefficient_table"), "comparison_text": ("compare_text", "comparison_text"),
    "echo": ("tables", "echo"), "fmt_interval": ("formatting", "fmt_interval"), "load_table": ("loading", "load_table"),
    "parse_mapping": ("loading", "parse_mapping"), "predict_table": ("predict", "predict_table"),
    "run_fit": ("fit", "run_fit"), "select_points": ("selection", "select_points"),
    "terminal_table": ("coefficients", "terminal_table"), "write_prediction_csv": ("csvfile", "write_csv"),
    "write_report": ("report", "write_report"),
    "Candidate": ("design", "Candidate"), "Prior": ("design", "Prior"), "Design": ("design", "Design"),
    "check_goals": ("design", "check_goals"), "needs_free": ("design", "needs_free"),
    "design_cost": ("design", "design_cost"), "choose": ("design_choose", "choose"),
    "predicted": ("design_choose", "predicted"), "factorial": ("design_choose", "factorial"),
    "simulate": ("design_sim", "simulate"),
}
__all__ = sorted(_ORIGIN)

# ruff: noqa: F401 - the imports below are the face for type checkers; ruff cannot read __all__ from _ORIGIN
if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from .coefficients import coefficient_table, terminal_table
    from .compare_text import comparison_text
    from .csvfile import write_csv as write_prediction_csv
    from .design import Candidate, Design, Prior, check_goals, design_cost, needs_free
    from .design_choose import choose, factorial, predicted
    from .design_sim import simulate
    from .errors import AnalysisError
    from .fit import FitResult, VariantFit, run_fit
    from .formatting import fmt_interval
    from .loading import load_table, parse_mapping
    from .objective import Objective
    from .predict import Predictor, predict_table
    from .report import check_output, write_report
    from .selection import select_points
    from .tables import echo


def __getattr__(name: str) -> Any:
    if name not in _ORIGIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _ORIGIN[name]
    return getattr(importlib.import_module(f".{module}", __name__), attr)
