"""Profile one CPU training step of the small pair (issue 20, results/throughput.md "What bounds a CPU step").

    .venv/bin/python experiments/profile/train_step.py [--threads 2] [--out results/profile]

For fit_small and unet_small at the throughput table's setting (16x40x64, batch 4, fp32): torch.profiler's top ops
by self CPU time for one step (after two warm-up steps), then the variants below timed side by side in this one
process (median of 5 steps, ms per video), so before and after share the machine's load.
"""

from __future__ import annotations

import argparse
import collections
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lit_snapvideo.bench import build_bench_module, time_repeats


def make_step(
    preset: str,
    batch: int,
    frames: int,
    size: tuple[int, int],
    channels_last: bool = False,
    compile_options: dict | None = None,
    overrides: dict | None = None,
    self_cond_prob: float | None = None,
    optim: dict | None = None,
):
    """A closure running one training step (loss, backward, clip, AdamW) of ``preset``, as `bench` times it;
    ``compile_options``: torch.compile the backbone with them (experiments/profile/compile_step.py); ``overrides``:
    the backbone's ``model.overrides``; ``self_cond_prob``: the self-conditioning rate (None: the config's);
    ``optim``: ``optim.*`` settings replacing the preset's (a recipe's optimiser, :func:`recipe_step`)."""
    torch.manual_seed(0)
    module, forward = build_bench_module(preset, frames, size, "cpu", overrides=overrides)
    if compile_options is not None:
        forward = torch.compile(module.backbone, **compile_options)
    if channels_last:  # only the 5-D (Conv3d) weights have a channels-last layout
        for conv in (m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv3d)):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
    module.backbone.train()
    optimizer = optimizer_with(module, optim or {})
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    video = torch.randn(batch, 3, frames, *size)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    data = {
        "video": video,
        "caption": ["a profiled clip"] * batch,
        "fps": torch.full((batch,), 8.0),
        "orig_size": torch.tensor([[36.0, 64.0]]).expand(batch, 2),
        "is_image": torch.zeros(batch, dtype=torch.bool),
    }
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        per_sample, _ = module.diffusion_loss(data, generator, backbone=forward, self_cond_prob=self_cond_prob)
        per_sample.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, module.cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ms_per_video(step, batch: int, repeats: int = 5) -> float:
    """Median ms per video of ``step`` (a batch of ``batch``) over ``repeats`` calls after one warm-up call."""
    return 1000 * statistics.median(time_repeats(step, "cpu", warmup=1, repeats=repeats)) / batch


def optimizer_with(module, settings: dict) -> torch.optim.Optimizer:
    """The module's optimiser (``configure_optimizers``) with ``optim.*`` ``settings`` replacing its config's."""
    for key, value in settings.items():
        setattr(module.cfg.optim, key, value)
    return module.configure_optimizers()["optimizer"]


def recipe_optim(cfg) -> dict:
    """The optimiser settings of a recipe's config, for :func:`make_step` and :func:`optimizer_with`."""
    return {key: getattr(cfg.optim, key) for key in ("name", "lr", "betas", "eps", "weight_decay", "fused")}


def recipe_step(cfg, **optim_changes):
    """:func:`make_step` for an ablation recipe's config: its preset, overrides, clip, batch and optimiser (with
    ``optim_changes``, e.g. ``fused=False``)."""
    return make_step(
        cfg.model.preset,
        cfg.data.batch_size,
        cfg.data.frames,
        tuple(cfg.data.size),
        overrides=dict(cfg.model.overrides),
        optim={**recipe_optim(cfg), **optim_changes},
    )


