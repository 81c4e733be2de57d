"""The ``sample`` subcommand of ``lit-snapvideo`` (text-to-video, and the two-stage cascade with ``--upsampler``),
and :func:`load_checkpoint`, which every subcommand that reads a checkpoint uses for its one-line errors.

As in :mod:`lit_snapvideo.cli`, a subcommand is a pair: ``add_sample(subparsers)`` declares its arguments and
``_run_sample(args)`` does the work, importing heavy modules lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse

from .errors import UserError

# ---- sample -----------------------------------------------------------------------------------


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="text-to-video sampling from a checkpoint (mp4 files + a GIF grid)",
        description="Sample videos from a checkpoint's EMA weights with EDM's deterministic Heun sampler carrying "
        "sigma_in (paper §2.5), classifier-free guidance, optional dynamic thresholding and oscillating guidance. "
        "Writes OUT/NNN.mp4 per prompt and OUT/grid.gif.",
    )
    p.add_argument(
        "checkpoint", help="a .ckpt written by lit-snapvideo fit (e.g. runs/fit/version_0/checkpoints/last.ckpt)"
    )
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--out", default="samples", help="output folder, or a .mp4 path for a single prompt")
    p.add_argument("--steps", type=int, default=64, help="sampler steps (paper: 256 for stage 1; default 64)")
    p.add_argument("--solver", choices=("heun", "euler"), default="heun")
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance weight w: D_u + w (D_c - D_u)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="P",
        help="dynamic thresholding percentile, e.g. 0.995 (off by default)",
    )
    p.add_argument(
        "--oscillate-low",
        type=float,
        default=None,
        metavar="W",
        help="oscillating guidance: alternate --cfg and W after the first 10%% of steps",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per sampler batch")
    p.add_argument("--fps", type=float, default=None, help="frame-rate conditioning (default: the run's val fps)")
    p.add_argument("--raw-weights", action="store_true", help="use the live weights instead of the EMA")
    p.add_argument(
        "--upsampler",
        metavar="UP_CKPT",
        help="the cascade: upsample the samples with this upsampler checkpoint; writes NNN.mp4 + grid.gif at its "
        "resolution and NNN_lowres.mp4 + grid_lowres.gif (stage 1)",
    )
    p.add_argument(
        "--aug-sigma",
        type=float,
        default=None,
        help="noise level added to stage 1's output before upsampling (default: the upsampler's upsampler.aug_sigma)",
    )
    p.add_argument("--upsampler-steps", type=int, default=40, help="the upsampler's Heun steps (paper: 40)")
    p.add_argument(
        "--upsampler-cfg", type=float, default=1.0, help="the upsampler's guidance weight (default 1: no guidance)"
    )
    p.set_defaults(run=_run_sample)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    from pathlib import Path

    from .config import has_line_break

    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"--prompts-file {path}: file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"--prompts-file {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError("no prompt given: use --prompt TEXT or --prompts-file FILE")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise UserError(f"prompt {empty[0] + 1} is empty; every prompt needs text")
    broken = [i for i, p in enumerate(prompts) if has_line_break(p)]
    if broken:
        raise UserError(
            f"prompt {broken[0] + 1} ({prompts[broken[0]]!r}) holds a line break; a prompt is one line "
            "(prompts.txt beside the videos holds one per line)"
        )
    return prompts


def load_checkpoint(path: str):
    from pathlib import Path

    from .module_loading import load_module

    if not Path(path).exists():  # a file, or the folder of a sharded (trainer.strategy=fsdp) checkpoint
        raise UserError(f"checkpoint {path}: file not found")
    try:
        return load_module(path)
    except ValueError as err:  # CheckpointError: unsafe pickle, foreign or partial weights
        raise UserError(str(err)) from None
    except Exception as err:  # torch.load on a file that is not a checkpoint at all
        raise UserError(
            f"checkpoint {path}: cannot be read as a lit-snapvideo checkpoint ({type(err).__name__}: {err})"
        ) from None


def _check_sample_options(args: argparse.Namespace, prompts: list[str]) -> None:
    import math
    from pathlib import Path

    from .config import file_in_the_way

    if args.steps < 1 or args.batch_size < 1:
        raise UserError(f"--steps and --batch-size must be >= 1 (got {args.steps}, {args.batch_size})")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold}: expected a percentile in (0, 1], e.g. 0.995")
    if args.fps is not None and not args.fps > 0:  # nan fails too; inf is allowed: still images
        raise UserError(f"--fps {args.fps}: expected a frame rate > 0 (inf: still images)")
    for flag, value in (("--cfg", args.cfg), ("--oscillate-low", args.oscillate_low)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{flag} {value}: expected a finite guidance weight")
    if args.upsampler is not None:
        if args.upsampler_steps < 1:
            raise UserError(f"--upsampler-steps must be >= 1 (got {args.upsampler_steps})")
        if args.aug_sigma is not None and not (args.aug_sigma >= 0 and math.isfinite(args.aug_sigma)):
            raise UserError(f"--aug-sigma {args.aug_sigma}: expected a noise level >= 0")
        if not math.isfinite(args.upsampler_cfg):
            raise UserError(f"--upsampler-cfg {args.upsampler_cfg}: expected a finite guidance weight")
    elif args.aug_sigma is not None:
        raise UserError("--aug-sigma is the upsampler's setting: give --upsampler UP_CKPT too")
    out = Path(args.out)
    if out.suffix == ".mp4" and len(prompts) > 1:
        raise UserError(f"--out {out} is one .mp4 file but {len(prompts)} prompts were given; pass a folder")
    blocker = file_in_the_way(out.parent if out.suffix == ".mp4" else out)
    if blocker is not None:
        raise UserError(f"--out {out}: {blocker} is a file, so no folder can be made there")


def _run_sample(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tqdm import tqdm

    from .generation import generate_videos, write_grid, write_videos

    prompts = _read_prompts(args)
    _check_sample_options(args, prompts)  # before the checkpoint loads: clear errors first
    module = load_checkpoint(args.checkpoint)
    upsampler = load_checkpoint(args.upsampler) if args.upsampler else None
    if module.spec.upsampler:
        raise UserError(
            f"{args.checkpoint} is an upsampler; sample a stage-1 checkpoint with --upsampler {args.checkpoint}"
        )
    if upsampler is not None:
        from .cascade import check_cascade

        try:
            check_cascade(module, upsampler)
        except ValueError as err:
            raise UserError(f"--upsampler {args.upsampler}: {err}") from None
    out = Path(args.out)
    single = out.suffix == ".mp4"
    folder = out.parent if single else out
    folder.mkdir(parents=True, exist_ok=True)
    fps = args.fps if args.fps is not None else module.cfg.logging.sample_fps or module.cfg.data.val_fps
    steps = args.steps + (args.upsampler_steps if upsampler is not None else 0)
    bar = tqdm(total=len(prompts) * steps, desc="sampling", unit="step")
    videos = generate_videos(
        module,
        prompts,
        args.steps,
        args.cfg,
        args.seed,
        args.batch_size,
        progress=bar.update,
        solver=args.solver,
        threshold_percentile=args.threshold,
        oscillate_low=args.oscillate_low,
        fps=args.fps,
        use_ema=not args.raw_weights,
    )
    written = []
    if upsampler is not None:  # the cascade: stage 1's videos go beside the upsampled ones, named *_lowres
        low_paths = (
            [out.with_name(f"{out.stem}_lowres.mp4")]
            if single
            else [folder / f"{i:03d}_lowres.mp4" for i in range(len(prompts))]
        )
        write_videos(videos, low_paths, fps)
        write_grid(folder / "grid_lowres.gif", videos, prompts, fps=min(float(fps), 30.0))
        written = [*low_paths, folder / "grid_lowres.gif"]
        videos = generate_videos(
            upsampler,
            prompts,
            args.upsampler_steps,
            args.upsampler_cfg,
            args.seed,
            args.batch_size,
            progress=bar.update,
            low_res=videos,
            aug_sigma=args.aug_sigma,
            fps=args.fps,
            use_ema=not args.raw_weights,
        )
    bar.close()
    paths = [out] if single else [folder / f"{i:03d}.mp4" for i in range(len(prompts))]
    write_videos(videos, paths, fps)
    write_grid(folder / "grid.gif", videos, prompts, fps=min(float(fps), 30.0))
    print(
        f"wrote {len(paths)} video(s) and {folder / 'grid.gif'}"
        + (f" (and stage 1's: {len(written)} files *_lowres)" if written else "")
    )
