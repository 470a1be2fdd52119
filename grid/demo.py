"""`scaling-grid demo`: the embedded demo grid (configs/demo.yaml, shipped in the package) trained into
a store in the current folder, then its report; works from an installed wheel with no extras."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from scaling_grid.trainer import ConfigError

from .exits import EXIT_OK


def embedded_config(name: str) -> Path:
    """The path of a config shipped in the package (configs/NAME: the repository's configs/ folder,
    linked as src/scaling_grid/configs, copied into a wheel as package data)."""
    path = Path(str(resources.files("scaling_grid").joinpath("configs", name)))
    if not path.is_file():
        raise ConfigError(f"the embedded config {name!r} is missing from this install ({path}): reinstall "
                          "scaling-grid (pip install scaling-grid, or pip install . in a clone)")
    return path


def cmd_demo(args: argparse.Namespace, main: Callable[[list[str]], int]) -> int:
    """`run` of the embedded spec into --store, then `report` into --out, through the CLI's own `main`
    (the same checks, messages and exit codes as the two commands typed by hand)."""
    spec = embedded_config("demo.yaml")
    out = args.out if "://" in args.out else str(Path(args.out).absolute())  # the report's line names it in full
    print(f"demo: the grid {spec}\n  trains into {args.store} (resumable: run `scaling-grid demo` again after an "
          f"interruption),\n  then its report goes to {out}", flush=True)
    flags = (["--dry-run"] if args.dry_run else []) + (["--no-progress"] if args.no_progress else [])
    code = main(["run", str(spec), "--store", args.store, *flags])
    if code != EXIT_OK or args.dry_run:
        return code
    return main(["report", args.store, "--out", out])
