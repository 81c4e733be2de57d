"""What a benchmark run measures, and the clip shapes it plans: :class:`BenchSettings` (presets, batch sizes,
clip, precision, phases, memory and time budgets), the text embeddings each preset gets (:func:`text_shape`),
and the backbone overrides and padded frame sizes of the scaling sweep.

    settings = BenchSettings(presets=["fit_small", "unet_small"], batch={"fit_small": 4})
    settings.batch_for("fit_small"), settings.phases_for("unet_small")  # -> 4, ("eval", "sample", "train")
    padded_size((36, 64), pad_multiple(["fit_small", "unet_small"]))     # (H, W) both presets accept
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..config import DataConfig, TextConfig
from ..models.presets import PAPER_PRESETS, PAPER_TEXT_DIM, PRESETS, preset_kwargs
from ..models.registry import backbone
from ..models.text import TINY_TEXT_CFG

PHASES = ("eval", "sample", "train")  # measured in this order (ru_maxrss fallback of PeakMemory only grows)

# scaling sweep (issue 7): nominal sizes, padded like the paper pads 36 -> 40 (FIT's 20-px group tiles)
SCALING_FRAMES = (4, 8, 16, 32)
SCALING_SIZES = ((36, 64), (72, 128), (144, 256))


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
    compile_rows: bool = False  # each preset twice: an eager row and a compiled row (the compile time in its notes)
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
        return (
            tuple(self.paper_phases)
            if preset in PAPER_PRESETS and self.paper_phases is not None
            else tuple(self.phases)
        )

    def batch_for(self, preset: str) -> int:
        return self.batch.get(preset, self.batch_size)

    def clip_for(self, preset: str) -> tuple[int, tuple[int, int]]:
        """(frames, (H, W)) a preset is measured at: ``frames`` x ``size``, but an upsampler (models/registry.py) at
        its own ``input_size`` (the paper's: 16 x 288 x 512, 147,456 patches)."""
        kind, arguments = preset_kwargs(preset)
        if backbone(kind).upsampler:
            return int(arguments["input_size"][0]), tuple(int(s) for s in arguments["input_size"][1:])
        return self.frames, tuple(self.size)


def text_shape(preset: str) -> tuple[int, int]:
    """(tokens, width) of the precomputed text embeddings: T5-11B's width and 77 tokens for the paper presets,
    the ablation's tiny open_clip tower and ``text.max_length`` for the others."""
    if preset in PAPER_PRESETS:
        return 77, PAPER_TEXT_DIM
    return TextConfig().max_length, TINY_TEXT_CFG["width"]


def arch_of(preset: str) -> str:
    return preset_kwargs(preset)[0]


def scaled_overrides(preset: str, frames: int, size: tuple[int, int]) -> dict:
    """Backbone overrides for another clip shape, as the preset's kind says (models/registry.py): FIT learns its
    positional table at ``input_size`` and groups at most 16 frames; the U-Net is size-agnostic."""
    kind, arguments = preset_kwargs(preset)
    return backbone(kind).clip_overrides(arguments, frames, size)


def pad_multiple(presets: list[str]) -> tuple[int, int]:
    """(H, W) every preset accepts: FIT's group tile in pixels (patch x group: 20 x 16 px for the paper layout,
    which is why the paper pads 36 -> 40) and the U-Net's 2^(levels - 1), combined by least common multiple."""
    multiple = (1, 1)
    for preset in presets:
        kind, arguments = preset_kwargs(preset)
        tile = backbone(kind).size_multiple(arguments)  # models/registry.py
        multiple = tuple(math.lcm(m, t) for m, t in zip(multiple, tile))
    return multiple


def padded_size(size: tuple[int, int], multiple: tuple[int, int]) -> tuple[int, int]:
    return tuple(math.ceil(s / m) * m for s, m in zip(size, multiple))
