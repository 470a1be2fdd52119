"""The `scaling-grid` command line. Subcommands are thin wrappers over library functions."""
# (The docstring is `--help`'s description.) Here: the parser, `main` (errors become exit codes and
# one-line messages) and the analysis commands fit, predict and report; the commands of runs and grids
# are in cli_grid.py, every subcommand's arguments in cli_args.py, the exit codes in exits.py.
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError

from . import cli_args as A
from . import cli_grid as G
from .cli_design import cmd_design
from .cli_errors import bucket_down, disk_full, quiet_library_echoes
from .exits import EXIT_BAD_INPUT, EXIT_OK

if TYPE_CHECKING:
    import numpy as np


def _fit_options(args: argparse.Namespace) -> dict[str, Any]:
    # parsed here, not by argparse, so a bad value exits 2 with a message instead of a usage dump
    text = args.huber_delta.strip().lower()
    try:
        delta = None if text == "none" else float(text)
    except ValueError:
        delta = float("nan")
    if delta is not None and not 0 < delta < float("inf"):
        raise ConfigError(f"--huber-delta={args.huber_delta!r}: expected none (plain weighted least squares) "
                          f"or a positive number, e.g. 1e-3")
    from scaling_grid import analysis
    from scaling_grid.analysis import expr, laws
    laws.get(args.law)  # an unknown law or a bad formula: before any data is read
    for cond, flag in ((args.where, "--where"), (getattr(args, "holdout", None), "--holdout")):
        if cond is not None:
            expr.parse(cond, flag)
    holdout = {} if getattr(args, "holdout", None) is None else dict(holdout=args.holdout,
                                                                     holdout_interval=args.interval)
    return dict(law=args.law, loss=args.loss, time=args.time, points=args.points, min_tau=args.min_tau,
                drop_highest=args.drop_highest, exclude_variants=tuple(args.exclude_variant),
                exclude_cells=tuple(args.exclude_cell), depth_offset=args.depth_offset, n_boot=args.boot,
                seed=args.seed, huber_delta=delta, residual=args.residual, where=args.where,
                source_columns=analysis.parse_mapping(args.map), reference=args.reference, **holdout)


def _points_table(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """A store is exported to the analysis table; a file is read with the column mapping."""
    from pathlib import Path

    from scaling_grid import analysis

    from .export import export_table
    from .store import is_url
    src = args.source
    if Path(src).is_file():
        return analysis.load_table(src, args.map)
    if args.map:
        raise ConfigError(f"--map={args.map!r}: column mappings apply to table files, and {src!r} is a store")
    if not is_url(src) and not (Path(src) / "spec.yaml").is_file() and not T.is_run_folder(src):
        raise ConfigError(f"source {src!r}: neither a table file (.csv/.parquet), a grid store (no spec.yaml) nor "
                          "a `train` folder (no config.yaml)")
    return export_table(src)


def _grid_progress(args: argparse.Namespace) -> None:
    """For a grid store: one line first saying how much of it has finished (a fit of a grid still
    running reads like a finished one otherwise); with --complete, refuse one that has not."""
    from pathlib import Path

    from .store import FINAL_STATES, Store
    src = args.source
    if Path(src).is_file() or T.is_run_folder(src) or not Store(src).exists():
        return
    records, _ = Store(src).records()
    states: dict[str, int] = {}
    for r in records:
        state = r["status"].get("state", "pending")
        states[state] = states.get(state, 0) + 1
    n, done = len(records), states.pop("done", 0)
    rest = ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
    line = f"grid {src}: {done} of {n} cells done" + (f" ({rest})" if rest else "")
    unfinished = sum(v for k, v in states.items() if k not in FINAL_STATES)
    if unfinished and args.complete:
        raise ConfigError(f"--complete: {line}; wait for the grid (`scaling-grid status {src}`), or drop --complete "
                          "to fit what has finished")
    print(line + ("; fitting the finished cells" if unfinished else ""), flush=True)


def cmd_fit(args: argparse.Namespace) -> int:
    from scaling_grid import analysis
    options = _fit_options(args)
    if args.json:  # before the fit: a bad path must not cost a fit, nor leave half an output
        analysis.check_output(args.json, "--json")
    _grid_progress(args)
    result = analysis.run_fit(_points_table(args), **options)
    width = None if args.wide else 100  # 100 columns fit a laptop terminal; --wide: one row per variant
    out, err = analysis.echo(result, width, args.verbose)  # exclusions, verdicts, warnings: not only in the JSON
    print("\n".join(out))
    if err:
        print("\n".join(err), file=sys.stderr, flush=True)
    if result.comparison:  # the difference table: not wrapped (its rows would break)
        print(analysis.comparison_text(result, width))
    # the result, last
    print(analysis.coefficient_table(result) if width is None else analysis.terminal_table(result, width))
    if args.json:
        import textwrap
        from pathlib import Path
        Path(args.json).write_text(result.to_json())
        msg = f"full precision (every interval, derived quantity, exclusion) -> {args.json}"
        print(msg if width is None else textwrap.fill(msg, width, subsequent_indent="  ", break_long_words=False))
    return EXIT_OK


def _at_table(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], list[str]]:
    """The points to predict at, and the input's own column names (the output's first columns)."""
    from pathlib import Path

    import numpy as np

    from scaling_grid import analysis
    if len(args.at) == 1 and ("=" not in args.at[0] or Path(args.at[0]).is_file()):
        read = _points_table(argparse.Namespace(source=args.at[0], map=args.map))
        mapped = analysis.parse_mapping(args.map)
        return read, [c for c in read if c not in mapped or c in mapped.values()]
    rows = []
    for text in args.at:
        if "=" not in text:
            raise ConfigError(f"--at {text!r}: give one table, or points as key=value pairs (e.g. N=6.9e9,D=1.4e11)")
        rows.append(_point(text))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    missing = [(i, k) for i, r in enumerate(rows) for k in keys if k not in r]
    if missing:
        raise ConfigError(f"--at: point {missing[0][0] + 1} has no {missing[0][1]!r}; every point needs the same keys")
    table: dict[str, np.ndarray] = {}
    for k in keys:
        vals = [r[k] for r in rows]
        try:
            table[k] = np.array([float(v) for v in vals])
        except ValueError:
            table[k] = np.array(vals, dtype=str)
    return table, keys


