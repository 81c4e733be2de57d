"""Which CPU attention kernel suits the ablation recipes' shapes (issue 28, results/throughput.md).

    OMP_NUM_THREADS=2 .venv/bin/python experiments/profile/attention_backend.py [--recipes fit,unet] [--rounds 3]

For each ablation recipe (experiments/ablation/<name>.yaml): the shapes its attention calls see in one training
step, then the compute-only training step (experiments/profile/train_step.py's) timed with torch's default SDPA
kernel (flash attention for CPU) and with the plain math kernel, interleaved in rounds in this one process, ms
per video. Writes results/profile/attention_backend.md.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
from train_step import attention_calls, ms_per_video, recipe_parser, recipe_step  # noqa: E402

from lit_snapvideo.config import load_config  # noqa: E402


def main() -> None:
    args = recipe_parser(__doc__, Path("results/profile/attention_backend.md")).parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"Compute-only training step of each ablation recipe, {args.threads} threads, ms per video "
        f"(median of 5 steps; {args.rounds} interleaved rounds). Command: `{' '.join(sys.argv)}`",
        "",
    ]
    for recipe in args.recipes.split(","):
        cfg = load_config(f"experiments/ablation/{recipe}.yaml")
        batch, frames, size = cfg.data.batch_size, cfg.data.frames, tuple(cfg.data.size)
        step = recipe_step(cfg)
        lines.append(f"## {recipe} ({cfg.model.preset}), batch {batch}, {frames}x{size[0]}x{size[1]}")
        lines.append("")
        lines.append("attention calls in one step (q: batch, heads, tokens, head dim; k; masked; with a backward):")
        for (q, k, masked, backward), calls in sorted(attention_calls(step).items()):
            lines.append(f"- q {q}, k {k}, mask {masked}, backward {backward}: {calls} calls")
        times = {"default (flash for CPU)": [], "math": []}
        for _ in range(args.rounds):
            times["default (flash for CPU)"].append(ms_per_video(step, batch))
            with sdpa_kernel([SDPBackend.MATH]):
                times["math"].append(ms_per_video(step, batch))
        lines += ["", "| kernel | ms/video per round | median |", "|---|---|---|"]
        for name, values in times.items():
            rounds = " / ".join(f"{v:.1f}" for v in values)
            lines.append(f"| {name} | {rounds} | {statistics.median(values):.1f} |")
        lines.append("")
        print("\n".join(lines[-8:]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
