"""The input subcommands of ``lit-snapvideo``: ``config`` (print the merged configuration) and ``data`` (make the
embedded moving-shapes set, check a data folder). Same pattern as :mod:`.cli`: ``add_<name>(subparsers)`` declares
the arguments, ``_run_*`` does the work with heavy imports kept lazy.
"""

from __future__ import annotations

import argparse

from .errors import UserError

# ---- config -----------------------------------------------------------------------------------


def add_config(sub: argparse._SubParsersAction) -> None:
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


def add_data(sub: argparse._SubParsersAction) -> None:
    from .config import DataConfig

    d = DataConfig()
    p = sub.add_parser(
        "data",
        help="make the embedded moving-shapes set, or check a data folder",
        description="Data set tools (formats: data/README.md).",
    )
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    shapes = tools.add_parser("shapes", help="generate the captioned moving-shapes set (mp4 + png + manifest.csv)")
    shapes.add_argument(
        "--variant",
        choices=("full", "simple"),
        default="full",
        help="full: two objects, bouncing and checkered backgrounds too; simple: one large object on a "
        "plain background (the CPU ablation's set, data/shapes_simple). Default full",
    )
    shapes.add_argument(
        "--out", default=None, help=f"output folder (default {d.root}, or data/shapes_simple for --variant simple)"
    )
    shapes.add_argument("--n-train", type=int, default=d.n_train, help=f"training clips (default {d.n_train})")
    shapes.add_argument("--n-val", type=int, default=d.n_val, help=f"validation clips (default {d.n_val})")
    shapes.add_argument("--seed", type=int, default=d.seed, help="same seed, same attributes and captions")
    shapes.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    shapes.set_defaults(run=_run_data_shapes)
    check = tools.add_parser(
        "check",
        help="load every file of a data set once; list the ones training would skip",
        description="Load every file as training would and list the ones it would skip (too "
        "short for the frame count included). Exit status 2 when no file can be used.",
    )
    check.add_argument(
        "root", nargs="?", help="a folder of videos/images or a manifest (.csv/.jsonl); default: data.root of --config"
    )
    check.add_argument(
        "--manifest", default=None, help="manifest inside root (default: root/manifest.{csv,jsonl} if present)"
    )
    check.add_argument(
        "--config",
        help="experiment YAML: check at its data.frames, data.size and data.fps_choices "
        "(and its data.root and data.manifest when no root is given)",
    )
    check.add_argument(
        "--frames",
        type=int,
        default=None,
        help=f"frames a clip must have, as training's data.frames (default: --config's, else {d.frames})",
    )
    check.set_defaults(run=_run_data_check)


def _run_data_shapes(args: argparse.Namespace) -> None:
    import time

    from .data.shapes import EMBEDDED_ROOTS, generate_shapes

    if args.n_train < 1 or args.n_val < 0:
        raise UserError(f"--n-train must be >= 1 and --n-val >= 0 (got {args.n_train}, {args.n_val})")
    started = time.perf_counter()
    out = args.out or next(root for root, variant in EMBEDDED_ROOTS.items() if variant == args.variant)
    manifest = generate_shapes(
        out, args.n_train, args.n_val, seed=args.seed, workers=args.workers, variant=args.variant
    )
    seconds = time.perf_counter() - started
    n = args.n_train + args.n_val
    print(f"wrote {n} clips in {seconds:.1f} s ({n / seconds:.1f} clips/s) -> {manifest}")


def _run_data_check(args: argparse.Namespace) -> None:
    from .config import DataConfig, load_config
    from .data.datamodule import validation_set
    from .data.datasets import ClipDataset, DataError, SkipLog, check_batch_size, check_validation_set, load_records
    from .data.video import BadFileError

    d = load_config(args.config).data if args.config else DataConfig()
    if args.root is None and not args.config:
        raise UserError("data check: give a data ROOT or --config EXPERIMENT.yaml")
    root, manifest = (args.root, args.manifest) if args.root else (d.root, args.manifest or d.manifest)
    frames = d.frames if args.frames is None else args.frames
    if frames < 1:
        raise UserError(f"--frames {frames}: expected an integer >= 1")
    skips = SkipLog()
    train, val = load_records(root, manifest, skips)
    records = list({r.path: r for r in train + val}.values())  # a one-record set is in both splits
    dataset = ClipDataset(records, frames, d.size, fps_choices=d.fps_choices, skip_log=skips)
    usable, first_bad = 0, None
    for index in range(len(dataset)):
        try:
            dataset.load(index)
            usable += 1
        except BadFileError as err:
            skips.add(err)  # one warning line each on stderr
            first_bad = first_bad or err
    print(
        f"{len(train)} train + {len(val)} val records; {skips.count()} file(s) would be skipped "
        f"(checked at {frames} frames of {d.size[0]}x{d.size[1]})"
    )
    if usable == 0:
        raise DataError(
            f"{root}: none of its {len(records)} file(s) can be used at {frames} frames (e.g. {first_bad}); "
            "the warnings above list each one"
        )
    # what fit refuses before its first step
    check_validation_set(validation_set(val, d, skips, frames), root)
    if args.config:  # a batch size of its own: the defaults' would judge a small set by a recipe it is not for
        check_batch_size(d.batch_size, len(train), root)
