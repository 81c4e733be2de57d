"""Throughput benchmark: the speed columns of the paper's Table 2, MFU, and cost-scaling curves (paper §5.1).

    rows = run_bench(BenchSettings(presets=["fit_small", "unet_small"]), out="results")
        -> results/throughput.csv, results/throughput.md (Table 2 layout, the paper's A100 numbers beside ours)
    run_scaling(BenchSettings(presets=["fit_small", "unet_small"]), out="results")
        -> results/scaling.csv, results/scaling.png (ms/video and peak memory against frames and resolution)

What one preset's measurement times (each in a fresh subprocess, so CPU peak RSS belongs to that preset alone):
- ``eval``: one denoiser evaluation, batch B, no guidance (what the paper's "Inf. Thr." most likely is, §9);
  FIT receives the latents of the previous evaluation, as in sampling.
- ``sample``: a whole sampling run, ``EDMVideoModule.generate``: Heun over N Karras steps (2N - 1 evaluations)
  with classifier-free guidance (the batch doubled to 2B), reported per video.
- ``train``: ``EDMVideoModule.diffusion_loss`` (for FIT with its no-grad self-conditioning pass, p = 0.9),
  backward, gradient clipping and the paper optimiser (AdamW / LAMB) step; no EMA update.
Text embeddings are precomputed random tensors (the paper's T5 is frozen; its cost is not the backbone's).
Method (nanoGPT habit): warm-up calls, then ``repeats`` synchronised timings; median and inter-quartile range.
FLOPs: ``presets.forward_flops`` (torch's FlopCounterMode, one multiply-add = 2 FLOPs); a training step counts
3x forward (+1 forward for FIT's self-conditioning pass), a sampling run (2N - 1) x 2B forwards.
MFU = achieved FLOP/s / peak, the peak given (``peak_tflops``) or measured by a square-matmul probe.
A memory guard estimates each phase's need on the meta device before anything is built and skips the phases
that do not fit ("needs ~62.0 GiB, 19.1 GiB available") instead of running out of memory.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .config import DataConfig, TextConfig
from .models.presets import (PAPER_PRESETS, PAPER_TEXT_DIM, PRESETS, build_backbone, count_parameters, example_inputs,
                             forward_flops, preset_kwargs)
from .models.registry import backbone
from .models.text import TINY_TEXT_CFG
from . import paper
from .report import fmt, human_count

PHASES = ("eval", "sample", "train")  # measured in this order (ru_maxrss fallback of PeakMemory only grows)
PAPER_MODEL_NAMES = {row["preset"]: row["model"] for row in paper.TABLE2}
PAPER_ROWS = {row["preset"]: row for row in paper.TABLE2}
# (FIT, U-Net, the paper pair whose ratio is printed beside): the small CPU pair stands in for 500M vs 284M
RATIO_PAIRS = [("fit_500m", "unet_284m", "fit_500m", "unet_284m"), ("fit_small", "unet_small", "fit_500m", "unet_284m"),
               ("fit_3_9b", "unet_284m", "fit_3_9b", "unet_284m")]
# scaling sweep (issue 7): nominal sizes, padded like the paper pads 36 -> 40 (FIT's 20-px group tiles)
SCALING_FRAMES = (4, 8, 16, 32)
SCALING_SIZES = ((36, 64), (72, 128), (144, 256))
GIB = 2**30

THROUGHPUT_COLUMNS = [
    "preset", "arch", "params", "batch", "frames", "height", "width", "text_tokens", "precision", "compile",
    "fwd_gflops_per_video",
    "train_ms", "train_q1_ms", "train_q3_ms", "eval_ms", "eval_q1_ms", "eval_q3_ms",
    "sample_steps", "sample_evals", "sample_ms", "sample_q1_ms", "sample_q3_ms",
    "train_tflops", "train_mfu", "eval_tflops", "eval_mfu", "sample_tflops", "sample_mfu",
    "peak_mem_eval_gib", "peak_mem_sample_gib", "peak_mem_train_gib", "memory_kind",
    "est_mem_eval_gib", "est_mem_sample_gib", "est_mem_train_gib",
    "paper_train_ms", "paper_infer_ms", "notes",
]
MEMORY_KINDS = {  # what the peak-memory columns mean
    "cuda_max_allocated": "CUDA max_memory_allocated of each phase (reset between phases)",
    "cpu_peak_rss_above_imports": "CPU: peak resident set (VmHWM, reset before each phase) of a fresh process per "
                                  "preset minus its resident set after the imports: weights + that phase's working memory",
    "cpu_peak_rss_above_imports_cumulative": "CPU: peak resident set (ru_maxrss) of a fresh process per preset minus "
                                             "its resident set after the imports; it never falls, so each phase's value "
                                             "includes the phases before it (eval, sample, train)",
}
SCALING_COLUMNS = ["preset", "arch", "phase", "batch", "frames", "height", "width", "padded_height", "padded_width",
                   "fwd_gflops_per_video", "ms", "q1_ms", "q3_ms", "peak_mem_gib", "memory_kind", "notes"]


@dataclass
class BenchSettings:
    """What to measure and how. ``batch`` maps a preset to its batch size (``batch_size`` otherwise);
    ``paper_phases`` replaces ``phases`` for the four paper presets (e.g. ``("eval",)`` on a CPU)."""

    presets: list[str] = field(default_factory=lambda: ["fit_small", "unet_small"])
    batch_size: int = 1
    batch: dict[str, int] = field(default_factory=dict)
    frames: int = 16
    size: tuple[int, int] = tuple(DataConfig().pad_to)  # (H, W) the backbone sees: 36x64 padded to 40x64
    precision: str = "fp32"  # fp32 | bf16 (autocast on the backbone; master weights, EDM and sampler fp32)
    compile: bool = False  # torch.compile the backbone
    grad_checkpointing: bool = False
    repeats: int = 5
    warmup: int = 1
    sample_steps: int = 8
    phases: tuple[str, ...] = PHASES
    paper_phases: Optional[tuple[str, ...]] = None
    device: str = "auto"  # auto | cpu | cuda
    threads: Optional[int] = None  # torch intra-op threads (None: see resolved_threads)
    peak_tflops: Optional[float] = None  # hardware peak for MFU; None: measured by a matmul probe
    memory_fraction: float = 0.8  # share of the available memory a measurement may plan to use
    available_gib: Optional[float] = None  # override the available memory (tests)
    isolate: bool = True  # one subprocess per measurement (honest CPU peak RSS; a crash stays contained)
    time_budget_s: Optional[float] = None  # whole run; phases that cannot finish in the time left are skipped

    def __post_init__(self) -> None:
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; valid: {', '.join(PRESETS)}")
        for phases in (self.phases, self.paper_phases or ()):
            bad = [p for p in phases if p not in PHASES]
            if bad:
                raise ValueError(f"unknown phase(s) {bad}; valid: {', '.join(PHASES)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.repeats < 5:
            raise ValueError(f"repeats must be >= 5 for a median and spread, got {self.repeats}")
        if self.batch_size < 1 or any(b < 1 for b in self.batch.values()) or self.sample_steps < 1:
            raise ValueError("batch sizes and sample_steps must be >= 1")

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_threads(self) -> tuple[int, str]:
        """(threads, why). On a busy CPU (1-min load average >= logical CPUs) one thread: torch's threaded kernels
        stall when a core is taken away mid-barrier (a tiny U-Net step measured 50x slower with 2 threads)."""
        if self.threads:
            return self.threads, "given"
        if self.resolved_device() == "cpu" and os.getloadavg()[0] >= (os.cpu_count() or 1):
            return 1, f"busy CPU: load average {os.getloadavg()[0]:.1f} >= {os.cpu_count()} logical CPUs"
        return torch.get_num_threads(), "torch default"

    def phases_for(self, preset: str) -> tuple[str, ...]:
        return tuple(self.paper_phases) if preset in PAPER_PRESETS and self.paper_phases is not None else tuple(self.phases)

    def batch_for(self, preset: str) -> int:
        return self.batch.get(preset, self.batch_size)


def text_shape(preset: str) -> tuple[int, int]:
    """(tokens, width) of the precomputed text embeddings: T5-11B's width and 77 tokens for the paper presets,
    the ablation's tiny open_clip tower and ``text.max_length`` for the others."""
    if preset in PAPER_PRESETS:
        return 77, PAPER_TEXT_DIM
    return TextConfig().max_length, TINY_TEXT_CFG["width"]


