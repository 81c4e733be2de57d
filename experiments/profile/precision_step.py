"""bf16 arithmetic inside fp32 training on the CPU (issue 28, item 3): oneDNN's bf16 "fpmath" mode, side by side.

    .venv/bin/python experiments/profile/precision_step.py [--threads 2] [--recipes fit,unet]
        -> results/profile/precision.txt

``torch.backends.mkldnn.{matmul,conv}.fp32_precision = "bf16"`` lets oneDNN run fp32 matmuls / convolutions on the
AVX-512 BF16 units (inputs rounded to bf16, fp32 accumulation); weights, activations, the optimiser and the EDM maths
stay fp32. This is not autocast (which made whole backbones 6-30x slower here, design.md). Each recipe's compute-only
training step (experiments/profile/train_step.py's make_step, its own preset, overrides, clip and batch) is timed
with the variants interleaved in 3 rounds in one process; MFU against the measured fp32 and bf16 matmul rates.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import make_step, ms_per_video  # noqa: E402

from lit_snapvideo.config import load_config  # noqa: E402
from lit_snapvideo.models.presets import forward_flops  # noqa: E402
from lit_snapvideo.models.registry import backbone as backbone_spec  # noqa: E402
from lit_snapvideo.models.presets import preset_kwargs  # noqa: E402

VARIANTS = {  # (matmul, conv) fp32_precision
    "fp32": ("ieee", "ieee"),
    "bf16 matmul": ("bf16", "ieee"),
    "bf16 matmul+conv": ("bf16", "bf16"),
}


@contextlib.contextmanager
def fpmath(matmul: str, conv: str):
    backends = torch.backends.mkldnn
    before = backends.matmul.fp32_precision, backends.conv.fp32_precision
    backends.matmul.fp32_precision, backends.conv.fp32_precision = matmul, conv
    try:
        yield
    finally:
        backends.matmul.fp32_precision, backends.conv.fp32_precision = before


def matmul_gflops(precision: str, n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    with fpmath(precision, "ieee"):
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", default="fit,unet", help="experiments/ablation/<name>.yaml")
    parser.add_argument("--out", default="results/profile/precision.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    fp32_rate, bf16_rate = matmul_gflops("ieee"), matmul_gflops("bf16")
    lines = [
        f"threads {args.threads}; torch {torch.__version__}; measured 1024^3 matmul: fp32 {fp32_rate:.0f} GFLOP/s, "
        f"bf16 fpmath {bf16_rate:.0f} GFLOP/s",
        "",
        "| recipe | preset | variant | ms/video (3 rounds) | best | GFLOP/s | MFU vs fp32 | MFU vs bf16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe in args.recipes.split(","):
        cfg = load_config(f"experiments/ablation/{recipe}.yaml")
        preset, overrides = cfg.model.preset, dict(cfg.model.overrides)
        batch, frames, size = cfg.data.batch_size, cfg.data.frames, tuple(cfg.data.size)
        fwd = forward_flops(preset, frames, size, text_dim=256, overrides=overrides)
        flops = backbone_spec(preset_kwargs(preset)[0]).train_flops(fwd, cfg.optim.self_cond_prob)
        steps = {name: make_step(preset, batch, frames, size, overrides=overrides) for name in VARIANTS}
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(3):
            for name, step in steps.items():
                with fpmath(*VARIANTS[name]):
                    times[name].append(ms_per_video(step, batch))
        for name, values in times.items():
            rate = flops / (min(values) / 1000) / 1e9
            lines.append(
                f"| {recipe} | {preset} | {name} | {' / '.join(f'{v:.1f}' for v in values)} | {min(values):.1f} | "
                f"{rate:.0f} | {100 * rate / fp32_rate:.0f}% | {100 * rate / bf16_rate:.0f}% |"
            )
        print("\n".join(lines[-3:]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
