"""The one entry point: ``lit-snapvideo SUBCOMMAND ...`` (also ``python -m lit_snapvideo``).

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and ``_run_<name>(args)`` does the
work, importing heavy modules lazily so ``--help`` stays fast. A subcommand is listed only once it works.
The input subcommands, ``config`` and ``data``, live in :mod:`.cli_data`; the measuring ones, ``bench``,
``gpu-check`` and ``upsampler-eval``, in :mod:`.cli_measure`; ``sample`` in :mod:`.cli_sample`.
Bad user input (config, data, checkpoints, options) is a :class:`~lit_snapvideo.errors.UserError`: it exits with
status 2 and one error line, no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .cli_data import add_config, add_data
from .cli_measure import add_bench, add_gpu_check, add_upsampler_eval
from .cli_sample import add_sample, load_checkpoint
from .errors import UserError, one_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub (no network, ~50 s stalls)


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
    p.add_argument(
        "overrides", nargs="*", help="key.path=value overrides, e.g. trainer.max_steps=200 data.root=/videos"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume from last.ckpt (the default when it exists; "
        "kept for explicitness: errors out when there is nothing to resume)",
    )
    p.add_argument("--new-version", action="store_true", help="start a fresh run in the next free version folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(run=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    import logging
    import shlex

    from .callbacks import TrainingStopped
    from .config import load_config
    from .train import fit, read_summary, run_dir_of

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    last = run_dir_of(cfg) / "checkpoints" / "last.ckpt"
    if args.resume and (args.new_version or not last.exists()):
        raise UserError(
            f"--resume: no checkpoint at {last}"
            if not args.new_version
            else "--resume and --new-version exclude each other"
        )
    try:
        run_dir = fit(
            cfg, resume=not args.new_version, new_version=args.new_version, enable_progress_bar=not args.no_progress
        )
    except TrainingStopped as stop:
        # the rerun that resumes it: the same command, naming the version a --new-version run took
        again = ["lit-snapvideo", "fit", args.config, *args.overrides]
        if args.new_version:
            again.append(f"logging.version={cfg.logging.version}")
        print(f"lit-snapvideo fit: {stop}; resume with: {shlex.join(again)}", file=sys.stderr)
        return stop.exit_status
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # another DDP rank: rank 0 writes summary.json and reports
        return 0
    summary = read_summary(run_dir / "summary.json")
    print(
        f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f} s, final val loss "
        f"{summary['final_val_loss']}, run directory {run_dir}"
    )
    return 0


# ---- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="sample a checkpoint on validation captions and score it (metrics.json)",
        description="Generate videos for the run's validation captions and score them. Offline by default: the "
        "embedded set's probe metrics (prompt accuracy, probe-FVD, temporal consistency; they do not compare with "
        "published FVD; skipped on other data, whose validation captions are then the prompts). With detector "
        "files you bring: FVD (TorchScript I3D, stylegan-v protocol), per-frame FID (TorchScript Inception), "
        "CLIPSIM (open_clip checkpoint). Writes metrics.json in the run directory.",
    )
    p.add_argument("checkpoint", help="a .ckpt written by lit-snapvideo fit (a folder under trainer.strategy=fsdp)")
    p.add_argument("--num-videos", type=int, default=32, help="videos per seed (default 32)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds; metrics report mean and std")
    p.add_argument("--steps", type=int, default=32, help="Heun steps (default 32)")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance weight")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fvd-detector", help="path to a TorchScript I3D (i3d_torchscript.pt)")
    p.add_argument("--fid-detector", help="path to a TorchScript Inception feature network")
    p.add_argument("--clip-model", help="open_clip model name for CLIPSIM, e.g. ViT-B-32")
    p.add_argument("--clip-checkpoint", help="path to that open_clip model's weights")
    p.add_argument(
        "--sigma-max",
        type=float,
        default=None,
        help="the sampler's starting sigma (default: the run's diffusion.sigma_max)",
    )
    p.add_argument("--out", help="metrics file (default: <run dir>/metrics.json)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    import json
    import math

    from .evaluate import evaluate_checkpoint

    if args.num_videos < 1 or args.steps < 1:
        raise UserError(f"--num-videos and --steps must be >= 1 (got {args.num_videos}, {args.steps})")
    if not math.isfinite(args.cfg):
        raise UserError(f"--cfg {args.cfg}: expected a finite guidance weight")
    if bool(args.clip_model) != bool(args.clip_checkpoint):
        raise UserError("CLIPSIM needs both --clip-model and --clip-checkpoint")
    for flag in ("fvd_detector", "fid_detector", "clip_checkpoint"):
        path = getattr(args, flag)
        if path:
            from pathlib import Path

            if not Path(path).is_file():
                raise UserError(f"--{flag.replace('_', '-')} {path}: file not found")
    module = load_checkpoint(args.checkpoint)  # clear errors before any work
    if module.spec.upsampler:
        raise UserError(f"{args.checkpoint} is an upsampler; its measure is lit-snapvideo upsampler-eval")
    if args.sigma_max is not None:
        if not args.sigma_max > module.cfg.diffusion.sigma_min:
            raise UserError(
                f"--sigma-max must be > the run's sigma_min {module.cfg.diffusion.sigma_min}, got {args.sigma_max}"
            )
        module.cfg.diffusion.sigma_max = args.sigma_max
    try:
        metrics = evaluate_checkpoint(
            args.checkpoint,
            args.num_videos,
            args.steps,
            args.cfg,
            args.seeds,
            args.batch_size,
            args.fvd_detector,
            args.fid_detector,
            args.clip_model,
            args.clip_checkpoint,
            out=args.out,
            module=module,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))


# ---- probe ------------------------------------------------------------------------------------


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="train (or load) the embedded set's probe network for an experiment's data",
        description="The probe (a small video classifier of shape, colour and direction) scores "
        "samples offline: prompt accuracy and probe-FVD. It is cached per data set in .cache/probe; "
        "this command trains it ahead of a run and prints its validation accuracy.",
    )
    p.add_argument("config", help="experiment YAML whose data set the probe is for")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(run=_run_probe)


def _run_probe(args: argparse.Namespace) -> None:
    import logging

    from .config import load_config
    from .metrics.probe import probe_for

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    try:
        probe = probe_for(cfg)
    except ValueError as err:
        raise UserError(str(err)) from None
    acc = probe.meta.get("val_accuracy", {})
    print(
        "probe validation accuracy: "
        + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        + f" (trained in {probe.meta.get('train_seconds', 0):.0f} s)"
    )


# ---- compare ----------------------------------------------------------------------------------


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="tabulate finished runs beside the paper's Table 2 (markdown)",
        description="Read each run directory's summary.json (and metrics.json if evaluated) and "
        "write a markdown table with the paper's Table 2 rows beside.",
    )
    p.add_argument("runs", nargs="+", help="run directories, e.g. runs/fit/version_0 runs/unet/version_0")
    p.add_argument("--out", default="results/ablation.md", help="markdown file to write (default results/ablation.md)")
    p.add_argument(
        "--table",
        choices=("architectures", "sigma"),
        default="architectures",
        help="architectures: paper Table 2 layout; sigma: Table 3 (runs named sigma_*)",
    )
    p.add_argument("--plot", help="also write a PNG of the runs' TensorBoard curves (e.g. docs/curves.png)")
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> None:
    from .report import compare_runs, sigma_report

    report = sigma_report if args.table == "sigma" else compare_runs
    print(report(args.runs, args.out), end="")
    if args.plot:
        from .report import plot_curves

        print(f"wrote {plot_curves(args.runs, args.plot)}")
    print(f"wrote {args.out}")


# ---- models -------------------------------------------------------------------------------------


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the backbone presets with parameters and forward GFLOPs per video",
        description="Every preset of lit_snapvideo/models/presets.py, counted on the meta device "
        "(nothing allocated): parameters (text encoder excluded) and FLOPs of one forward pass "
        "per video (torch's FlopCounterMode).",
    )
    p.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[40, 64],
        metavar=("H", "W"),
        help="padded frame size the backbone sees (default 40 64)",
    )
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> None:
    from .models.presets import PAPER_PRESETS, PRESETS, count_parameters, forward_flops, reference_text_dim

    print(
        f"{'preset':<11} {'kind':<5} {'paper':>6} {'params':>10} {'GFLOPs/video':>13}  "
        f"(forward, {args.frames}x{args.size[0]}x{args.size[1]}, text width per preset)"
    )
    for name, spec in PRESETS.items():
        text_dim = reference_text_dim(name)
        try:
            flops = f"{forward_flops(name, args.frames, tuple(args.size), text_dim=text_dim) / 1e9:13.2f}"
        except ValueError as err:  # the size does not divide into this preset's patches/groups/levels
            flops = f"{'n/a':>13}  ({err})"
        size = PAPER_PRESETS.get(name)
        paper = "-" if size is None else f"{size / 1e9:.1f}B" if size >= 1e9 else f"{size / 1e6:.0f}M"
        params = count_parameters(name, text_dim=text_dim) / 1e6
        print(f"{name:<11} {spec['kind']:<5} {paper:>6} {params:9.1f}M {flops}")


# ---- sweep ------------------------------------------------------------------------------------


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from .sweeps import CFG_WEIGHTS, CPU_MAX_STEPS, STEP_COUNTS

    p = sub.add_parser(
        "sweep",
        help="the paper's Fig. 5 (CFG weight) or Fig. 6 (sampling steps) sweep from checkpoints",
        description="Sample the same validation prompts with the same seed at each point of the sweep and score them: "
        "the embedded set's probe metrics (probe-FVD, prompt accuracy), FVD and CLIPSIM when their files are given. "
        f"cfg: weights {', '.join(f'{w:g}' for w in CFG_WEIGHTS)} at --steps Heun steps (Fig. 5). steps: "
        f"{', '.join(map(str, STEP_COUNTS))} Heun steps at --cfg (Fig. 6; on a CPU capped at {CPU_MAX_STEPS}). "
        "Writes OUT_DIR/sweep_<kind>.csv (rewritten after each point) and .png, one line per checkpoint.",
    )
    p.add_argument("kind", choices=("cfg", "steps"), help="cfg: Fig. 5; steps: Fig. 6")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints written by lit-snapvideo fit")
    p.add_argument("--values", type=float, nargs="+", default=None, help="the sweep's points (default: the paper's)")
    p.add_argument("--num-videos", type=int, default=16, help="videos per point (default 16)")
    p.add_argument("--steps", type=int, default=40, help="Heun steps of the cfg sweep (default 40, as Fig. 5)")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance weight of the steps sweep (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-cap", action="store_true", help=f"run steps above {CPU_MAX_STEPS} on a CPU too (hours)")
    p.add_argument("--fvd-detector", help="path to a TorchScript I3D (i3d_torchscript.pt)")
    p.add_argument("--clip-model", help="open_clip model name for CLIPSIM, e.g. ViT-B-32")
    p.add_argument("--clip-checkpoint", help="path to that open_clip model's weights")
    p.add_argument("--out-dir", default="results", help="folder of sweep_<kind>.{csv,png} (default results)")
    p.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> None:
    import math
    from pathlib import Path

    from .config import file_in_the_way
    from .sweeps import run_sweep

    if args.num_videos < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError(
            f"--num-videos, --steps and --batch-size must be >= 1 "
            f"(got {args.num_videos}, {args.steps}, {args.batch_size})"
        )
    if not math.isfinite(args.cfg):
        raise UserError(f"--cfg {args.cfg}: expected a finite guidance weight")
    for v in args.values or ():
        if args.kind == "cfg" and not (math.isfinite(v) and v >= 0):
            raise UserError(f"--values {v:g}: a CFG weight must be finite and >= 0")
        if args.kind == "steps" and not (v >= 1 and v == int(v)):
            raise UserError(f"--values {v:g}: a step count must be a whole number >= 1")
    if bool(args.clip_model) != bool(args.clip_checkpoint):
        raise UserError("CLIPSIM needs both --clip-model and --clip-checkpoint")
    for flag in ("fvd_detector", "clip_checkpoint"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise UserError(f"--{flag.replace('_', '-')} {path}: file not found")
    blocker = file_in_the_way(args.out_dir)
    if blocker is not None:
        raise UserError(f"--out-dir {args.out_dir}: {blocker} is a file, so no folder can be made there")
    for checkpoint in args.checkpoints:  # every checkpoint readable before the first one is sampled
        if load_checkpoint(checkpoint).spec.upsampler:
            raise UserError(f"{checkpoint} is an upsampler: the sweeps sample text-to-video checkpoints")
    try:
        run_sweep(
            args.checkpoints,
            args.kind,
            args.values,
            args.num_videos,
            args.steps,
            args.cfg,
            args.seed,
            args.batch_size,
            args.fvd_detector,
            args.clip_model,
            args.clip_checkpoint,
            args.out_dir,
            cap=not args.no_cap,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    print(f"wrote {args.out_dir}/sweep_{args.kind}.csv and {args.out_dir}/sweep_{args.kind}.png")


# ---- main -------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_config,
    add_data,
    _add_fit,
    add_sample,
    _add_evaluate,
    _add_probe,
    _add_compare,
    _add_models,
    add_bench,
    _add_sweep,
    add_gpu_check,
    add_upsampler_eval,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-snapvideo",
        description="Snap Video reproduction kit: Snap-EDM diffusion, FIT transformer vs 3D U-Net, on Lightning.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a bad-input error (normally one line)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    _accept_debug_after(parser)
    return parser


def _accept_debug_after(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after a (sub)subcommand too; SUPPRESS: a subcommand's default does not undo one given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _accept_debug_after(command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # key=value after an option (fit CFG --new-version key=value): argparse stops there
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        status = args.run(args)
    except (UserError, FileNotFoundError) as err:  # ConfigError, DataError, CheckpointError are UserErrors
        if args.debug:
            raise
        print(f"lit-snapvideo {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lit-snapvideo {args.command}: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
