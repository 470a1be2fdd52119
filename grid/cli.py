"""The `scaling-grid` command line. Subcommands are thin wrappers over library functions."""
from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scaling_grid.trainer import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from scaling_grid.trainer import Distributed, RunConfig

# Exit codes a launcher or a job scheduler can act on.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED = 0, 1, 2, 3, 143


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config (defaults: the embedded Shakespeare corpus)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. model.width=256 train.tokens=20M")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """A run config, plus train's flags (before the config or after the overrides: argparse cannot
    take them in between)."""
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (plain lines: one per eval and every 30 s, as when not on a terminal)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files to DIR/<out_dir "
                   "name> (needs tensorboardX); view with tensorboard --logdir DIR")
    p.add_argument("--wandb", metavar="PROJECT", help="also log to Weights & Biases project PROJECT (needs "
                   "wandb; WANDB_MODE=offline logs locally)")
    _add_distributed_args(p, "all processes train this run together, each feeding its share of the batch")
    _add_compile_cache_arg(p)


def _add_compile_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile-cache", metavar="DIR|URL", help="JAX's persistent compilation cache: a folder or a "
                   "gs:// URL that every host shares (default: $SCALING_GRID_COMPILE_CACHE, else "
                   "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/scaling-grid/jax)")


def _load_config(args: argparse.Namespace) -> RunConfig:
    from scaling_grid import trainer as T
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:  # no config file given, only overrides
        path, overrides = None, [path] + overrides
    return T.load(path, overrides)


def cmd_prepare(args: argparse.Namespace) -> int:
    from scaling_grid import trainer as T
    cfg = _load_config(args)
    store = T.prepare(cfg.data)
    print(f"token store: {store.path}  train {store.n_train:,} tokens, val {store.n_val:,} tokens, "
          f"vocab {store.vocab_size}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from scaling_grid import trainer as T
    cfg = _load_config(args)
    from scaling_grid.trainer.paths import require_local
    tensorboard = require_local("--tensorboard", args.tensorboard)
    T.setup(_distributed(args), args.compile_cache)  # before anything starts a JAX backend
    from scaling_grid.trainer import peers
    peers.by_default(lambda why, _: f"run {cfg.out_dir} (last checkpoint: step "  # what a lost peer's line names
                     f"{max(T.saved_steps(T.path_of(cfg.out_dir) / 'checkpoints'), default=0)})")
    result = T.train_cli(cfg, progress=not args.no_progress, tensorboard=tensorboard, wandb=args.wandb)
    return {"done": EXIT_OK, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED}.get(result.status, EXIT_FAILED)


def _add_config_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config to resolve (none and no overrides: list the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides to resolve with it, "
                   "e.g. model.width=256 data.documents=blank_lines")


def cmd_config(args: argparse.Namespace) -> int:
    from scaling_grid import trainer as T
    if args.config is None and not args.overrides:
        print("# Every run config field with its default and meaning. Set fields in a YAML file of these sections,\n"
              "# or on the command line as section.key=value (e.g. model.width=256 train.tokens=20M).")
        print(T.describe(), end="")
    else:
        cfg = _load_config(args)  # checked as train would check it
        print("# The resolved config of this run (file, overrides, defaults); each value's meaning, and its\n"
              "# default where it differs. `scaling-grid train` with the same arguments runs this config.")
        print(T.describe(cfg), end="")
    return EXIT_OK


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML grid spec, e.g. configs/demo.yaml")
    p.add_argument("--store", help="grid store: a folder or a URL (gs://bucket/path, file:///path); default: "
                   "stores/<spec name>")
    p.add_argument("--dry-run", action="store_true", help="print the plan (cells, sizes, FLOPs, estimated time, "
                   "what is done, compute of each token mode) and exit; writes nothing")
    p.add_argument("--shard", metavar="i/n", help="run only the cells assigned to host i of n (0-based)")
    p.add_argument("--checkpoints", metavar="DIR|URL", help="checkpoint root: a folder or a gs:// URL that every "
                   "host sees (default <store>/checkpoints)")
    p.add_argument("--status-every", type=float, default=15.0, metavar="S",
                   help="seconds between status heartbeats of a running cell (default 15)")
    p.add_argument("--stale-after", type=float, default=600.0, metavar="S",
                   help="take over a cell another host marked running if its heartbeat is older (default 600)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="skip the ahead-of-time compile of the largest cells against device memory")
    p.add_argument("--no-measure", action="store_true", help="dry run: do not time a few steps for the estimate")
    p.add_argument("--no-retry-failed", action="store_true", help="leave cells that failed before alone")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per cell, as when not "
                   "on a terminal)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files, one run per cell in "
                   "DIR/<cell id> (needs tensorboardX); view with tensorboard --logdir DIR")
    p.add_argument("--wandb", metavar="PROJECT", help="also log every cell to Weights & Biases project PROJECT, "
                   "one W&B run per cell (needs wandb; WANDB_MODE=offline logs locally)")
    p.add_argument("--wide", action="store_true", help="dry run: every column, whatever the terminal width")
    _add_target_arg(p)
    _add_distributed_args(p, "every process runs each cell together")
    _add_compile_cache_arg(p)


def _add_distributed_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--distributed", action="store_true", help=f"join a multi-process JAX job ({what}); without "
                   "the three flags below JAX detects TPU VMs, SLURM, Open MPI and Kubernetes by itself")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address")
    p.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: processes in the job")
    p.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this process, 0..N-1")
    p.add_argument("--peer-timeout", type=float, default=60.0, metavar="S", help="with --distributed: a process "
                   "that does not join or stops answering within S seconds is lost: every process stops with exit 75 "
                   "(the running cell preempted; relaunch all to resume) (default 60)")


def _distributed(args: argparse.Namespace) -> Distributed | None:
    from scaling_grid.trainer import Distributed
    d = Distributed(args.coordinator, args.num_processes, args.process_id, peer_timeout=args.peer_timeout)
    if not args.distributed:
        if d != Distributed(peer_timeout=args.peer_timeout):
            raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")
        return None
    d.check()
    return d


def cmd_run(args: argparse.Namespace) -> int:
    if args.target:
        _host_only()
    from pathlib import Path

    from scaling_grid.grid import launch
    from scaling_grid.grid.spec import parse_shard
    from scaling_grid.trainer.paths import require_local
    shard = parse_shard(args.shard)
    for flag, value in (("--status-every", args.status_every), ("--stale-after", args.stale_after)):
        if not 0 < value < float("inf"):
            raise ConfigError(f"{flag}={value:g}: must be a positive number of seconds")
    store = args.store or str(Path("stores") / Path(args.spec).stem)
    opts = launch.Options(store=store, shard=shard, checkpoints=args.checkpoints, status_every=args.status_every,
                          stale_after=args.stale_after, memory_check=not args.no_memory_check,
                          measure=not args.no_measure, progress=not args.no_progress,
                          retry_failed=not args.no_retry_failed, distributed=_distributed(args),
                          tensorboard=require_local("--tensorboard", args.tensorboard), wandb=args.wandb,
                          wide=args.wide, compile_cache=args.compile_cache, target=args.target)
    if args.target and not args.dry_run:
        raise ConfigError("--target goes with --dry-run (it compiles for a chip that need not be here); a run "
                          "trains on the devices JAX sees")
    if args.dry_run:
        print(launch.plan_text(args.spec, opts))
        return EXIT_OK
    try:
        return launch.run(args.spec, opts)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def _add_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config or grid spec (a spec compiles each distinct shape "
                   "of its cells, packs included)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of a run config")
    _add_target_arg(p, required=True)
    p.add_argument("--json", metavar="FILE", help="also write one JSON object per shape to FILE")


def _add_target_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--target", required=required, metavar="T", help="compile for this accelerator with its real "
                   "compiler, no chip needed: tpu:v5e:2x4, tpu:v4:2x2x1, tpu:v5p:2x2x2, tpu:v6e:2x2, gpu:h100, "
                   "gpu:h100:8, gpu:a100 (needs the aot extra)")


def _host_only() -> None:
    """Compiling for a target runs nothing on this host's accelerator: keep JAX on the CPU, so the aot
    extra's TPU and CUDA plugins do not probe for chips (and warn) on a machine without them."""
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def cmd_compile(args: argparse.Namespace) -> int:
    _host_only()
    from scaling_grid.grid import aot
    from scaling_grid.trainer.target import parse_target
    target = parse_target(args.target)
    configs, what = aot.configs_of(args.config, args.overrides)
    print(f"compiling for {target.name} ({what}) with the target's own compiler", flush=True)

    def progress(i: int, n: int, name: str) -> None:
        print(f"  [{i + 1}/{n}] {name}", file=sys.stderr, flush=True)
    reports = aot.check(configs, target, progress)
    print(aot.table(reports))
    if args.json:
        aot.write_json(reports, args.json)
        print(f"{len(reports)} shape(s) -> {args.json}")
    bad = [i + 1 for i, r in enumerate(reports) if not r.fits]
    if bad:
        print(f"does not fit {target.name}: shape(s) {', '.join(map(str, bad))}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="grid store (a folder or a kvstore URL), or the out_dir of a `train` run")
    if p.prog.split()[-1] == "status":  # export shares the argument above
        p.add_argument("--wide", action="store_true", help="every column and whole notes, whatever the width "
                       "(default: rows fit 100 columns)")


def cmd_status(args: argparse.Namespace) -> int:
    from scaling_grid.grid import store
    rows = store.status_rows(args.store)
    print(store.format_status(rows, args.store, wide=args.wide))
    return EXIT_FAILED if any(r["state"] == "damaged" for r in rows) else EXIT_OK


def _add_export_args(p: argparse.ArgumentParser) -> None:
    _add_store_arg(p)
    p.add_argument("--out", help="output file, .csv or .parquet (default: <store>/export.csv for a local store)")


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scaling_grid import analysis
    from scaling_grid.grid import store
    from scaling_grid.trainer import paths
    out = args.out
    if out is None:  # beside the store, also in a bucket
        out = paths.join(args.store, "export.csv") if store.is_url(args.store) else str(Path(args.store) / "export.csv")
    if Path(out).suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out={out!r}: expected a .csv or .parquet file name")
    paths.check_scheme("--out", out)
    if paths.is_remote(out):  # before reading the store: the bucket answers, and takes a write
        paths.check_writable("--out", out.rsplit("/", 1)[0])
    else:
        out = paths.local(out) if paths.is_url(out) else out  # file://
        if Path(out).is_dir():
            raise ConfigError(f"--out={out!r}: is a folder; give a file name")
        analysis.check_output(Path(out).parent, "--out", folder=True)  # before reading the store
        try:  # permissions can say yes where the file system says no (/proc, a read-only mount)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out={out!r}: its folder cannot be created ({e.strerror})") from None
    table = store.export_table(args.store)
    path = store.write_table(table, out)
    n = len(table["step"])
    print(f"{n:,} rows x {len(table)} columns ({int(table['is_final'].sum())} final points, "
          f"{len(set(table['cell']))} cells) -> {path}")
    return EXIT_OK


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a grid store (folder or URL) or a table file (.csv, .tsv, .parquet)")
    p.add_argument("--verbose", action="store_true", help="also list the cells of every exclusion (always in "
                   "the JSON)")
    p.add_argument("--complete", action="store_true", help="a grid store: refuse to fit unless every cell has "
                   "finished (done or diverged); by default a grid still running is fitted on its finished cells")
    p.add_argument("--law", default="universality",
                   help="universality (exponents 1/3, 1, 1) | universality-free | chinchilla (default universality), "
                        "or a formula: a constant plus terms coef/var^exponent, the exponent a number (fixed) or a "
                        "name (fitted); a name used twice is one tied parameter, e.g. 'E + A/N^a + B/D^a'; "
                        "variables tau, D, m, l, N or any column of the table")
    p.add_argument("--loss", default="eval", choices=["eval", "train"], help="which loss to fit (default eval)")
    p.add_argument("--time", choices=["tau_lr", "tokens", "steps"],
                   help="time variable (default tau_lr = sum of lr; tokens for chinchilla)")
    p.add_argument("--points", default="final",
                   choices=["final", "constant-lr", "final+constant-lr", "all", "best-lr"],
                   help="which points are valid: run endpoints / post-cooldown points (default), points "
                        "where the lr was constant, both, every point, or best-lr: the endpoint of the "
                        "lowest-loss lr of each shape and budget (reselected in every bootstrap draw)")
    p.add_argument("--map", metavar="K=COL,...", help="for a file: map the law's variables to its columns, "
                   "e.g. N=model_size,D=tokens,loss=loss or m=d_model,l=n_layers,tau=tokens,loss=loss")
    p.add_argument("--min-tau", type=float, metavar="T", help="drop points whose time is below T")
    p.add_argument("--drop-highest", type=int, default=0, metavar="K",
                   help="drop the K highest-loss points per variant")
    p.add_argument("--exclude-variant", action="append", default=[], metavar="V",
                   help="leave variant V out (repeatable)")
    p.add_argument("--exclude-cell", action="append", default=[], metavar="ID", help="leave cell ID out (repeatable)")
    p.add_argument("--depth-offset", type=float, default=0.0, metavar="L0", help="effective depth l - L0 (default 0)")
    p.add_argument("--boot", type=int, default=1000, metavar="B", help="bootstrap resamples over runs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--huber-delta", default="1e-3", metavar="none|D",
                   help="Huber threshold of the robust fit (default 1e-3); none = plain least squares")
    p.add_argument("--residual", choices=["log", "relative", "absolute"],
                   help="where residuals are taken: log L - log Lhat, (L - Lhat)/L or L - Lhat (default: log "
                        "for a law with fitted exponents, relative for fixed exponents)")
    p.add_argument("--where", metavar="EXPR", help="fit only the rows where EXPR holds, a condition over the "
                   "table's columns, e.g. \"dataset == 'rpj' and tokens / N >= 20\" (comparisons, and/or/not, "
                   "arithmetic, in (...), log/sqrt/...); the points it removes are listed")
    p.add_argument("--reference", metavar="V", help="with two or more variants: the variant every other one is "
                   "compared with (differences and ratios of every coefficient and derived quantity, with "
                   "bootstrap intervals); default: the first")


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
    from scaling_grid.grid import store
    src = args.source
    if Path(src).is_file():
        return analysis.load_table(src, args.map)
    if args.map:
        raise ConfigError(f"--map={args.map!r}: column mappings apply to table files, and {src!r} is a store")
    if not store.is_url(src) and not (Path(src) / "spec.yaml").is_file() and not store.is_run_folder(src):
        raise ConfigError(f"source {src!r}: neither a table file (.csv/.parquet), a grid store (no spec.yaml) nor "
                          "a `train` folder (no config.yaml)")
    return store.export_table(src)


def _grid_progress(args: argparse.Namespace) -> None:
    """For a grid store: one line first saying how much of it has finished (a fit of a grid still
    running reads like a finished one otherwise); with --complete, refuse one that has not."""
    from pathlib import Path

    from scaling_grid.grid import store
    src = args.source
    if Path(src).is_file() or store.is_run_folder(src) or not store.Store(src).exists():
        return
    records, _ = store.Store(src).records()
    states: dict[str, int] = {}
    for r in records:
        state = r["status"].get("state", "pending")
        states[state] = states.get(state, 0) + 1
    n, done = len(records), states.pop("done", 0)
    rest = ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
    line = f"grid {src}: {done} of {n} cells done" + (f" ({rest})" if rest else "")
    unfinished = sum(v for k, v in states.items() if k not in store.FINAL_STATES)
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
    print(result.table_markdown() if width is None else analysis.terminal_table(result, width))  # the result, last
    if args.json:
        import textwrap
        from pathlib import Path
        Path(args.json).write_text(result.to_json())
        msg = f"full precision (every interval, derived quantity, exclusion) -> {args.json}"
        print(msg if width is None else textwrap.fill(msg, width, subsequent_indent="  ", break_long_words=False))
    return EXIT_OK


def _add_fit_cmd_args(p: argparse.ArgumentParser) -> None:
    _add_fit_args(p)
    p.add_argument("--json", metavar="FILE",
                   help="write the full fit (intervals, derived quantities, exclusions) as JSON")
    p.add_argument("--wide", action="store_true", help="print the full table, one row per variant (wider than 100 "
                   "columns); default: one row per quantity, 100 columns, numbers to their intervals' precision")
    p.add_argument("--holdout", metavar="EXPR", help="fit on the points where EXPR does not hold; predict the "
                   "points where it holds, with intervals, and score them (e.g. 'N >= 1e9')")
    p.add_argument("--interval", default="law", choices=["law", "run"],
                   help="with --holdout: the interval of the law's value (fit uncertainty, default), or of one "
                        "run's loss (plus the fit's residual scatter)")


def _add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("fit", metavar="FIT.json", help="a fit written by `scaling-grid fit ... --json FIT.json`")
    p.add_argument("--at", required=True, action="append", metavar="TABLE|K=V,...",
                   help="where to predict: a table file (.csv, .tsv, .parquet), a grid store, or one point as "
                        "key=value pairs, e.g. N=6.9e9,D=1.4e11 (repeatable for several points)")
    p.add_argument("--map", metavar="K=COL,...", help="for a table file: its columns, as for `fit` "
                   "(e.g. N=params,D=tokens,loss=c4_val_loss)")
    p.add_argument("--where", metavar="EXPR", help="predict only the rows where EXPR holds")
    p.add_argument("--points", default="final", choices=["final", "all"],
                   help="a table with is_final: predict its final rows only (default) or every row")
    p.add_argument("--interval", default="law", choices=["law", "run"],
                   help="law: the interval of the law's value from the bootstrap draws (default); run: plus "
                        "one run's scatter about the law (the fit's residuals)")
    p.add_argument("--ci", type=float, metavar="C", help="interval level (default: the fit's, e.g. 0.95)")
    p.add_argument("--out", metavar="FILE.csv", help="write every column at full precision as CSV")


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
    from scaling_grid.analysis.tables import fmt, fmt_interval, wrap
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
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body]
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


