"""The measuring subcommands of ``lit-snapvideo``: ``bench`` (the throughput table of Table 2's speed columns, or
the scaling sweep; :mod:`lit_snapvideo.bench`), ``gpu-check`` (every GPU measurement in one call under one time
budget; :mod:`lit_snapvideo.gpu_check`) and ``upsampler-eval`` (the upsampler against bicubic; :mod:`.cascade`).

As in :mod:`lit_snapvideo.cli`, each subcommand is a pair: ``add_<name>(subparsers)`` declares its arguments (the
CLI lists it) and ``_run_<name>(args)`` does the work, importing heavy modules lazily so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError


# ---- bench ------------------------------------------------------------------------------------

DEFAULT_BENCH_PRESETS = (
    "fit_small,unet_small,fit_500m,unet_284m,unet_85m,fit_3_9b"  # pairs first: a short budget keeps the ratios
)


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="throughput tables (paper Table 2 speed columns, FIT/U-Net ratios, MFU) or the scaling sweep",
        description="Time each preset's training step, one denoiser evaluation and a whole sampling run (warm-up, "
        "synchronised repeats, median and IQR), with FLOPs, MFU and peak memory; write OUT/throughput.{csv,md}. "
        "With --scaling: time both small presets against frames and resolution; write OUT/scaling.{csv,png}. "
        "Phases that would not fit in memory are skipped with the estimate that says why.",
    )
    p.add_argument(
        "--presets",
        default=DEFAULT_BENCH_PRESETS,
        help=f"comma-separated (default {DEFAULT_BENCH_PRESETS}; --scaling: fit_small,unet_small)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="videos per step for every preset (default 1)")
    p.add_argument(
        "--batch", action="append", default=[], metavar="PRESET=N", help="batch size of one preset (repeatable)"
    )
    p.add_argument("--frames", type=int, default=16)
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="backbone input size (default 40 64: the paper's 36x64 padded)",
    )
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast on the backbone")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument(
        "--compile-rows",
        action="store_true",
        help="measure each preset twice, eager and torch.compile'd, as two rows (the compile time in the notes)",
    )
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per phase (>= 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument(
        "--sample-steps", type=int, default=8, help="Heun steps of the timed sampling run (2N-1 evaluations)"
    )
    p.add_argument("--phases", default="eval,sample,train", help="which of eval,sample,train to time")
    p.add_argument(
        "--paper-phases",
        default=None,
        help="phases for the four paper presets (default: --phases on a "
        "GPU, eval on a CPU, where a paper-size training step takes tens of seconds)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; 1 on a busy CPU, where threaded kernels stall)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds for the whole run: phases run "
        "in order and one that cannot finish in the time left is skipped, with a note (default: no limit)",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="hardware peak for MFU (default: a measured matmul probe)"
    )
    p.add_argument("--memory-fraction", type=float, default=0.8, help="share of available memory a phase may need")
    p.add_argument("--scaling", action="store_true", help="run the scaling sweep instead of the table")
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    import torch

    from .bench import BenchSettings, run_bench, run_scaling

    presets = args.presets
    if args.scaling and presets == DEFAULT_BENCH_PRESETS:
        presets = "fit_small,unet_small"
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())
    batch = {}
    for item in args.batch:
        name, _, value = item.partition("=")
        if not value.isdigit():
            raise UserError(f"--batch {item}: expected PRESET=N, e.g. --batch fit_small=8")
        batch[name] = int(value)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    paper_phases = split(args.paper_phases) if args.paper_phases else (("eval",) if device == "cpu" else None)
    try:
        settings = BenchSettings(
            presets=list(split(presets)),
            batch_size=args.batch_size,
            batch=batch,
            frames=args.frames,
            size=tuple(args.size) if args.size else BenchSettings.size,
            precision=args.precision,
            compile=args.compile,
            compile_rows=args.compile_rows,
            grad_checkpointing=args.grad_checkpointing,
            repeats=args.repeats,
            warmup=args.warmup,
            sample_steps=args.sample_steps,
            phases=split(args.phases),
            paper_phases=paper_phases,
            device=device,
            threads=args.threads,
            peak_tflops=args.peak_tflops,
            memory_fraction=args.memory_fraction,
            time_budget_s=args.time_budget,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    if [p for p in batch if p not in settings.presets]:
        raise UserError(f"--batch names preset(s) not in --presets: {[p for p in batch if p not in settings.presets]}")
    from_shell = os.path.basename(sys.argv[0]) in ("lit-snapvideo", "__main__.py")
    command = "lit-snapvideo " + " ".join(sys.argv[1:]) if from_shell else "lit-snapvideo bench (from Python)"
    if args.scaling:
        run_scaling(settings, args.out)
        print(f"wrote {args.out}/scaling.csv and {args.out}/scaling.png")
    else:
        run_bench(settings, args.out, command=command)
        print(f"wrote {args.out}/throughput.csv and {args.out}/throughput.md")


# ---- gpu-check --------------------------------------------------------------------------------


def add_gpu_check(sub: argparse._SubParsersAction) -> None:
    from .gpu_check import STAGES

    p = sub.add_parser(
        "gpu-check",
        help="every GPU measurement in one call under one time budget (issue 20); --dry-run on the CPU",
        description="On a GPU: unet_284m and fit_500m throughput at 16x40x64, bf16, batch 8 and 64 (eval, sample, "
        "train), the four paper presets at batch 64 (the memory guard notes what it skipped), both CPU ablation "
        "recipes trained for a fixed wall clock each with samples, probe metrics and ablation.md, and the pair again "
        "with torch.compile (compile time apart from the timed steps). The budget is checked as it goes; each stage "
        "writes its files when it finishes (OUT/gpu_check.md lists them). --dry-run runs every stage at tiny sizes "
        "on the CPU (about a minute).",
    )
    p.add_argument("--out", default=None, help="output folder (default results/gpu; --dry-run: a new temp folder)")
    p.add_argument("--budget", type=float, default=540.0, metavar="S", help="seconds for the whole call (default 540)")
    p.add_argument(
        "--stages", default=",".join(STAGES), help=f"which stages, in this order (default {','.join(STAGES)})"
    )
    p.add_argument("--ablation-seconds", type=float, default=90.0, help="training wall clock of each ablation run")
    p.add_argument(
        "--ablation-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for both ablation runs (repeatable), e.g. data.batch_size=32",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="the ablation's data set (default: the recipe's data/shapes_simple, made if missing)",
    )
    p.add_argument("--dry-run", action="store_true", help="tiny presets, clips and data on the CPU: checks every stage")
    p.set_defaults(run=_run_gpu_check)


def _run_gpu_check(args: argparse.Namespace) -> None:
    import tempfile

    from .gpu_check import CheckSettings, run_check

    out = args.out or (tempfile.mkdtemp(prefix="gpu_check_dry_") if args.dry_run else "results/gpu")
    try:
        settings = CheckSettings(
            out=out,
            budget_s=args.budget,
            dry_run=args.dry_run,
            stages=tuple(x.strip() for x in args.stages.split(",") if x.strip()),
            ablation_seconds=args.ablation_seconds,
            ablation_overrides=tuple(args.ablation_override),
            data_root=args.data_root,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    check = run_check(settings)
    failed = [r["stage"] for r in check.stages if r["status"] == "failed"]
    print(f"wrote {out}/gpu_check.md" + (f"; failed stage(s): {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)


# ---- upsampler-eval -------------------------------------------------------------------------------


def add_upsampler_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upsampler-eval",
        help="the upsampler against bicubic upsampling: PSNR vs the real clips, and a comparison PNG",
        description="Upsample the low-resolution versions of the run's validation videos (the data set's own "
        "downsampling) with the upsampler checkpoint at each --aug-sigma, and bicubically; print the PSNR of each "
        "against the real high-resolution clips; write a PNG (rows: videos x first/last frame; columns: low-res "
        "input | bicubic | upsampler | real) and the table as markdown and JSON.",
    )
    p.add_argument(
        "checkpoint", help="an upsampler checkpoint (e.g. runs/upsampler_cpu/version_0/checkpoints/last.ckpt)"
    )
    p.add_argument("--num-videos", type=int, default=16, help="validation videos (default 16)")
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[1, 40],
        help="Heun step counts (default 1 and 40: one denoiser call, the estimate of the mean video given the "
        "input, and the paper's second-stage sampler); the PNG shows the first",
    )
    p.add_argument("--cfg", type=float, default=1.0, help="guidance weight (default 1: no guidance)")
    p.add_argument(
        "--aug-sigma", type=float, nargs="+", default=None, help="noise levels of the input (default: 0 and the run's)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--png", default="docs/upsampler.png", help="the comparison picture (default docs/upsampler.png)")
    p.add_argument(
        "--out", default="results/upsampler.md", help="the table (default results/upsampler.md; .json beside)"
    )
    p.set_defaults(run=_run_upsampler_eval)


def _run_upsampler_eval(args: argparse.Namespace) -> None:
    import json
    import math
    from pathlib import Path

    from .cascade import compare_with_bicubic, comparison_png, summary_markdown
    from .cli_sample import load_checkpoint

    if args.num_videos < 1 or min(args.steps) < 1 or args.batch_size < 1:
        raise UserError("--num-videos, --steps and --batch-size must be >= 1")
    if args.aug_sigma is not None and not all(a >= 0 and math.isfinite(a) for a in args.aug_sigma):
        raise UserError(f"--aug-sigma {args.aug_sigma}: expected noise levels >= 0")
    module = load_checkpoint(args.checkpoint)
    if not module.spec.upsampler:
        raise UserError(f"{args.checkpoint}: model.preset={module.cfg.model.preset} is not an upsampler")
    levels = args.aug_sigma or sorted({0.0, float(module.cfg.upsampler.aug_sigma)})
    result = compare_with_bicubic(module, args.num_videos, args.steps, args.cfg, levels, args.seed, args.batch_size)
    png = comparison_png(args.png, result.pop("videos"))  # the first --steps at the first level
    command = "lit-snapvideo " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(summary_markdown(result, args.checkpoint, command) + f"\nPicture: `{png}`\n")
    out.with_suffix(".json").write_text(json.dumps({"checkpoint": args.checkpoint, **result}, indent=2) + "\n")
    print(f"bicubic: {result['bicubic_psnr']:.2f} dB")
    for steps, levels in result["upsampler_psnr"].items():
        for level, value in levels.items():
            print(f"upsampler ({steps} step{'s' * (steps > 1)}, aug_sigma {level:g}): {value:.2f} dB")
    print(f"wrote {png}, {out} and {out.with_suffix('.json')}")
