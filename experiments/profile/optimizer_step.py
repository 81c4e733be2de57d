"""The optimiser's share of a CPU training step: torch's per-tensor Adam/AdamW loop against its fused kernel
(issue 28, results/throughput.md).

    OMP_NUM_THREADS=2 .venv/bin/python experiments/profile/optimizer_step.py [--recipes fit,unet] [--rounds 3]

For each ablation recipe (experiments/ablation/<name>.yaml), in this one process and interleaved in rounds: the
optimiser step alone (random gradients, median of 20 steps, ms) and the compute-only training step of
experiments/profile/train_step.py (ms per video), with ``optim.fused`` off and on. Then the largest difference of
the weights after 50 identical steps from the same start, loop against fused. Writes
results/profile/optimizer_step.md.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import ms_per_video, optimizer_with, recipe_optim, recipe_parser, recipe_step  # noqa: E402

from lit_snapvideo.bench import build_bench_module, time_repeats  # noqa: E402
from lit_snapvideo.config import load_config  # noqa: E402


def optimizer_ms(optimizer: torch.optim.Optimizer, repeats: int = 20) -> float:
    """Median ms of one ``optimizer.step()`` with the gradients left as they are."""
    return 1000 * statistics.median(time_repeats(optimizer.step, "cpu", warmup=3, repeats=repeats))


def recipe_module(cfg):
    """The training module of a recipe's preset, overrides and clip (bench's, without an EMA copy)."""
    return build_bench_module(
        cfg.model.preset, cfg.data.frames, tuple(cfg.data.size), "cpu", overrides=dict(cfg.model.overrides)
    )[0]


def weights_after(cfg, fused: bool, steps: int = 50) -> list[torch.Tensor]:
    """The backbone's weights after ``steps`` optimiser steps on a fixed sequence of random gradients."""
    torch.manual_seed(0)
    module = recipe_module(cfg)
    optimizer = optimizer_with(module, {**recipe_optim(cfg), "fused": fused})
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach().clone() for p in params]


def main() -> None:
    args = recipe_parser(__doc__, Path("results/profile/optimizer_step.md")).parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    lines = [f"{args.threads} threads, {args.rounds} interleaved rounds. Command: `{' '.join(sys.argv)}`", ""]
    for recipe in args.recipes.split(","):
        cfg = load_config(f"experiments/ablation/{recipe}.yaml")
        batch, frames, size = cfg.data.batch_size, cfg.data.frames, tuple(cfg.data.size)
        steps = {fused: recipe_step(cfg, fused=fused) for fused in (False, True)}
        module = recipe_module(cfg)
        params = [p for p in module.backbone.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer_times: dict[bool, list[float]] = {False: [], True: []}
        step_times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for fused in (False, True):
                optimizer = optimizer_with(module, {**recipe_optim(cfg), "fused": fused})
                optimizer_times[fused].append(optimizer_ms(optimizer))
                step_times[fused].append(ms_per_video(steps[fused], batch))
        loop, fused = weights_after(cfg, False), weights_after(cfg, True)
        largest = max((a - b).abs().max().item() for a, b in zip(loop, fused))
        lines += [
            f"## {recipe} ({cfg.model.preset}, {cfg.optim.name}), batch {batch}, {frames}x{size[0]}x{size[1]}, "
            f"{len(params)} parameter tensors, {sum(p.numel() for p in params):,} values",
            "",
            "| optim.fused | optimiser step, ms (rounds) | training step, ms/video (rounds) | median ms/video |",
            "|---|---|---|---|",
        ]
        for key in (False, True):
            lines.append(
                f"| {str(key).lower()} | {' / '.join(f'{v:.2f}' for v in optimizer_times[key])} | "
                f"{' / '.join(f'{v:.1f}' for v in step_times[key])} | {statistics.median(step_times[key]):.1f} |"
            )
        lines += ["", f"Largest weight difference after 50 identical steps, loop against fused: {largest:.2e}", ""]
        print("\n".join(lines[-8:]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