def arch_of(preset: str) -> str:
    return preset_kwargs(preset)[0]


def scaled_overrides(preset: str, frames: int, size: tuple[int, int]) -> dict:
    """Backbone overrides for another clip shape: FIT learns its positional table at ``input_size`` and groups at
    most 16 frames; the U-Net is size-agnostic."""
    kind, arguments = preset_kwargs(preset)
    return backbone(kind).clip_overrides(arguments, frames, size)


# ---- memory estimates on the meta device --------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of live (non-view) tensors created during a no-grad forward on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t._is_view():
                n = t.numel() * t.element_size()
                self.live += n
                weakref.finalize(t, self._free, n)
        self.peak = max(self.peak, self.live)
        return out


def activation_bytes(preset: str, batch: int, frames: int, size: tuple[int, int], overrides: dict | None = None) -> dict:
    """{"saved": bytes autograd keeps for backward, "live": peak live bytes of a no-grad forward} at fp32,
    measured on the meta device (nothing allocated)."""
    tokens, dim = text_shape(preset)
    model = build_backbone(preset, dim, overrides, device="meta")
    x, c_noise, cond = example_inputs(batch, frames, size, tokens, dim, device="meta")
    weights = {id(p) for p in model.parameters()}  # saved weights are counted with the parameters, not here
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if id(t) not in weights and (t._base is None or id(t._base) not in weights):
            saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, c_noise, cond)
    with torch.no_grad(), _LiveBytes() as live:
        model.eval()(x, c_noise, cond)
    return {"saved": saved, "live": live.peak}


