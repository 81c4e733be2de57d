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


# ---- data -------------------------------------------------------------------------------------


def _add_data(sub: argparse._SubParsersAction) -> None:
    from .config import DataConfig

    d = DataConfig()
    p = sub.add_parser("data", help="make the embedded moving-shapes set, or check a data folder",
                       description="Data set tools (formats: data/README.md).")
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    shapes = tools.add_parser("shapes", help="generate the captioned moving-shapes set (mp4 + png + manifest.csv)")
    shapes.add_argument("--out", default=d.root, help=f"output folder (default {d.root})")
    shapes.add_argument("--n-train", type=int, default=d.n_train, help=f"training clips (default {d.n_train})")
    shapes.add_argument("--n-val", type=int, default=d.n_val, help=f"validation clips (default {d.n_val})")
    shapes.add_argument("--seed", type=int, default=d.seed, help="same seed, same attributes and captions")
    shapes.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    shapes.set_defaults(run=_run_data_shapes)
    check = tools.add_parser("check", help="load every file of a data set once; list the ones training would skip")
    check.add_argument("root", help="a folder of videos/images or a manifest (.csv/.jsonl)")
    check.add_argument("--manifest", default=None, help="manifest inside root (default: root/manifest.{csv,jsonl} if present)")
    check.set_defaults(run=_run_data_check)


def _run_data_shapes(args: argparse.Namespace) -> None:
    import time

    from .data.datasets import generate_shapes

    if args.n_train < 1 or args.n_val < 0:
        raise UserError(f"--n-train must be >= 1 and --n-val >= 0 (got {args.n_train}, {args.n_val})")
    started = time.perf_counter()
    manifest = generate_shapes(args.out, args.n_train, args.n_val, seed=args.seed, workers=args.workers)
    seconds = time.perf_counter() - started
    n = args.n_train + args.n_val
    print(f"wrote {n} clips in {seconds:.1f} s ({n / seconds:.1f} clips/s) -> {manifest}")


def _run_data_check(args: argparse.Namespace) -> None:
    import tempfile

    from .config import DataConfig
    from .data.datasets import ClipDataset, DataError, SkipLog, load_records
    from .data.video import BadFileError

    d = DataConfig()
    try:
        train, val = load_records(args.root, args.manifest)
    except DataError as err:
        raise UserError(str(err)) from None
    with tempfile.TemporaryDirectory() as folder:
        skips = SkipLog(folder)
        dataset = ClipDataset(train + val, d.frames, d.size, d.pad_to, d.fps_choices, False, skips)
        for index in range(len(dataset)):
            try:
                dataset.load(index)
            except BadFileError as err:
                skips.add(err)  # one warning line each on stderr
        print(f"{len(train)} train + {len(val)} val records; {skips.count()} file(s) would be skipped")


# ---- fit --------------------------------------------------------------------------------------


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="train a backbone (FIT or U-Net) under Snap-EDM",
        description="Train the experiment's backbone. The run lives in runs/<experiment>/<version>/ (merged config, "
        "TensorBoard events, checkpoints/{last,best}.ckpt, samples/*.gif, summary.json). Rerunning the same "
        "experiment resumes from last.ckpt; --new-version starts a fresh run beside it.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/ablation/fit.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. trainer.max_steps=200 data.root=/videos")
    p.add_argument("--resume", action="store_true", help="resume from last.ckpt (the default when it exists; "
                   "kept for explicitness: errors out when there is nothing to resume)")
    p.add_argument("--new-version", action="store_true", help="start a fresh run in the next free version folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(run=_run_fit)


def _run_fit(args: argparse.Namespace) -> None:
    import json
    import logging

    from .config import load_config
    from .train import fit, run_dir_of

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    last = run_dir_of(cfg) / "checkpoints" / "last.ckpt"
    if args.resume and (args.new_version or not last.exists()):
        raise UserError(f"--resume: no checkpoint at {last}" if not args.new_version
                        else "--resume and --new-version exclude each other")
    run_dir = fit(cfg, resume=not args.new_version, new_version=args.new_version,
                  enable_progress_bar=not args.no_progress)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f} s, final val loss "
          f"{summary['final_val_loss']}, run directory {run_dir}")


# ---- compare ----------------------------------------------------------------------------------


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="tabulate finished runs beside the paper's Table 2 (markdown)",
                       description="Read each run directory's summary.json (and metrics.json if evaluated) and "
                       "write a markdown table with the paper's Table 2 rows beside.")
    p.add_argument("runs", nargs="+", help="run directories, e.g. runs/fit/version_0 runs/unet/version_0")
    p.add_argument("--out", default="results/ablation.md", help="markdown file to write (default results/ablation.md)")
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> None:
    from .report import compare_runs

    print(compare_runs(args.runs, args.out), end="")
    print(f"wrote {args.out}")


# ---- main -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_config, _add_data, _add_fit, _add_compare]


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
