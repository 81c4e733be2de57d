"""torch.compile on the CPU (issue 28): the ablation presets' training step, eager against inductor, side by side.

    .venv/bin/python experiments/profile/compile_step.py [--threads 2] [--presets fit_mini,unet_mini,dit_mini]
        -> results/profile/compile.txt

Each preset at the ablation's clip and batch (8 x 24 x 40, batch 8, fp32): a training step as `bench` times it (the
module's loss with self-conditioning, backward, clipping, AdamW; experiments/profile/train_step.py's make_step).
Variants: eager; ``torch.compile(dynamic=False)`` (inductor's default mode); ``mode="max-autotune-no-cudagraphs"``.
Compile time is the first step's time beyond an eager step. Then ms/video as the median of 5 steps, in 3 rounds that
interleave the variants, so all of them see the same machine load. MFU against the measured fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import make_step, ms_per_video  # noqa: E402

from lit_snapvideo.models.presets import forward_flops, preset_kwargs  # noqa: E402
from lit_snapvideo.models.registry import backbone as backbone_spec  # noqa: E402

VARIANTS = {
    "eager": None,
    "compile": dict(dynamic=False),
    "compile max-autotune": dict(dynamic=False, mode="max-autotune-no-cudagraphs"),
}


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """The machine's fp32 matmul rate (GFLOP/s) at this thread count: the MFU denominator."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--presets", default="fit_mini,unet_mini,dit_mini")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="results/profile/compile.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    frames, size = 8, (24, 40)
    lines = [
        f"threads {args.threads}, batch {args.batch}, {frames}x{size[0]}x{size[1]}, fp32; torch {torch.__version__}",
    ]
    peak = matmul_gflops()
    lines.append(f"measured fp32 matmul rate: {peak:.0f} GFLOP/s (1024^3, {args.threads} threads)")
    steps, compile_s = {}, {}
    for preset in args.presets.split(","):
        flops = backbone_spec(preset_kwargs(preset)[0]).train_flops(forward_flops(preset, frames, size, text_dim=256))
        for variant in args.variants.split(","):
            options = VARIANTS[variant]
            step = make_step(preset, args.batch, frames, size, compile_options=options)
            start = time.perf_counter()
            step()
            compile_s[(preset, variant)] = time.perf_counter() - start
            steps[(preset, variant)] = (step, flops)
            print(f"{preset} {variant}: first step {compile_s[(preset, variant)]:.1f} s", flush=True)
    results: dict = {key: [] for key in steps}
    for _ in range(3):
        for key, (step, _) in steps.items():
            results[key].append(ms_per_video(step, args.batch))
    lines.append("")
    lines.append("| preset | variant | first step (s) | ms/video (3 rounds) | best | GFLOP/s | MFU |")
    lines.append("|---|---|---|---|---|---|---|")
    for (preset, variant), values in results.items():
        best = min(values)
        rate = steps[(preset, variant)][1] / (best / 1000) / 1e9
        lines.append(
            f"| {preset} | {variant} | {compile_s[(preset, variant)]:.1f} | "
            f"{' / '.join(f'{v:.1f}' for v in values)} | {best:.1f} | {rate:.0f} | {100 * rate / peak:.0f}% |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