def _add_report_args(p: argparse.ArgumentParser) -> None:
    _add_fit_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (index.html, tables, plots)")
    p.add_argument("--no-predictions", action="store_true", help="for a grid store still running: do not predict "
                   "the unfinished cells' final loss nor keep the predictions in the store (default: predict, keep, "
                   "and score earlier predictions of cells finished since)")


def _prereg_lines(pre: dict[str, Any]) -> list[str]:
    from scaling_grid.analysis.tables import wrap
    lines = []
    if pre["pending"] is not None:
        n = len(pre["pending"]["cell"])
        lines.append(f"predicted the final loss of {n} unfinished cell(s) from the finished ones"
                     + (f"; kept in the store as predictions/{pre['key']}.json" if pre["written"] else
                        f"; the store already holds them (predictions/{pre['key']}.json)" if pre["key"] else ""))
    for r in pre["scored"]:
        s = r["summary"]
        if s["n"]:
            lines.append(f"predictions made {r['made']} ({r['key']}): {s['n']} of {r['n_predicted']} cells finished "
                         f"since; mean |rel error| {100 * s['mean_abs_rel_error']:.3g}%, max "
                         f"{100 * s['max_abs_rel_error']:.3g}%; {s['n_inside']} of {s['n']} inside the "
                         f"{100 * r['ci']:g}% interval")
    return wrap(lines + [f"note: {n}" for n in pre["notes"]], 100)


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

        from scaling_grid.grid.store import Store
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
        from scaling_grid.grid import prereg
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
    from scaling_grid.trainer import paths
    paths.check_writable(what, path)  # an unsupported scheme, gcsfs missing, a bucket that does not answer
    if paths.is_remote(path):
        return path
    local = paths.local(path) if paths.is_url(path) else path
    analysis.check_output(local, what, folder=True)
    return local


