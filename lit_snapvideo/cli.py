"""The one entry point: ``lit-snapvideo SUBCOMMAND ...`` (also ``python -m lit_snapvideo``).

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and ``_run_<name>(args)`` does the
work, importing heavy modules lazily so ``--help`` stays fast. A subcommand is listed only once it works.
Bad user input (config, paths) exits with status 2 and one error line, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub (no network, ~50 s stalls)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


# ---- config -----------------------------------------------------------------------------------


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the merged, validated config of an experiment",
        description="Load an experiment YAML (following its 'base:' chain), apply key.path=value overrides, "
        "validate, and print the merged config.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/ablation/fit.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. trainer.max_steps=200")
    p.set_defaults(run=_run_config)


def _run_config(args: argparse.Namespace) -> None:
    from .config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")


# ---- main -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_config]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-snapvideo",
        description="Snap Video reproduction kit: Snap-EDM diffusion, FIT transformer vs 3D U-Net, on Lightning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except (ConfigError, UserError, FileNotFoundError) as err:
        print(f"lit-snapvideo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lit-snapvideo {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