def recipe_parser(description: str, out: Path) -> argparse.ArgumentParser:
    """The options of the scripts that time variants of the ablation recipes side by side."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="fit,unet", help="experiments/ablation/<name>.yaml, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the variants")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out)
    return parser


PROFILED_STEPS = 3  # one step's profile varied by 15% between runs


CATEGORIES = {  # profiler op name -> kind of work; the convolution forward's time sits in mkldnn_convolution
    "aten::mm": "GEMM",
    "aten::addmm": "GEMM",
    "aten::bmm": "GEMM",
    "aten::mkldnn_convolution": "convolution",
    "aten::convolution": "convolution",
    "aten::convolution_backward": "convolution",
}


def category_of(op_name: str) -> str:
    """GEMM, convolution, attention or "no FLOPs" (norms, activations, copies, the optimiser, ...)."""
    if "scaled_dot_product" in op_name:
        return "attention"
    return CATEGORIES.get(op_name, "no FLOPs")


def attention_calls(step) -> collections.Counter:
    """Run ``step`` once; (q shape, k shape, masked, with a backward) -> calls of scaled_dot_product_attention."""
    seen: collections.Counter = collections.Counter()
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen[(tuple(q.shape), tuple(k.shape), attn_mask is not None, q.requires_grad)] += 1
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        step()
    finally:
        F.scaled_dot_product_attention = original
    return seen


def attention_flops(calls: collections.Counter) -> float:
    """Q K^T and P V: 4 b h n m d forward; the backward's four products twice that (its recomputed Q K^T not
    counted, as FlopCounterMode counts the CUDA kernels)."""
    total = 0.0
    for (q, k, _, backward), count in calls.items():
        forward = 4 * math.prod(q) * k[-2]
        total += count * forward * (3 if backward else 1)
    return total


def category_rates(events, cfg) -> list[str]:
    """Per kind of work in the profiled steps of the recipe ``cfg``: self time, FLOPs (FlopCounterMode, which also
    counts convolutions and attention), the rate against the measured matmul rate, and the MFU the step would
    reach if every FLOP ran at that rate while the no-FLOP work stayed as it is."""
    from torch.utils.flop_counter import FlopCounterMode

    from lit_snapvideo.bench.timing import matmul_probe_tflops

    # a twin step from the same seed: its steps after the two warm-ups make the same random choices as the
    # profiled ones (self-conditioning), without the counter's dispatch overhead in the profiled timings
    twin = recipe_step(cfg)
    twin(), twin()
    counter = FlopCounterMode(display=False)
    calls: collections.Counter = collections.Counter()
    with counter:
        for _ in range(PROFILED_STEPS):
            calls += attention_calls(twin)
    flops: dict[str, float] = {"attention": attention_flops(calls)}
    for op, count in counter.get_flop_counts()["Global"].items():
        name = str(op).replace("aten.", "aten::")
        kind = category_of(name)
        if kind != "attention":  # the CPU flash kernel has no FLOP formula in torch: counted from its shapes
            flops[kind] = flops.get(kind, 0.0) + count
    seconds: dict[str, float] = {}
    for e in events:
        kind = category_of(e.key)
        seconds[kind] = seconds.get(kind, 0.0) + e.self_cpu_time_total / 1e6
    probe = matmul_probe_tflops("cpu", "32-true") * 1e12
    total_s, total_flops = sum(seconds.values()), sum(flops.values())
    lines = [
        f"By kind of work (FLOPs from FlopCounterMode over the same steps, attention's from its shapes: "
        f"4 b h n m d forward, twice that backward; measured fp32 matmul rate "
        f"{probe / 1e9:.0f} GFLOP/s, bench's 2048^3 probe):",
        "",
        "| kind | self CPU ms | share | GFLOP | GFLOP/s | of the matmul rate |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ["GEMM", "convolution", "attention", "no FLOPs"]:
        ms, gflop = 1000 * seconds.get(kind, 0.0), flops.get(kind, 0.0) / 1e9
        rate = gflop / (ms / 1000) if ms and gflop else 0.0
        lines.append(
            f"| {kind} | {ms:.1f} | {100 * ms / 1000 / total_s:.1f}% | {gflop:.2f} | "
            + (f"{rate:.0f} | {100 * rate * 1e9 / probe:.0f}% |" if rate else "- | - |")
        )
    achieved = total_flops / total_s / probe
    bound = total_flops / (total_flops / probe + seconds.get("no FLOPs", 0.0)) / probe
    lines += [
        "",
        f"MFU of these steps: {100 * achieved:.0f}% ({total_flops / 1e9:.2f} GFLOP in {1000 * total_s:.0f} ms). "
        f"With every FLOP at the matmul rate and the no-FLOP work unchanged: {100 * bound:.0f}%.",
    ]
    return lines


def profile_recipe(recipe: str, out: Path) -> None:
    """torch.profiler over compute-only steps of an ablation recipe (after two warm-up steps): the top ops by
    self CPU time, with the FLOPs torch counts for the matmuls and convolutions and the rate they ran at."""
    from lit_snapvideo.config import load_config

    cfg = load_config(f"experiments/ablation/{recipe}.yaml")
    batch, frames, size = cfg.data.batch_size, cfg.data.frames, tuple(cfg.data.size)
    step = recipe_step(cfg)
    step(), step()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(PROFILED_STEPS):
            step()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"{recipe} ({cfg.model.preset}, overrides {dict(cfg.model.overrides)}), batch {batch}, "
        f"{frames}x{size[0]}x{size[1]}, optimiser {cfg.optim.name} (fused {cfg.optim.fused}), "
        f"{torch.get_num_threads()} threads: {PROFILED_STEPS} compute-only training steps, "
        f"{total_us / 1000:.0f} ms self CPU time in all",
        "",
        "| op | self CPU ms | share | calls | GFLOP (torch's count) | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:25]:
        gflop = e.flops / 1e9 if e.flops else 0.0
        rate = f"{gflop / (e.self_cpu_time_total / 1e6):.0f}" if gflop and e.self_cpu_time_total else "-"
        lines.append(
            f"| {e.key} | {e.self_cpu_time_total / 1000:.1f} | {100 * e.self_cpu_time_total / total_us:.1f}% | "
            f"{e.count} | {gflop:.2f} | {rate} |"
        )
    lines += ["", *category_rates(events, cfg)]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{recipe}_recipe_top_ops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default="results/profile")
    parser.add_argument("--skip-profile", action="store_true", help="only time the variants")
    parser.add_argument(
        "--recipes",
        default=None,
        help="profile these ablation recipes (experiments/ablation/<name>.yaml: preset, overrides, clip, batch) "
        "with per-op GFLOP/s, instead of the small pair and the variants",
    )
    args = parser.parse_args()
    if args.recipes:
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)
        for recipe in args.recipes.split(","):
            profile_recipe(recipe, Path(args.out))
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    frames, size = 16, (40, 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for preset in [] if args.skip_profile else ["fit_small", "unet_small"]:
        step = make_step(preset, args.batch, frames, size)
        step(), step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
        (out / f"{preset}_top_ops.txt").write_text(table)
        print(f"== {preset}: top ops by self CPU time ==\n{table}")
    # variants timed side by side (interleaved, so both see the same load)
    variants = {
        "fit_small": lambda: make_step("fit_small", args.batch, frames, size),
        "unet_small": lambda: make_step("unet_small", args.batch, frames, size),
        "unet_small channels_last_3d": lambda: make_step("unet_small", args.batch, frames, size, channels_last=True),
    }
    steps = {name: build() for name, build in variants.items()}
    results: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(3):
        for name, step in steps.items():
            results[name].append(ms_per_video(step, args.batch))
    lines = [
        f"threads {args.threads}, batch {args.batch}, 16x40x64, fp32; ms/video, median of 5 steps, 3 interleaved rounds"
    ]
    for name, values in results.items():
        lines.append(f"{name:32s} " + " ".join(f"{v:7.1f}" for v in values))
    (out / "variants.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
