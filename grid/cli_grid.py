"""The `scaling-grid` subcommands of one run and of a grid: prepare, train, config, compile, run,
grow, status and export. Each is a thin wrapper over library functions; cli.py dispatches to it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scaling_grid import trainer as T
from scaling_grid.trainer import ConfigError

from .exits import EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED

if TYPE_CHECKING:
    from scaling_grid.trainer import Distributed, RunConfig


def load_config(args: argparse.Namespace) -> RunConfig:
    """The run config of `config [overrides]` (a first argument with '=' is an override)."""
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:  # no config file given, only overrides
        path, overrides = None, [path] + overrides
    return T.load(path, overrides)


def cmd_prepare(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = T.prepare(cfg.data)
    print(f"token store: {store.path}  train {store.n_train:,} tokens, val {store.n_val:,} tokens, "
          f"vocab {store.vocab_size}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    tensorboard = T.require_local("--tensorboard", args.tensorboard)
    T.setup(_distributed(args), args.compile_cache)  # before anything starts a JAX backend
    T.by_default(lambda why, _: f"run {cfg.out_dir} (last checkpoint: step "  # what a lost peer's line names
                 f"{max(T.saved_steps(T.path_of(cfg.out_dir) / 'checkpoints'), default=0)})")
    result = T.train_cli(cfg, progress=not args.no_progress, tensorboard=tensorboard, wandb=args.wandb,
                         wandb_group=args.wandb_group)
    return {"done": EXIT_OK, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED}.get(result.status, EXIT_FAILED)


def cmd_config(args: argparse.Namespace) -> int:
    if args.config is None and not args.overrides:
        print("# Every run config field with its default and meaning. Set fields in a YAML file of these sections,\n"
              "# or on the command line as section.key=value (e.g. model.width=256 train.tokens=20M).")
        print(T.describe(), end="")
    else:
        cfg = load_config(args)  # checked as train would check it
        print("# The resolved config of this run (file, overrides, defaults); each value's meaning, and its\n"
              "# default where it differs. `scaling-grid train` with the same arguments runs this config.")
        print(T.describe(cfg), end="")
    return EXIT_OK


def _distributed(args: argparse.Namespace) -> Distributed | None:
    d = T.Distributed(args.coordinator, args.num_processes, args.process_id, peer_timeout=args.peer_timeout)
    if not args.distributed:
        if d != T.Distributed(peer_timeout=args.peer_timeout):
            raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")
        return None
    d.check()
    return d


def cmd_run(args: argparse.Namespace) -> int:
    if args.target:
        _host_only()
    from . import launch, plan
    from .options import Options
    from .spec import parse_shard
    shard = parse_shard(args.shard)
    for flag, value in (("--status-every", args.status_every), ("--stale-after", args.stale_after)):
        if not 0 < value < float("inf"):
            raise ConfigError(f"{flag}={value:g}: must be a positive number of seconds")
    store = args.store or str(Path("stores") / Path(args.spec).stem)
    opts = Options(store=store, shard=shard, checkpoints=args.checkpoints, status_every=args.status_every,
                   stale_after=args.stale_after, memory_check=not args.no_memory_check,
                   measure=not args.no_measure, progress=not args.no_progress,
                   retry_failed=not args.no_retry_failed, distributed=_distributed(args),
                   tensorboard=T.require_local("--tensorboard", args.tensorboard), wandb=args.wandb,
                   wandb_group=args.wandb_group, wide=args.wide, compile_cache=args.compile_cache, target=args.target)
    if args.target and not args.dry_run:
        raise ConfigError("--target goes with --dry-run (it compiles for a chip that need not be here); a run "
                          "trains on the devices JAX sees")
    if args.dry_run:
        print(plan.plan_text(args.spec, opts))
        return EXIT_OK
    try:
        return launch.run(args.spec, opts)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _host_only() -> None:
    """Compiling for a target runs nothing on this host's accelerator: keep JAX on the CPU, so the aot
    extra's TPU and CUDA plugins do not probe for chips (and warn) on a machine without them."""
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def cmd_compile(args: argparse.Namespace) -> int:
    _host_only()
    from . import aot
    target = T.parse_target(args.target)
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


def cmd_grow(args: argparse.Namespace) -> int:
    from .grow import grow_spec, register_cells

    def values(text: str) -> list[str]:
        return [v.strip() for v in text.split(",") if v.strip()]
    try:
        widths, depths = [int(v) for v in values(args.widths)], [int(v) for v in values(args.depths)]
    except ValueError:
        raise ConfigError(f"--widths={args.widths!r} --depths={args.depths!r}: expected integers, e.g. 64,96") from None
    if not (args.tokens or widths or depths):
        raise ConfigError("nothing to add: give --tokens, --widths or --depths")
    text = grow_spec(T.read_yaml_text(Path(args.spec), "grid spec"), values(args.tokens), widths, depths)
    Path(args.out).write_text(text)
    print(f"grown spec -> {args.out} (every cell of {args.spec} keeps its id)")
    if args.store:
        pending = register_cells(args.out, args.store)
        print(f"recorded in {args.store}: {len(pending)} cell(s) to train; `scaling-grid report {args.store}` "
              f"pre-registers their final losses, `scaling-grid run {args.out} --store {args.store}` trains them")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .status import format_status, status_rows
    rows = status_rows(args.store)
    print(format_status(rows, args.store, wide=args.wide))
    return EXIT_FAILED if any(r["state"] == "damaged" for r in rows) else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from scaling_grid import analysis

    from .export import export_table, write_table
    from .store import is_url
    out = args.out
    if out is None:  # beside the store, also in a bucket
        out = T.join(args.store, "export.csv") if is_url(args.store) else str(Path(args.store) / "export.csv")
    if Path(out).suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out={out!r}: expected a .csv or .parquet file name")
    T.check_scheme("--out", out)
    if T.is_remote(out):  # before reading the store: the bucket answers, and takes a write
        T.check_writable("--out", out.rsplit("/", 1)[0])
    else:
        out = T.local(out) if T.is_url(out) else out  # file://
        if Path(out).is_dir():
            raise ConfigError(f"--out={out!r}: is a folder; give a file name")
        analysis.check_output(Path(out).parent, "--out", folder=True)  # before reading the store
        try:  # permissions can say yes where the file system says no (/proc, a read-only mount)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out={out!r}: its folder cannot be created ({e.strerror})") from None
    table = export_table(args.store)
    path = write_table(table, out)
    n = len(table["step"])
    print(f"{n:,} rows x {len(table)} columns ({int(table['is_final'].sum())} final points, "
          f"{len(set(table['cell']))} cells) -> {path}")
    return EXIT_OK
