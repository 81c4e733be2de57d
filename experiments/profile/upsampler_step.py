"""Training-step time of the CPU upsampler against fit_mini (docs/decisions.md "The upsampler"): loss incl. the
self-conditioning pass, backward, AdamW; batch 8, 1 thread, the models interleaved.

    OMP_NUM_THREADS=1 python experiments/profile/upsampler_step.py
"""

import statistics
import time

import torch

from lit_snapvideo.bench.timing import build_bench_module

torch.set_num_threads(1)
torch.set_flush_denormal(True)

rows = {
    "fit_mini 8x24x40": ("fit_mini", 8, (24, 40), None),
    "fit_up_mini 8x48x80": ("fit_up_mini", 8, (48, 80), None),
    "fit_up_mini 8x96x160 (x4)": (
        "fit_up_mini",
        8,
        (96, 160),
        {"scale": 4, "input_size": (8, 96, 160), "group_size": (8, 12, 10)},
    ),
}
jobs = {}
for name, (preset, t, size, ov) in rows.items():
    torch.manual_seed(0)
    module, fwd = build_bench_module(preset, t, size, "cpu", ov)
    module.backbone.train()
    b = 8
    batch = {
        "video": torch.randn(b, 3, t, *size).clamp(-1, 1),
        "caption": ["a large red circle moving left"] * b,
        "fps": torch.full((b,), 8.0),
        "orig_size": torch.tensor([[36.0, 64.0]]).expand(b, 2),
        "is_image": torch.zeros(b, dtype=torch.bool),
    }
    if module.spec.upsampler:
        batch["low_res"] = torch.randn(b, 3, t, *module.cfg.data.low_res_size).clamp(-1, 1)
    opt = torch.optim.AdamW(module.backbone.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step(module=module, fwd=fwd, batch=batch, opt=opt, g=g):
        loss, _ = module.diffusion_loss(batch, g, backbone=fwd)
        loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    jobs[name] = (step, [])
for r in range(4):
    for name, (step, times) in jobs.items():
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
base = statistics.median(jobs["fit_mini 8x24x40"][1])
for name, (step, times) in jobs.items():
    m = statistics.median(times)
    print(
        f"{name}: median {m:.2f} s/step (contended), {m / base:.2f}x fit_mini; at fit_mini's clean 0.30 s/step -> {0.30 * m / base:.2f} s/step"
    )