def _write_into(out: str, write: Callable[[str], Any]) -> str:
    """`write(folder)` into the output folder `out`. A report is many files written by matplotlib and
    plain file writers, which need a local disk: for a bucket URL they go to a temporary folder, copied
    under `out` afterwards. Returns the path `write` returned, under `out`."""
    import os
    import tempfile

    from scaling_grid.trainer import paths
    if not paths.is_remote(out):
        return str(write(out))
    with tempfile.TemporaryDirectory() as d:
        made = write(d)
        paths.upload_tree(d, out)
    return paths.join(out, os.path.relpath(made, d))


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {
    "prepare": (cmd_prepare, _add_config_args, "tokenize a corpus once into a token store"),
    "train": (cmd_train, _add_train_args, "train one model (resumes from its checkpoints)"),
    "config": (cmd_config, _add_config_cmd_args, "print every run config field with its default and meaning, "
               "or the resolved config of a run as YAML"),
    "compile": (cmd_compile, _add_compile_args, "compile a run config's or a grid's train steps for a TPU or GPU "
                "target with its real compiler (no chip needed): memory per device, kernels, collectives, FLOPs"),
    "run": (cmd_run, _add_run_args, "run a grid spec into a store: every cell not done (resumable, shardable)"),
    "status": (cmd_status, _add_store_arg, "table of a grid store's cells (works while the grid runs)"),
    "export": (cmd_export, _add_export_args, "write all points of a grid store as one tidy CSV/parquet table"),
    "fit": (cmd_fit, _add_fit_cmd_args, "fit a scaling law to a store or a table file; print the coefficient table"),
    "predict": (cmd_predict, _add_predict_args, "predict losses at new points from a fit's JSON, with intervals "
                "from its bootstrap draws (and score them against losses the table has)"),
    "report": (cmd_report, _add_report_args, "fit and write a self-contained report (HTML, tables, plots)"),
}


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version
    parser = argparse.ArgumentParser(prog="scaling-grid", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('scaling-grid')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_) in COMMANDS.items():
        description = help_
        if add_args in (_add_config_args, _add_train_args):  # they take a run config
            description += ". Run config fields: see `scaling-grid config` for every field, its default and meaning"
        add_args(sub.add_parser(name, help=help_, description=description))
    return parser


