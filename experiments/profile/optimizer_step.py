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

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import make_step, ms_per_video, recipe_optim  # noqa: E402

from lit_snapvideo.bench import build_bench_module  # noqa: E402
from lit_snapvideo.config import load_config  # noqa: E402


def optimizer_ms(params: list[torch.Tensor], optimizer: torch.optim.Optimizer, repeats: int = 20) -> float:
    """Median ms of one ``optimizer.step()`` with the gradients left as they are."""
    for _ in range(3):
        optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def weights_after(cfg, fused: bool, steps: int = 50) -> list[torch.Tensor]:
    """The backbone's weights after ``steps`` optimiser steps on a fixed sequence of random gradients."""
    torch.manual_seed(0)
    module, _ = build_bench_module(
        cfg.model.preset, cfg.data.frames, tuple(cfg.data.size), "cpu", overrides=dict(cfg.model.overrides)
    )
    for key, value in {**recipe_optim(cfg), "fused": fused}.items():
        setattr(module.cfg.optim, key, value)
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach().clone() for p in params]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="fit,unet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/profile/optimizer_step.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    lines = [f"{args.threads} threads, {args.rounds} interleaved rounds. Command: `{' '.join(sys.argv)}`", ""]
    for recipe in args.recipes.split(","):
        cfg = load_config(f"experiments/ablation/{recipe}.yaml")
        batch, frames, size = cfg.data.batch_size, cfg.data.frames, tuple(cfg.data.size)
        steps = {
            fused: make_step(
                cfg.model.preset,
                batch,
                frames,
                size,
                overrides=dict(cfg.model.overrides),
                optim={**recipe_optim(cfg), "fused": fused},
            )
            for fused in (False, True)
        }
        module, _ = build_bench_module(cfg.model.preset, frames, size, "cpu", overrides=dict(cfg.model.overrides))
        params = [p for p in module.backbone.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer_times: dict[bool, list[float]] = {False: [], True: []}
        step_times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for fused in (False, True):
                for key, value in {**recipe_optim(cfg), "fused": fused}.items():
                    setattr(module.cfg.optim, key, value)
                optimizer_times[fused].append(optimizer_ms(params, module.configure_optimizers()["optimizer"]))
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