def estimate_memory(preset: str, batch: int, frames: int, size: tuple[int, int], precision: str = "fp32",
                    overrides: dict | None = None) -> dict[str, float]:
    """Bytes each phase needs (rough): fp32 weights, plus for training gradients and two optimiser states (Adam
    and LAMB both keep two moments) and the activations saved for backward; inference keeps the peak of live
    activations (the sampling run at the doubled CFG batch). bf16 halves activations and adds bf16 weight copies."""
    weights = 4 * count_parameters(preset, text_shape(preset)[1], overrides)
    act = activation_bytes(preset, 1, frames, size, overrides)
    shrink = 0.5 if precision == "bf16" else 1.0
    casts = 0.5 * weights if precision == "bf16" else 0.0
    return {"eval": weights + casts + shrink * act["live"] * batch,
            "sample": weights + casts + shrink * act["live"] * 2 * batch,
            "train": 4 * weights + casts + shrink * (act["saved"] + act["live"]) * batch}


def available_bytes(device: str) -> int:
    """Memory a measurement could use now: free GPU memory, or the kernel's MemAvailable."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_guard(estimates: dict[str, float], phases: tuple[str, ...], available: float,
                 fraction: float) -> tuple[tuple[str, ...], list[str]]:
    """(phases that fit in ``fraction`` of ``available``, one skip message per phase that does not)."""
    keep, notes = [], []
    for phase in phases:
        if estimates[phase] <= fraction * available:
            keep.append(phase)
        else:
            notes.append(f"{phase} skipped: needs ~{estimates[phase] / GIB:.1f} GiB, {available / GIB:.1f} GiB "
                         f"available (limit {fraction:.0%} of it)")
    return tuple(keep), notes


# ---- timing ----------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class OverTimeBudget(Exception):
    """A phase whose repeats would not finish in the time left of the budget."""


def time_repeats(fn: Callable[[], Any], device: str, warmup: int, repeats: int, budget_s: Optional[float] = None,
                 warmup_fn: Optional[Callable[[], Any]] = None) -> list[float]:
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
                raise OverTimeBudget(f"one call takes ~{seconds[0]:.1f} s, {repeats} repeats need ~{needed:.0f} s, "
                                     f"over the {budget_s:.0f} s left of the time budget")
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


class PeakMemory:
    """Peak memory of a phase in GiB. CUDA: ``max_memory_allocated`` (reset per phase). CPU: the process's peak
    resident set (VmHWM) minus its resident set after the imports; Linux resets VmHWM on writing 5 to
    /proc/self/clear_refs, so each phase gets its own peak (the model's weights included). Where that reset is not
    allowed the peak is ``ru_maxrss``, which never falls: each reading then includes the earlier phases."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device == "cuda" else "cpu_peak_rss_above_imports"
        self.baseline = self._status("VmRSS") if device != "cuda" else 0

    @staticmethod
    def _status(key: str) -> int:
        """Bytes of a /proc/self/status field (VmRSS, VmHWM); ru_maxrss where /proc is missing."""
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def reset(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
        except OSError:
            self.kind = "cpu_peak_rss_above_imports_cumulative"

    def read_gib(self) -> float:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / GIB
        return (self._status("VmHWM") - self.baseline) / GIB


# ---- one measurement (runs in a subprocess) -------------------------------------------------------------------


class FixedTextEmbeddings(nn.Module):
    """Stand-in for the frozen text tower: fixed precomputed embeddings (L, dim) for every caption, as cached T5
    features would be. ``encode(captions) -> (emb (B, L, dim), mask (B, L) all True)``."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.dim, self.max_length = dim, tokens
        self.register_buffer("emb", torch.randn(tokens, dim, generator=torch.Generator().manual_seed(0)))

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(captions)
        return self.emb.expand(b, -1, -1).contiguous(), torch.ones(b, self.max_length, dtype=torch.bool, device=self.emb.device)


def build_bench_module(preset: str, frames: int, size: tuple[int, int], device: str, overrides: dict | None = None,
                       compile: bool = False, grad_checkpointing: bool = False):
    """(module, forward): the training module of ``preset`` (UNetModule / FITModule: loss, self-conditioning,
    paper optimiser, sampler) around a backbone built on ``device``; ``forward`` is the backbone, compiled or not.
    The module is built around a placeholder and then given the backbone, so no EMA copy is made."""
    from .config import load_config
    from .module import module_for

    tokens, dim = text_shape(preset)
    # the backbone's overrides go into the config too: its validation builds the backbone at this clip
    model_overrides = [f"model.overrides.{k}=[{','.join(map(str, v))}]" if isinstance(v, (tuple, list))
                       else f"model.overrides.{k}={v}" for k, v in (overrides or {}).items()]
    cfg = load_config(None, [f"model.preset={preset}", f"data.frames={frames}", f"data.size=[{size[0]},{size[1]}]",
                             f"data.pad_to=[{size[0]},{size[1]}]", f"text.max_length={tokens}", *model_overrides])
    backbone = build_backbone(preset, dim, overrides, grad_checkpointing=grad_checkpointing, device=device)
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
    module, forward = build_bench_module(job["preset"], job["frames"], tuple(job["size"]), device, job["overrides"],
                                         job["compile"], job["grad_checkpointing"])
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if job["precision"] == "bf16"
                else nullcontext())
    video = torch.randn(b, 3, job["frames"], *job["size"])
    batch = {"video": video, "caption": ["a benchmark clip"] * b, "fps": torch.full((b,), 8.0),
             "orig_size": torch.tensor([[36.0, 64.0]]).expand(b, 2), "is_image": torch.zeros(b, dtype=torch.bool)}
    results: dict[str, Any] = {"memory_kind": memory.kind, "skipped": []}

    # eval: one denoiser evaluation; FIT gets the previous evaluation's latents, as in sampling
    cond = module.make_cond(batch)
    x_sigma = (video * 2.0).to(device)  # a noisy input at sigma = 1 (the cost does not depend on the values)
    sigma = torch.ones(b, device=device)
    state: dict = {"latents": None}

    @torch.no_grad()
    def evaluate() -> None:
        with autocast:
            _, state["latents"] = module.edm.denoise(module.conditioned(forward, cond, state["latents"]), x_sigma, sigma,
                                                     sigma_in=module.cfg.diffusion.sigma_in, return_state=True)

    # sample: the training module's own sampler (Heun, CFG with the batch doubled)
    def run_sampler(steps: int) -> None:
        with autocast:
            module.generate(batch["caption"], steps=steps, cfg_scale=2.0, seed=0, use_ema=True)

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

    timed = {"eval": dict(fn=evaluate), "train": dict(fn=train_step),
             "sample": dict(fn=lambda: run_sampler(job["sample_steps"]), warmup_fn=lambda: run_sampler(1))}
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
            seconds = time_repeats(device=device, warmup=max(1, job["warmup"]), repeats=job["repeats"],
                                   budget_s=budget, **timed[phase])
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
            done = subprocess.run([sys.executable, "-m", "lit_snapvideo.bench", str(job_file), str(result_file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"the measuring process was stopped at the time budget's deadline ({timeout:.0f} s)"}
        if done.returncode == 0 and result_file.is_file():
            return json.loads(result_file.read_text())
    if done.returncode < 0:
        return {"error": f"the measuring process was killed by signal {-done.returncode} (out of memory?)"}
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return {"error": f"the measuring process failed: {last}"}


# ---- the table ---------------------------------------------------------------------------------------------


def phase_flops(fwd: float, arch: str, phase: str, sample_steps: int) -> float:
    """FLOPs per video of a phase, from the forward FLOPs per video."""
    if phase == "train":
        return backbone(arch).train_flops(fwd)  # forward + backward (2x), + FIT's self-cond forward
    if phase == "sample":
        return fwd * (2 * sample_steps - 1) * 2  # Heun: 2N - 1 evaluations, each on the doubled CFG batch
    return fwd


def hardware_info(settings: BenchSettings) -> dict:
    """hardware (CPU model from /proc/cpuinfo or GPU name), threads and why, torch, Python, load average (CPU)."""
    threads, why = settings.resolved_threads()
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": f"{threads} thread(s), {why}"}
    if settings.resolved_device() == "cuda":
        info["hardware"] = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
        return info
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    info["hardware"] = f"{model}, {os.cpu_count()} logical CPUs"
    info["load_average"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return info


def plan_preset(preset: str, settings: BenchSettings, frames: Optional[int] = None,
                size: Optional[tuple[int, int]] = None, phases: Optional[tuple[str, ...]] = None,
                overrides: Optional[dict] = None, available: Optional[float] = None) -> dict:
    """A row before measuring: sizes, FLOPs, memory estimates, the memory guard's verdict ("run_phases", "notes")
    and each phase's FLOPs per batch ("work")."""
    device = settings.resolved_device()
    frames, size = frames or settings.frames, tuple(size or settings.size)
    phases = phases or settings.phases_for(preset)
    b, arch = settings.batch_for(preset), arch_of(preset)
    tokens, dim = text_shape(preset)
    fwd = forward_flops(preset, frames, size, tokens, dim, overrides=overrides)
    row: dict[str, Any] = {"preset": preset, "arch": arch, "params": count_parameters(preset, dim, overrides),
                           "batch": b, "frames": frames, "height": size[0], "width": size[1], "text_tokens": tokens,
                           "precision": settings.precision, "compile": settings.compile,
                           "sample_steps": settings.sample_steps, "sample_evals": 2 * settings.sample_steps - 1,
                           "fwd_gflops_per_video": fwd / 1e9, "overrides": overrides}
    if preset in PAPER_ROWS:
        row["paper_train_ms"], row["paper_infer_ms"] = PAPER_ROWS[preset]["train_ms"], PAPER_ROWS[preset]["infer_ms"]
    estimates = estimate_memory(preset, b, frames, size, settings.precision, overrides)
    for phase, need in estimates.items():
        row[f"est_mem_{phase}_gib"] = need / GIB
    if available is None:
        available = settings.available_gib * GIB if settings.available_gib is not None else available_bytes(device)
    row["run_phases"], notes = memory_guard(estimates, phases, available, settings.memory_fraction)
    row["notes"] = notes
    row["work"] = {p: phase_flops(fwd, arch, p, settings.sample_steps) * b for p in row["run_phases"]}
    return row


def measure_planned(row: dict, settings: BenchSettings, peak_flops: Optional[float],
                    deadline: Optional[float] = None, floor_rate: Optional[tuple[float, str]] = None) -> dict:
    """Measure a planned row's phases (each skipped if it cannot finish by ``deadline``, a time.time()); add
    ms/video (median, IQR), TFLOP/s, MFU against ``peak_flops`` and peak memory. ``notes`` becomes one string.
    ``floor_rate`` (FLOP/s, where it comes from): phases that cannot finish even at that rate are skipped before
    anything is built."""
    b, phases = row["batch"], row["run_phases"]
    notes = list(row["notes"])
    if deadline is not None and floor_rate:
        left, kept = deadline - time.time(), []
        for phase in phases:
            floor = row["work"][phase] * (settings.warmup + settings.repeats) / floor_rate[0]
            if floor > left:
                notes.append(f"{phase} skipped: needs over {floor:.0f} s at {floor_rate[0] / 1e9:.0f} GFLOP/s "
                             f"({floor_rate[1]}), {max(left, 0):.0f} s of the time budget left")
            else:
                kept.append(phase)
                left -= floor
        phases = tuple(kept)
    if phases:
        job = dict(preset=row["preset"], overrides=row["overrides"], batch=b, frames=row["frames"],
                   size=(row["height"], row["width"]), phases=phases, precision=settings.precision,
                   compile=settings.compile, grad_checkpointing=settings.grad_checkpointing, repeats=settings.repeats,
                   warmup=settings.warmup, sample_steps=settings.sample_steps, device=settings.resolved_device(),
                   threads=settings.resolved_threads()[0], deadline=deadline)
        result = run_job(job, settings.isolate)
        notes += result.get("skipped", []) + ([result["error"]] if "error" in result else [])
        row["memory_kind"] = result.get("memory_kind")
        for phase in (p for p in phases if p in result):
            # per video: each phase handles b videos (the sampler's CFG copy of the batch is not an extra video)
            med, q1, q3 = (1000 * s / b for s in median_iqr(result[phase]["seconds"]))
            row[f"{phase}_ms"], row[f"{phase}_q1_ms"], row[f"{phase}_q3_ms"] = med, q1, q3
            achieved = row["work"][phase] / b / (med / 1000)
            row[f"{phase}_tflops"] = achieved / 1e12
            row[f"{phase}_mfu"] = achieved / peak_flops if peak_flops else None
            row[f"peak_mem_{phase}_gib"] = result[phase]["peak_gib"]
            row[f"{phase}_warmup_s"] = result[phase].get("warmup_s")
    row["notes"] = "; ".join(notes)
    return row


def measure_all(plans: list[dict], settings: BenchSettings, peak_flops: Optional[float],
                log: Callable[[str], None] = print) -> list[dict]:
    """Measure planned rows in order under one time budget (``settings.time_budget_s``)."""
    deadline = None if settings.time_budget_s is None else time.time() + settings.time_budget_s
    # the optimistic rate that decides what cannot finish: the probe's, or a faster one reached in this run
    # (small models run far below large ones, so a rate is only ever raised)
    floor_rate = (peak_flops, "the matmul probe") if peak_flops else None
    rows = []
    for plan in plans:
        started = time.perf_counter()
        row = measure_planned(plan, settings, peak_flops, deadline, floor_rate)
        rows.append(row)
        for phase in (p for p in PHASES if row.get(f"{p}_tflops")):
            if floor_rate is None or row[f"{phase}_tflops"] * 1e12 > floor_rate[0]:
                floor_rate = (row[f"{phase}_tflops"] * 1e12, f"what {row['preset']} {phase} reached")
        log(f"{row['preset']} {row['frames']}x{row['height']}x{row['width']} b{row['batch']}: "
            + ", ".join(f"{p} {_cell(row, p)}" for p in PHASES) + f" ms/video ({time.perf_counter() - started:.0f} s)"
            + (f"; {row['notes']}" if row["notes"] else ""))
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """FIT over U-Net speed-ups (U-Net ms / FIT ms) for each pair measured in this run, with the paper's."""
    by_preset = {r["preset"]: r for r in rows}
    out = []
    for fit, unet, paper_fit, paper_unet in RATIO_PAIRS:
        if fit not in by_preset or unet not in by_preset:
            continue
        entry = {"fit": fit, "unet": unet, "paper_pair": f"{paper_fit} / {paper_unet}"}
        for ours, phase, paper_key in (("train", "train", "train_ms"), ("eval", "eval", "infer_ms"), ("sample", "sample", None)):
            a, b = by_preset[fit].get(f"{phase}_ms"), by_preset[unet].get(f"{phase}_ms")
            entry[ours] = b / a if a and b else None
            entry[f"paper_{ours}"] = (PAPER_ROWS[paper_unet][paper_key] / PAPER_ROWS[paper_fit][paper_key]
                                      if paper_key else None)
        out.append(entry)
    return out


def _cell(row: dict, phase: str) -> str:
    if row.get(f"{phase}_ms") is None:
        return "-"
    return f"{row[f'{phase}_ms']:.1f} [{row[f'{phase}_q1_ms']:.1f}-{row[f'{phase}_q3_ms']:.1f}]"


def throughput_markdown(rows: list[dict], settings: BenchSettings, info: dict, peak: dict, command: str) -> str:
    """Table 2's layout with the paper's A100 columns beside ours, the header saying how it was measured."""
    batches = ", ".join(f"{r['preset']} {r['batch']}" for r in rows)
    lines = [
        "# Throughput: paper Table 2's speed columns on this machine", "",
        f"- Hardware: {info['hardware']}; torch {info['torch']} ({info['threads']}), Python {info['python']}",
    ]
    if "load_average" in info:
        lines.append(f"- Load average (1/5/15 min) at the start: {info['load_average']}, at the end: "
                     f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (above the CPU count, other work shared the "
                     f"CPU while measuring: the timings are noisy)")
    lines += [
        f"- Precision: {settings.precision}; torch.compile: {'on' if settings.compile else 'off'}; "
        f"clip {settings.frames} x {settings.size[0]} x {settings.size[1]} (the paper's 36x64 padded to 40x64); "
        f"batch sizes: {batches}",
        f"- Method: {settings.warmup} warm-up call(s), then {settings.repeats} synchronised repeats; "
        f"median [inter-quartile range] in ms per video. Text embeddings precomputed (77 x 1024 for the paper "
        f"presets, {text_shape('fit_small')[0]} x {text_shape('fit_small')[1]} for the small ones).",
        "- Train: forward (FIT: plus its no-grad self-conditioning pass), backward, grad clipping, AdamW (U-Net) / "
        "LAMB (FIT) step. Infer/eval: one denoiser evaluation, batch B, no guidance (the paper's Inf. Thr. is most "
        f"likely this, §9). Sample: a whole Heun run, {settings.sample_steps} steps = "
        f"{2 * settings.sample_steps - 1} evaluations, classifier-free guidance (batch doubled), per video.",
        f"- MFU: achieved FLOP/s over {peak['label']}. FLOPs from torch's FlopCounterMode; a training step counts "
        "3 forward passes (+1 for FIT's self-conditioning pass).",
        f"- Peak memory, GiB: {MEMORY_KINDS.get(rows[0].get('memory_kind') if rows else None, '-')}.",
        f"- Command: `{command}`", "",
        "| Model | Params | Fwd GFLOPs/video | Train ms/video | Paper train (A100) | Infer ms/video/eval | "
        f"Paper infer (A100) | Sample ms/video ({settings.sample_steps} Heun steps, CFG) | Train TFLOP/s (MFU) | "
        "Eval TFLOP/s (MFU) | Peak mem GiB "
        "(eval/sample/train) | Notes |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        name = f"{PAPER_MODEL_NAMES[r['preset']]} (`{r['preset']}`)" if r["preset"] in PAPER_MODEL_NAMES else f"`{r['preset']}`"
        mfu = lambda p: f"{r[f'{p}_tflops']:.3f} ({100 * r[f'{p}_mfu']:.1f}%)" if r.get(f"{p}_tflops") is not None else "-"
        mem = "/".join(fmt(r.get(f"peak_mem_{p}_gib")) for p in PHASES)
        lines.append(f"| {name} | {human_count(r['params'])} | {r['fwd_gflops_per_video']:.1f} | "
                     f"{_cell(r, 'train')} | {fmt(r.get('paper_train_ms'), 1)} | {_cell(r, 'eval')} | "
                     f"{fmt(r.get('paper_infer_ms'), 1)} | {_cell(r, 'sample')} | {mfu('train')} | {mfu('eval')} | "
                     f"{mem} | {r['notes'] or ''} |")
    ratios = speedups(rows)
    if ratios:
        lines += ["", "## FIT over U-Net speed-up (U-Net ms / FIT ms; > 1: FIT faster), measured in this run", "",
                  "| FIT / U-Net | train | paper train | infer (eval) | paper infer | sample run | paper pair |",
                  "|---|---|---|---|---|---|---|"]
        for s in ratios:
            x = lambda v: f"{v:.2f}x" if v is not None else "-"
            lines.append(f"| {s['fit']} / {s['unet']} | {x(s['train'])} | {x(s['paper_train'])} | {x(s['eval'])} | "
                         f"{x(s['paper_eval'])} | {x(s['sample'])} | {s['paper_pair']} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def reference_peak(settings: BenchSettings) -> dict:
    """{"flops": peak FLOP/s for MFU, "label": where it comes from}."""
    if settings.peak_tflops:
        return {"flops": settings.peak_tflops * 1e12, "label": f"the given peak {settings.peak_tflops:g} TFLOP/s"}
    device = settings.resolved_device()
    torch.set_num_threads(settings.resolved_threads()[0])  # the probe runs here, with the measurement's threads
    tflops = matmul_probe_tflops(device, settings.precision)
    n = 8192 if device == "cuda" else 2048
    return {"flops": tflops * 1e12,
            "label": f"a measured {settings.precision} {n}^3 matmul probe (best of 10 calls: {tflops:.3f} TFLOP/s "
                     f"with these threads; not the datasheet peak)"}


def run_bench(settings: BenchSettings, out: str | Path = "results", command: str = "",
              log: Callable[[str], None] = print) -> list[dict]:
    """Measure every preset of ``settings``; write OUT/throughput.csv and OUT/throughput.md; return the rows."""
    out = Path(out)
    info = hardware_info(settings)
    settings = dataclasses.replace(settings, threads=settings.resolved_threads()[0])  # fixed for the whole run
    peak = reference_peak(settings)
    log(f"{info['hardware']}, {info['threads']}; MFU reference: {peak['label']}")
    plans = [plan_preset(p, settings) for p in settings.presets]
    for plan in plans:
        plan["notes"] += [f"{p} not requested" for p in PHASES if p not in settings.phases_for(plan["preset"])]
    rows = measure_all(plans, settings, peak["flops"], log)
    write_csv(rows, THROUGHPUT_COLUMNS, out / "throughput.csv")
    (out / "throughput.md").write_text(throughput_markdown(rows, settings, info, peak, command or "lit-snapvideo bench"))
    for s in speedups(rows):
        log(f"FIT/U-Net speed-up {s['fit']}/{s['unet']}: train {fmt(s['train'])}x (paper {fmt(s['paper_train'])}x), "
            f"infer {fmt(s['eval'])}x (paper {fmt(s['paper_eval'])}x)")
    return rows


# ---- the scaling sweep -----------------------------------------------------------------------------------------


def pad_multiple(presets: list[str]) -> tuple[int, int]:
    """(H, W) every preset accepts: FIT's group tile in pixels (patch x group: 20 x 16 px for the paper layout,
    which is why the paper pads 36 -> 40) and the U-Net's 2^(levels - 1), combined by least common multiple."""
    multiple = (1, 1)
    for preset in presets:
        kind, arguments = preset_kwargs(preset)
        tile = backbone(kind).size_multiple(arguments)
        multiple = tuple(math.lcm(m, t) for m, t in zip(multiple, tile))
    return multiple


def padded_size(size: tuple[int, int], multiple: tuple[int, int]) -> tuple[int, int]:
    return tuple(math.ceil(s / m) * m for s, m in zip(size, multiple))


def run_scaling(settings: BenchSettings, out: str | Path = "results", phases: tuple[str, ...] = ("eval", "train"),
                frames_list: tuple[int, ...] = SCALING_FRAMES, sizes: tuple[tuple[int, int], ...] = SCALING_SIZES,
                log: Callable[[str], None] = print) -> list[dict]:
    """ms/video and peak memory of ``phases`` for each preset against frames (at the first size) and against
    resolution (at 16 frames); writes OUT/scaling.csv and OUT/scaling.png."""
    out = Path(out)
    info = hardware_info(settings)
    settings = dataclasses.replace(settings, threads=settings.resolved_threads()[0])  # fixed for the whole run
    shapes = [(f, sizes[0]) for f in frames_list] + [(16, s) for s in sizes if s != sizes[0] or 16 not in frames_list]
    jobs = [(preset, frames, size) for preset in settings.presets for frames, size in shapes]
    multiple = pad_multiple(settings.presets)  # one padded size per shape, the same for every preset
    plans = [plan_preset(preset, settings, frames, padded_size(size, multiple), phases,
                         scaled_overrides(preset, frames, padded_size(size, multiple))) for preset, frames, size in jobs]
    measured = measure_all(plans, settings, None, log)  # no MFU in the sweep
    rows = [{"preset": r["preset"], "arch": r["arch"], "phase": phase, "batch": r["batch"], "frames": r["frames"],
             "height": size[0], "width": size[1], "padded_height": r["height"], "padded_width": r["width"],
             "fwd_gflops_per_video": r["fwd_gflops_per_video"], "ms": r.get(f"{phase}_ms"),
             "q1_ms": r.get(f"{phase}_q1_ms"), "q3_ms": r.get(f"{phase}_q3_ms"),
             "peak_mem_gib": r.get(f"peak_mem_{phase}_gib"), "memory_kind": r.get("memory_kind"), "notes": r["notes"]}
            for r, (_, _, size) in zip(measured, jobs) for phase in phases]
    write_csv(rows, SCALING_COLUMNS, out / "scaling.csv")
    batches = ", ".join(f"{p} batch {settings.batch_for(p)}" for p in settings.presets)
    plot_scaling(rows, out / "scaling.png", sizes[0], f"{batches}, {settings.precision}; {info['hardware']}, "
                 f"torch {info['torch']} ({info['threads']})")
    return rows


def plot_scaling(rows: list[dict], path: Path, base_size: tuple[int, int], title: str = "") -> None:
    """2 x 2 log-log panels: ms/video and peak memory against frames and against pixels per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for color, preset in enumerate(dict.fromkeys(r["preset"] for r in rows)):
        for phase, style in (("train", "-o"), ("eval", "--s"), ("sample", ":^")):
            mine = [r for r in rows if r["preset"] == preset and r["phase"] == phase and r["ms"] is not None]
            if not mine:
                continue
            by_frames = sorted((r for r in mine if (r["height"], r["width"]) == tuple(base_size)), key=lambda r: r["frames"])
            by_size = sorted((r for r in mine if r["frames"] == 16), key=lambda r: r["height"] * r["width"])
            label = f"{preset} {phase}"
            for col, series, x_of in ((0, by_frames, lambda r: r["frames"]),
                                      (1, by_size, lambda r: r["padded_height"] * r["padded_width"])):
                xs = [x_of(r) for r in series]
                axes[0, col].plot(xs, [r["ms"] for r in series], style, color=f"C{color}", label=label)
                mem = [(x, r["peak_mem_gib"]) for x, r in zip(xs, series) if (r["peak_mem_gib"] or 0) > 0]
                if mem:
                    axes[1, col].plot(*zip(*mem), style, color=f"C{color}", label=label)
    titles = [f"against frames ({base_size[0]}x{base_size[1]}, padded)", "against resolution (16 frames)"]
    for col in range(2):
        for row_i, ylabel in enumerate(("ms / video", "peak memory (GiB)")):
            ax = axes[row_i, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylabel(ylabel)
            ax.set_xlabel("frames" if col == 0 else "frame size H x W (padded; axis: pixels per frame)")
            ax.set_title(f"{ylabel.split(' (')[0]} {titles[col]}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    sizes = sorted({(r["padded_height"] * r["padded_width"], f"{r['height']}x{r['width']}") for r in rows if r["frames"] == 16})
    for ax in axes[:, 1]:  # label the resolution axis with the nominal sizes
        ax.set_xticks([x for x, _ in sizes], [label for _, label in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # the measuring subprocess of run_job
    _job, _result = sys.argv[1:3]
    Path(_result).write_text(json.dumps(measure_job(json.loads(Path(_job).read_text()))))