def _disk_full(e: BaseException | None) -> str | None:
    """The path of a 'no space left' error anywhere in an exception's chain (orbax and TensorStore
    wrap the OSError in their own exceptions), else None."""
    seen, found = set(), None
    while e is not None and id(e) not in seen:  # prefer an error that names the path
        seen.add(id(e))
        path = None
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            path = e.filename or "?"
        elif "No space left on device" in str(e):
            m = re.search(r'"(/[^"]+)"', str(e))
            path = m.group(1) if m else "?"
        if path not in (None, "?"):
            return path
        found = found or path
        e = e.__cause__ or e.__context__
    return found


def _one_line_library_errors(record: logging.LogRecord) -> bool:
    """orbax logs a full traceback from its save thread before the same error reaches us (hundreds of
    lines for a full disk); the command's own message says what happened, so keep one line, and drop
    asyncio's exit-time echoes of orbax's tasks that failed with it ('... was never retrieved')."""
    record.exc_info, record.exc_text = None, None
    return not (record.name == "asyncio" and "exception was never retrieved" in str(record.msg))


def _quiet_closed_loop_callbacks() -> None:
    """TensorStore's callbacks hand orbax's results to an asyncio loop that a failed save (or a
    restore that fell back) has already closed; each prints a 'RuntimeError: Event loop is closed'
    traceback (as an 'unraisable' exception), dozens after one failure. The failure itself is reported (or
    was harmless); these echoes are dropped."""
    def closed_loop(value: BaseException | None) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
    default_except, default_unraisable = sys.excepthook, sys.unraisablehook

    def except_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not closed_loop(value):
            default_except(kind, value, tb)

    def unraisable_hook(u: Any) -> None:  # TensorStore's callbacks report here, as 'unraisable'
        if not closed_loop(u.exc_value):
            default_unraisable(u)
    sys.excepthook, sys.unraisablehook = except_hook, unraisable_hook


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_one_line_library_errors)
    _quiet_closed_loop_callbacks()
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as e:
        print(f"scaling-grid {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        from scaling_grid.trainer import peers
        peers.check(e)  # a collective whose peer is gone: exit 75 once jax.distributed says so
        from scaling_grid.analysis import AnalysisError  # bad tables, unidentifiable coefficients
        if isinstance(e, AnalysisError):
            print(f"scaling-grid {args.command}: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        where = _disk_full(e)
        if where is None:
            raise
        print(f"scaling-grid {args.command}: error: no space left on the device"
              + ("" if where == "?" else f" writing {where}")
              + f" ({type(e).__name__}); free some space and run the same command again: it resumes from the last "
              "complete checkpoint, and what was written before is kept", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