def _point(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not key or not value:
            raise ConfigError(f"--at {text!r}: expected key=value pairs, e.g. N=6.9e9,D=1.4e11")
        out[key] = value
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling_grid import analysis
    if args.out:
        if Path(args.out).suffix.lower() != ".csv":
            raise ConfigError(f"--out={args.out!r}: expected a .csv file name")
        analysis.check_output(args.out, "--out")
    if args.where is not None:
        from scaling_grid.analysis import expr
        expr.parse(args.where, "--where")
    predictor = analysis.Predictor.load(args.fit)
    table, columns = _at_table(args)
    mapping = analysis.parse_mapping(args.map) if args.map else {}
    out, notes, summary = analysis.predict_table(predictor, table, source_columns=mapping, input_columns=columns,
                                                 ci=args.ci, interval=args.interval, points=args.points,
                                                 where=args.where)
    print(_prediction_text(out, summary, predictor))
    for n in notes:
        print(f"note: {n}")
    if args.out:
        path = analysis.write_prediction_csv(out, args.out)
        print(f"{summary['n_rows']} prediction(s), every column at full precision -> {path}")
    return EXIT_OK


def _prediction_text(out: dict[str, np.ndarray], summary: dict[str, Any], predictor: Any, limit: int = 40) -> str:
    """The predictions as a Markdown table (up to ``limit`` rows), then what the interval is and the score."""
    from scaling_grid.analysis.tables import fmt, fmt_interval, markdown_table, wrap
    level = f"{100 * summary['ci']:g}%"
    skip = {"variant", "prediction", "lo", "hi", "actual", "rel_error", "inside"}
    # the law's variables under the input's own names, then an id column when there is one
    shown = [c for c in dict.fromkeys([*summary["columns"].values(), "cell", "run"]) if c in out and c not in skip]
    shown = shown[:6] or [c for c in out if c not in skip][:4]
    head = shown + ["variant", f"prediction [{level}]"] + (["actual", "rel error", "inside"] if "actual" in out else [])
    body = []
    for i in range(min(len(out["prediction"]), limit)):
        row = [fmt(float(out[c][i])) if out[c].dtype.kind == "f" else str(out[c][i]) for c in shown]
        row += [str(out["variant"][i]), fmt_interval(out["prediction"][i], out["lo"][i], out["hi"][i])]
        if "actual" in out:
            a = float(out["actual"][i])
            row += [fmt(a), f"{100 * float(out['rel_error'][i]):+.2f}%" if a == a else "",
                    ("yes" if out["inside"][i] else "NO") if a == a else ""]
        body.append(row)
    lines = markdown_table(body, head)
    if len(out["prediction"]) > limit:
        lines.append(f"... {len(out['prediction']) - limit} more row(s): --out FILE.csv writes them all")
    law, notes = predictor.law, []
    notes.append(f"{law.display_name}; interval: {level} percentile over "
                 + ", ".join(f"{n} bootstrap draws ({v})" for v, n in summary["n_draws"].items())
                 + (" of the law's value (fit uncertainty only; --interval run adds one run's scatter)"
                    if summary["interval"] == "law" else
                    " of one run's loss (the law plus the fit's residual scatter)"))
    if summary.get("n"):
        notes.append(f"against {summary['loss_column']} ({summary['n']} row(s) with a loss): mean |rel error| "
                     f"{100 * summary['mean_abs_rel_error']:.3g}%, max {100 * summary['max_abs_rel_error']:.3g}%, "
                     f"mean (bias) {100 * summary['mean_rel_error']:+.3g}%; {summary['n_inside']} of {summary['n']} "
                     f"inside the {level} interval")
    return "\n".join(lines + wrap(notes, 100))  # the table is not wrapped: its rows would break


def _prereg_lines(pre: dict[str, Any]) -> list[str]:
    """What `report` prints of the pre-registration: the predictions it made (a table, one row per
    unfinished cell) and each earlier record's score."""
    from scaling_grid.analysis import fmt_interval
    from scaling_grid.analysis.tables import markdown_table, wrap
    lines, table = [], []
    if pre["pending"] is not None:
        p = pre["pending"]
        n = len(p["cell"])
        lines.append(f"predicted the final loss of {n} unfinished cell(s) from the finished ones"
                     + (f"; kept in the store as predictions/{pre['key']}.json" if pre["written"] else
                        f"; the store already holds them (predictions/{pre['key']}.json)" if pre["key"] else ""))
        level = f"{100 * pre.get('ci', 0.95):g}%"
        table = markdown_table([[p["cell"][i], p["variant"][i], f"{p['m'][i]:g}", f"{p['l'][i]:g}",
                                 T.format_count(int(p["tokens"][i])),
                                 fmt_interval(float(p["prediction"][i]), float(p["lo"][i]), float(p["hi"][i]))]
                                for i in range(n)],
                               ["cell", "variant", "m", "ℓ", "tokens", f"predicted loss [{level} interval]"])
    scores = []
    for r in pre["scored"]:
        s = r["summary"]
        if s["n"]:
            scores.append(f"predictions made {r['made']} ({r['key']}): {s['n']} of {r['n_predicted']} cells finished "
                          f"since; mean |rel error| {100 * s['mean_abs_rel_error']:.3g}%, max "
                          f"{100 * s['max_abs_rel_error']:.3g}%; {s['n_inside']} of {s['n']} inside the "
                          f"{100 * r['ci']:g}% interval")
    # the table is not wrapped: its rows would break
    return wrap(lines, 100) + table + wrap(scores + [f"note: {n}" for n in pre["notes"]], 100)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling_grid import analysis
    options = _fit_options(args)
    out_dir = _check_output_folder(args.out, "--out")  # before the fit
    _grid_progress(args)
    table = _points_table(args)
    provenance = {"source": args.source}
    if not Path(args.source).is_file():  # a store (checked above): name the spec it was run from
        import hashlib

        import tensorstore as ts

        from .store import Store
        st = Store(args.source)
        spec_text = st.read_bytes("spec.yaml")[0]
        provenance["spec name"] = (st.read_json("store.json") or {}).get("name", "?")
        if spec_text is not None:  # the same hash as grid.spec.GridSpec.hash
            provenance["spec hash"] = hashlib.blake2b(spec_text, digest_size=4).hexdigest() + " (spec.yaml)"
        keys = st.kv.list(ts.KvStore.KeyRange(inclusive_min="specs/", exclusive_max="specs0")).result()
        hashes = sorted(k.decode()[len("specs/"):].removesuffix(".yaml") for k in keys)
        if len(hashes) > 1:
            provenance["specs launched into the store"] = ", ".join(hashes)
    result = analysis.run_fit(table, **options)
    out, err = analysis.echo(result, 100, args.verbose)
    print("\n".join(out))
    if err:
        print("\n".join(err), file=sys.stderr, flush=True)
    pre = None
    if "spec name" in provenance and not args.no_predictions:  # a grid store: pre-register, score (grid/prereg.py)
        from . import prereg
        pre = prereg.preregister(args.source, result, table)
        print("\n".join(_prereg_lines(pre)))
    path = _write_into(out_dir, lambda where: analysis.write_report(table, where, result=result,
                                                                   provenance=provenance, preregistered=pre))
    if result.comparison:
        print(analysis.comparison_text(result, 100))
    print(analysis.terminal_table(result, 100))  # the result and where the report is, last
    print(f"report (one self-contained HTML file; tables, plots and JSON beside it): {path}")
    return EXIT_OK


def _check_output_folder(path: str, what: str) -> str:
    """Before any work: an output folder (local, file:// or gs://) can be written. Returns the local
    path, or the URL of a bucket folder (which answered a probe write)."""
    from scaling_grid import analysis
    T.check_writable(what, path)  # an unsupported scheme, gcsfs missing, a bucket that does not answer
    if T.is_remote(path):
        return path
    local = T.local(path) if T.is_url(path) else path
    analysis.check_output(local, what, folder=True)
    return local


def _write_into(out: str, write: Callable[[str], Any]) -> str:
    """`write(folder)` into the output folder `out`. A report is many files written by matplotlib and
    plain file writers, which need a local disk: for a bucket URL they go to a temporary folder, copied
    under `out` afterwards. Returns the path `write` returned, under `out`."""
    import os
    import tempfile

    if not T.is_remote(out):
        return str(write(out))
    with tempfile.TemporaryDirectory() as d:
        made = write(d)
        T.upload_tree(d, out)
    return T.join(out, os.path.relpath(made, d))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import cmd_demo as demo
    return demo(args, main)  # `run` then `report`, each through main: its messages and exit codes


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {
    "prepare": (G.cmd_prepare, A.add_config_args, "tokenize a corpus once into a token store"),
    "train": (G.cmd_train, A.add_train_args, "train one model (resumes from its checkpoints)"),
    "config": (G.cmd_config, A.add_config_cmd_args, "print every run config field with its default and meaning, "
               "or the resolved config of a run as YAML"),
    "compile": (G.cmd_compile, A.add_compile_args, "compile a run config's or a grid's train steps for a TPU or GPU "
                "target with its real compiler (no chip needed): memory per device, kernels, collectives, FLOPs"),
    "run": (G.cmd_run, A.add_run_args, "run a grid spec into a store: every cell not done (resumable, shardable)"),
    "grow": (G.cmd_grow, A.add_grow_args, "grow a grid spec by larger budgets, widths or depths, every cell keeping "
             "its id (a wsd trunk is extended, not retrained)"),
    "status": (G.cmd_status, A.add_store_arg, "table of a grid store's cells (works while the grid runs)"),
    "export": (G.cmd_export, A.add_export_args, "write all points of a grid store as one tidy CSV/parquet table"),
    "fit": (cmd_fit, A.add_fit_cmd_args, "fit a scaling law to a store or a table file; print the coefficient table"),
    "predict": (cmd_predict, A.add_predict_args, "predict losses at new points from a fit's JSON, with intervals "
                "from its bootstrap draws (and score them against losses the table has)"),
    "report": (cmd_report, A.add_report_args, "fit and write a self-contained report (HTML, tables, plots)"),
    "design": (cmd_design, A.add_design_args, "choose the cells of a grid for a FLOP budget and the quantities to "
               "pin; print it against a full factorial of the same cost, checked by simulation"),
    "demo": (cmd_demo, A.add_demo_args, "train the embedded demo grid (configs/demo.yaml) into stores/demo and "
             "write its report to reports/demo (3-8 min on a laptop CPU)"),
}


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version
    parser = argparse.ArgumentParser(prog="scaling-grid", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('scaling-grid')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_) in COMMANDS.items():
        description = help_
        if add_args in (A.add_config_args, A.add_train_args):  # they take a run config
            description += ". Run config fields: see `scaling-grid config` for every field, its default and meaning"
        add_args(sub.add_parser(name, help=help_, description=description))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_echoes()
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as e:
        print(f"scaling-grid {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        bucket_down(args.command, e)  # a bucket stopped answering: one line, exit 1 (143 after a SIGTERM)
        T.exit_if_peer_lost(e)  # a collective whose peer is gone: exit 75 once jax.distributed says so
        from scaling_grid.analysis import AnalysisError  # bad tables, unidentifiable coefficients
        if isinstance(e, AnalysisError):
            print(f"scaling-grid {args.command}: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        where = disk_full(e)
        if where is None:
            raise
        print(f"scaling-grid {args.command}: error: no space left on the device"
              + ("" if where == "?" else f" writing {where}")
              + f" ({type(e).__name__}); free some space and run the same command again: it resumes from the last "
              "complete checkpoint, and what was written before is kept", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
