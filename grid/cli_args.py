"""The arguments of each `scaling-grid` subcommand (argparse): one function per subcommand, or per
group of arguments several share."""
from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config (defaults: the embedded Shakespeare corpus)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. model.width=256 train.tokens=20M")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """A run config, plus train's flags (before the config or after the overrides: argparse cannot
    take them in between)."""
    add_config_args(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (plain lines: one per eval and every 30 s, as when not on a terminal)")
    p.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files to DIR/<out_dir "
                   "name> (needs tensorboardX); view with tensorboard --logdir DIR")
    p.add_argument("--wandb", metavar="PROJECT", help="also log to Weights & Biases project PROJECT (needs "
                   "wandb; WANDB_MODE=offline logs locally)")
    p.add_argument("--wandb-group", metavar="NAME", help="the W&B run's group (default: none)")
    add_distributed_args(p, "all processes train this run together, each feeding its share of the batch")
    add_compile_cache_arg(p)


def add_compile_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile-cache", metavar="DIR|URL", help="JAX's persistent compilation cache: a folder or a "
                   "gs:// URL that every host shares (default: $SCALING_GRID_COMPILE_CACHE, else "
                   "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/scaling-grid/jax)")


def add_config_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config to resolve (none and no overrides: list the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides to resolve with it, "
                   "e.g. model.width=256 data.documents=blank_lines")


def add_run_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--wandb-group", metavar="NAME", help="the W&B group of the grid's runs (default: the spec's "
                   "name)")
    p.add_argument("--wide", action="store_true", help="dry run: every column, whatever the terminal width")
    add_target_arg(p)
    add_distributed_args(p, "every process runs each cell together")
    add_compile_cache_arg(p)


def add_distributed_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--distributed", action="store_true", help=f"join a multi-process JAX job ({what}); without "
                   "the three flags below JAX detects TPU VMs, SLURM, Open MPI and Kubernetes by itself")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address")
    p.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: processes in the job")
    p.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this process, 0..N-1")
    p.add_argument("--peer-timeout", type=float, default=60.0, metavar="S", help="with --distributed: a process "
                   "that does not join or stops answering within S seconds is lost: every process stops with exit 75 "
                   "(the running cell preempted; relaunch all to resume) (default 60)")


def add_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config or grid spec (a spec compiles each distinct shape "
                   "of its cells, packs included)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of a run config")
    add_target_arg(p, required=True)
    p.add_argument("--json", metavar="FILE", help="also write one JSON object per shape to FILE")


def add_target_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--target", required=required, metavar="T", help="compile for this accelerator with its real "
                   "compiler, no chip needed: tpu:v5e:2x4, tpu:v4:2x2x1, tpu:v5p:2x2x2, tpu:v6e:2x2, gpu:h100, "
                   "gpu:h100:8, gpu:a100 (needs the aot extra)")


def add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="grid store (a folder or a kvstore URL), or the out_dir of a `train` run")
    if p.prog.split()[-1] == "status":  # export shares the argument above
        p.add_argument("--wide", action="store_true", help="every column and whole notes, whatever the width "
                       "(default: rows fit 100 columns)")


def add_grow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the grid spec to grow (YAML)")
    p.add_argument("--tokens", default="", metavar="T,...", help="token budgets to add, e.g. 4M,8M (a wsd grid: each "
                   "larger than its largest; its trunks are extended, not retrained)")
    p.add_argument("--widths", default="", metavar="M,...", help="widths to add")
    p.add_argument("--depths", default="", metavar="L,...", help="depths to add")
    p.add_argument("--out", required=True, metavar="FILE", help="where the grown spec goes (every earlier cell "
                   "keeps its id in it)")
    p.add_argument("--store", metavar="DIR|URL", help="also record the grown spec's cells in this grid store before "
                   "they train, so that `report STORE` pre-registers their final losses")


def add_export_args(p: argparse.ArgumentParser) -> None:
    add_store_arg(p)
    p.add_argument("--out", help="output file, .csv or .parquet (default: <store>/export.csv for a local store)")


def add_fit_args(p: argparse.ArgumentParser) -> None:
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


def add_fit_cmd_args(p: argparse.ArgumentParser) -> None:
    add_fit_args(p)
    p.add_argument("--json", metavar="FILE",
                   help="write the full fit (intervals, derived quantities, exclusions) as JSON")
    p.add_argument("--wide", action="store_true", help="print the full table, one row per variant (wider than 100 "
                   "columns); default: one row per quantity, 100 columns, numbers to their intervals' precision")
    p.add_argument("--holdout", metavar="EXPR", help="fit on the points where EXPR does not hold; predict the "
                   "points where it holds, with intervals, and score them (e.g. 'N >= 1e9')")
    p.add_argument("--interval", default="law", choices=["law", "run"],
                   help="with --holdout: the interval of the law's value (fit uncertainty, default), or of one "
                        "run's loss (plus the fit's residual scatter)")


def add_predict_args(p: argparse.ArgumentParser) -> None:
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


def add_report_args(p: argparse.ArgumentParser) -> None:
    add_fit_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (index.html, tables, plots)")
    p.add_argument("--no-predictions", action="store_true", help="for a grid store still running: do not predict "
                   "the unfinished cells' final loss nor keep the predictions in the store (default: predict, keep, "
                   "and score earlier predictions of cells finished since)")


def add_design_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", required=True, metavar="FLOPS|Nh",
                   help="what may be spent: FLOPs (3e19), or hours (500h) with --throughput")
    p.add_argument("--throughput", metavar="FILE", help="for a budget in hours: JSON lines of "
                   "benchmarks/throughput.py (flops_per_token x tokens_per_s; the median is used) or "
                   "{\"flops_per_s\": X}")
    p.add_argument("--target", metavar="T", help="for a budget in hours: the accelerator (tpu:v5e:4x4, gpu:h100:8, "
                   "as for `compile`), at its vendor peak times --mfu")
    p.add_argument("--mfu", type=float, metavar="F", help="with --target: the fraction of peak the runs reach "
                   "(measure it: benchmarks/throughput.py on one chip)")
    p.add_argument("--goal", action="append", metavar="Q", help="a quantity to pin (repeatable): m/l*, c_l, c_m, "
                   "c_tau, L0, alpha_tau, alpha_m, alpha_l (these fit free exponents and keep 3 levels per axis) or "
                   "'L*(C=1e21)'; default m/l* and c_l")
    p.add_argument("--prior", metavar="FIT.json", help="the values the design is optimal at: a `fit --json` file "
                   "(a pilot grid or a published fit); default: docs/design.md")
    p.add_argument("--noise", type=float, metavar="S", help="relative noise of a cell's final loss (sd of log L); "
                   "default: the prior fit's residual rms, else 0.01")
    p.add_argument("--widths", metavar="M,...", help="candidate widths, e.g. 16,32,64,128")
    p.add_argument("--depths", metavar="L,...", help="candidate depths, e.g. 1,2,4,8")
    p.add_argument("--tokens", metavar="D,...", help="candidate token budgets, e.g. 256k,1M,4M")
    p.add_argument("--lrs", metavar="LR,...", help="candidate peak lrs (optional)")
    p.add_argument("--seeds", metavar="S,...", help="candidate seeds (optional): replicates the design may place")
    p.add_argument("--base", metavar="SPEC", help="a grid spec whose base, rules and tokens_mode the design keeps "
                   "(default: the demo grid's, wsd)")
    p.add_argument("--tokens-mode", choices=["separate", "wsd"], help="override the base's tokens_mode")
    p.add_argument("--candidates", metavar="TABLE", help="choose among a table's rows instead of axes")
    p.add_argument("--from", dest="from_store", metavar="STORE", help="grow a grid that has run: its finished "
                   "cells are data and their FLOPs spent (of --budget); proposes values of --tokens/--widths/"
                   "--depths to add, as an extension of its spec (every cell keeps its id); --out writes it and "
                   "records the new cells in STORE for pre-registration")
    p.add_argument("--map", metavar="K=COL,...", help="for --candidates: columns as for `fit`, plus flops=COLUMN "
                   "for a cost column (default: flops_per_token x tokens, else 6 N D)")
    p.add_argument("--out", metavar="FILE", help="write the design: a grid spec (axes) or a CSV of the chosen rows "
                   "with all their columns (--candidates)")
    p.add_argument("--simulate", type=int, default=20, metavar="N", help="check the design and its baseline on N "
                   "grids simulated from the prior and fitted (default 20; 0: skip)")
    p.add_argument("--sim-boot", type=int, default=200, metavar="B",
                   help="bootstrap draws per simulated fit (default 200)")


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="stores/demo", help="grid store to train into (default: stores/demo, under "
                   "the current folder; run again to resume)")
    p.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo, under the "
                   "current folder)")
    p.add_argument("--dry-run", action="store_true", help="print the demo grid's plan (cells, sizes, estimated "
                   "time) and exit; trains nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per cell)")
