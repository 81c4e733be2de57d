"""Timing one benchmark job: synchronised repeats after warm-up, the matmul probe that stands in for a hardware
peak, and the measuring process.

    run_job(job) -> measure_job(job), in a fresh `python -m lit_snapvideo.bench JOB.json RESULT.json` process
        -> {"eval" | "sample" | "train": {"seconds": [...], "peak_gib": x, "warmup_s": s}, "memory_kind": k,
            "skipped": [notes]}, or {"error": note} when the process fails or dies

A job builds the preset's training module around fixed text embeddings (B, L, dim) (:func:`build_bench_module`),
feeds it random clips (B, 3, T, H, W) and times each requested phase of :data:`.settings.PHASES`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..models import registry
from ..models.presets import build_backbone
from .memory import PeakMemory
from .settings import PHASES, text_shape


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class OverTimeBudget(Exception):
    """A phase whose repeats would not finish in the time left of the budget."""


def time_repeats(
    fn: Callable[[], Any],
    device: str,
    warmup: int,
    repeats: int,
    budget_s: Optional[float] = None,
    warmup_fn: Optional[Callable[[], Any]] = None,
) -> list[float]:
    """Seconds of each of ``repeats`` synchronised calls of ``fn`` after ``warmup`` untimed calls (of ``warmup_fn``
    when given). With ``budget_s``, OverTimeBudget is raised after the first timed call when the remaining repeats
    at that pace would overrun the budget (warm-up included)."""
    if budget_s is not None and budget_s <= 0:
        raise OverTimeBudget("the time budget was spent")
    started = time.perf_counter()
    for _ in range(warmup):
        (warmup_fn or fn)()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if len(seconds) == 1 and budget_s is not None:
            needed = time.perf_counter() - started + seconds[0] * (repeats - 1)
            if needed > budget_s:
                raise OverTimeBudget(
                    f"one call takes ~{seconds[0]:.1f} s, {repeats} repeats need ~{needed:.0f} s, "
                    f"over the {budget_s:.0f} s left of the time budget"
                )
    return seconds


def median_iqr(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q1, q3


def matmul_probe_tflops(device: str, precision: str, n: Optional[int] = None, repeats: int = 10) -> float:
    """Best achieved TFLOP/s of an n x n x n matmul (2 n^3 FLOPs) over ``repeats`` calls, at the benchmark
    precision: the MFU reference when no hardware peak is given (the best call, as a peak; on a shared CPU it is
    still a moment's figure, so a model can exceed it)."""
    n = n or (8192 if device == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_repeats(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * n**3 / min(seconds) / 1e12


class FixedTextEmbeddings(nn.Module):
    """Stand-in for the frozen text tower: fixed precomputed embeddings (L, dim) for every caption, as cached T5
    features would be. ``encode(captions) -> (emb (B, L, dim), mask (B, L) all True)``."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.dim, self.max_length = dim, tokens
        self.register_buffer("emb", torch.randn(tokens, dim, generator=torch.Generator().manual_seed(0)))

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(captions)
        return self.emb.expand(b, -1, -1).contiguous(), torch.ones(
            b, self.max_length, dtype=torch.bool, device=self.emb.device
        )


def build_bench_module(
    preset: str,
    frames: int,
    size: tuple[int, int],
    device: str,
    overrides: dict | None = None,
    compile: bool = False,
    grad_checkpointing: bool = False,
):
    """(module, forward): the training module of ``preset`` (UNetModule / FITModule: loss, self-conditioning,
    paper optimiser, sampler) around a backbone built on ``device``; ``forward`` is the backbone, compiled or not.
    The module is built around a placeholder and then given the backbone, so no EMA copy is made."""
    from ..config import load_config
    from ..module import module_for

    tokens, dim = text_shape(preset)
    backbone = build_backbone(preset, dim, overrides, grad_checkpointing=grad_checkpointing, device=device)
    # an upsampler's low-resolution input (models/registry.py): the clip / its scale
    low_res = []
    if registry.backbone(registry.kind_of(backbone)).upsampler:
        low_res = [f"data.low_res_size=[{','.join(map(str, backbone.low_res_size(*size)))}]"]
    # the backbone's overrides go into the config too: its validation builds the backbone at this clip
    model_overrides = [
        f"model.overrides.{k}=[{','.join(map(str, v))}]" if isinstance(v, (tuple, list)) else f"model.overrides.{k}={v}"
        for k, v in (overrides or {}).items()
    ]
    cfg = load_config(
        None,
        [
            f"model.preset={preset}",
            f"data.frames={frames}",
            f"data.size=[{size[0]},{size[1]}]",
            f"data.pad_to=[{size[0]},{size[1]}]",
            f"text.max_length={tokens}",
            *low_res,
            *model_overrides,
        ],
    )
    module = module_for(cfg)(cfg, backbone=nn.Identity(), text_encoder=FixedTextEmbeddings(tokens, dim))
    module.backbone = backbone
    forward = torch.compile(backbone) if compile else backbone
    module.ema_backbone = forward  # generate() samples with ema_backbone: here the live (compiled) weights
    return module.to(device), forward


def measure_job(job: dict) -> dict:
    """Time the phases of one (preset, shape, batch) job; returns {phase: {"seconds": [...], "peak_gib": x},
    "memory_kind": ..., "skipped": [notes]}.

    job keys: preset, overrides, batch, frames, size, phases, precision, compile, grad_checkpointing, repeats,
    warmup, sample_steps, device, threads, deadline (time.time() by which every phase must be done; None: no limit).
    Phases run in order; one that would overrun the deadline is skipped, so a short budget loses the last ones."""
    torch.set_flush_denormal(True)  # as training does (train.set_cpu_threads)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device, b = job["device"], job["batch"]
    memory = PeakMemory(device)
    torch.manual_seed(0)
    module, forward = build_bench_module(
        job["preset"],
        job["frames"],
        tuple(job["size"]),
        device,
        job["overrides"],
        job["compile"],
        job["grad_checkpointing"],
    )
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if job["precision"] == "bf16" else nullcontext()
    video = torch.randn(b, 3, job["frames"], *job["size"])
    batch = {
        "video": video,
        "caption": ["a benchmark clip"] * b,
        "fps": torch.full((b,), 8.0),
        "orig_size": torch.tensor([[36.0, 64.0]]).expand(b, 2),
        "is_image": torch.zeros(b, dtype=torch.bool),
    }
    if module.spec.upsampler:  # its low-resolution input (the bicubic upsampling inside is part of its cost)
        batch["low_res"] = torch.randn(b, 3, job["frames"], *module.cfg.data.low_res_size)
    results: dict[str, Any] = {"memory_kind": memory.kind, "skipped": []}

    # eval: one denoiser evaluation; FIT gets the previous evaluation's latents, as in sampling
    cond = module.make_cond(batch)
    x_sigma = (video * 2.0).to(device)  # a noisy input at sigma = 1 (the cost does not depend on the values)
    sigma = torch.ones(b, device=device)
    state: dict = {"latents": None}

    @torch.no_grad()
    def evaluate() -> None:
        with autocast:
            _, state["latents"] = module.edm.denoise(
                module.conditioned(forward, cond, state["latents"]),
                x_sigma,
                sigma,
                sigma_in=module.cfg.diffusion.sigma_in,
                return_state=True,
            )

    # sample: the training module's own sampler (Heun, CFG with the batch doubled)
    def run_sampler(steps: int) -> None:
        with autocast:
            module.generate(
                batch["caption"], steps=steps, cfg_scale=2.0, seed=0, use_ema=True, low_res=batch.get("low_res")
            )

    # train: the training loss (FIT: self-conditioning pass included), backward, clipping, optimiser step
    optimizer = clip = params = None
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        with autocast:
            per_sample, _ = module.diffusion_loss(batch, generator, backbone=forward)
        per_sample.mean().backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed = {
        "eval": dict(fn=evaluate),
        "train": dict(fn=train_step),
        "sample": dict(fn=lambda: run_sampler(job["sample_steps"]), warmup_fn=lambda: run_sampler(1)),
    }
    phases = [p for p in PHASES if p in job["phases"]]
    for phase in phases:
        if phase == "train":
            module.backbone.train()
            optimizer = module.configure_optimizers()["optimizer"]
            params = [p for p in module.backbone.parameters() if p.requires_grad]
            clip = module.cfg.optim.grad_clip
        else:
            module.backbone.eval()
        budget = None if job.get("deadline") is None else job["deadline"] - time.time()
        memory.reset()
        started = time.perf_counter()
        try:
            seconds = time_repeats(
                device=device, warmup=max(1, job["warmup"]), repeats=job["repeats"], budget_s=budget, **timed[phase]
            )
        except OverTimeBudget as err:
            results["skipped"].append(f"{phase} skipped: {err}")
            continue
        # the untimed warm-up: with --compile it holds the compilation of this phase's graphs
        warmup_s = time.perf_counter() - started - sum(seconds)
        results[phase] = {"seconds": seconds, "peak_gib": memory.read_gib(), "warmup_s": warmup_s}
    return results


def run_job(job: dict, isolate: bool = True) -> dict:
    """measure_job in a fresh Python process (``python -m lit_snapvideo.bench JOB.json RESULT.json``) or in this one;
    a child that dies or fails becomes an "error" note."""
    if not isolate:
        return measure_job(job)
    with tempfile.TemporaryDirectory() as folder:
        job_file, result_file = Path(folder) / "job.json", Path(folder) / "result.json"
        job_file.write_text(json.dumps(job))
        # past the deadline (plus a grace for writing the result) the child is killed: a compile can outlast it
        timeout = None if job.get("deadline") is None else max(1.0, job["deadline"] - time.time() + 15)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "lit_snapvideo.bench", str(job_file), str(result_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"the measuring process was stopped at the time budget's deadline ({timeout:.0f} s)"}
        if done.returncode == 0 and result_file.is_file():
            return json.loads(result_file.read_text())
    if done.returncode < 0:
        return {"error": f"the measuring process was killed by signal {-done.returncode} (out of memory?)"}
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return {"error": f"the measuring process failed: {last}"}
