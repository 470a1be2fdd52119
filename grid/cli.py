"""The `scaling-grid` command line. Subcommands are thin wrappers over library functions."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

# Exit codes a launcher or a job scheduler can act on.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED = 0, 1, 2, 3, 143


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config (defaults: the embedded Shakespeare corpus)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. model.width=256 train.tokens=20M")


def _load_config(args: argparse.Namespace):
    from scaling_grid.trainer import config as C
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:  # no config file given, only overrides
        path, overrides = None, [path] + overrides
    return C.load(path, overrides)


def cmd_prepare(args: argparse.Namespace) -> int:
    from scaling_grid.trainer import data
    cfg = _load_config(args)
    store = data.prepare(cfg.data)
    print(f"token store: {store.path}  train {store.n_train:,} tokens, val {store.n_val:,} tokens, "
          f"vocab {store.vocab_size}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from scaling_grid.trainer import loop
    cfg = _load_config(args)
    result = loop.train_cli(cfg)
    return {"done": EXIT_OK, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED}.get(result.status, EXIT_FAILED)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {
    "prepare": (cmd_prepare, _add_config_args, "tokenize a corpus once into a token store"),
    "train": (cmd_train, _add_config_args, "train one model (resumes from its checkpoints)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling-grid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help_) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scaling_grid.trainer.config import ConfigError
    try:
        return COMMANDS[args.command][0](args)
    except ConfigError as e:
        print(f"scaling-grid {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
