"""Memory of a benchmark phase: estimated before anything is built, measured while it runs.

- :func:`activation_bytes` and :func:`estimate_memory`: the bytes each phase needs, from forward passes on the meta
  device (nothing allocated): weights, gradients and optimiser states, activations saved for backward, live ones.
- :func:`memory_guard`: the phases that fit in a share of :func:`available_bytes`, and a note for each one that does
  not ("train skipped: needs ~62.0 GiB, 19.1 GiB available (limit 80% of it)").
- :class:`PeakMemory`: the measured peak of a phase (CUDA's max allocated, or the CPU's peak resident set);
  :data:`MEMORY_KINDS` says what each kind of reading means.
"""

from __future__ import annotations

import os
import resource
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..models.presets import build_backbone, count_parameters, example_inputs
from .settings import text_shape

GIB = 2**30

MEMORY_KINDS = {  # what the peak-memory columns mean
    "cuda_max_allocated": "CUDA max_memory_allocated of each phase (reset between phases)",
    "cpu_peak_rss_above_imports": "CPU: peak resident set (VmHWM, reset before each phase) of a fresh process per "
    "preset minus its resident set after the imports: weights + that phase's working memory",
    "cpu_peak_rss_above_imports_cumulative": "CPU: peak resident set (ru_maxrss) of a fresh process per preset minus "
    "its resident set after the imports; it never falls, so each phase's value "
    "includes the phases before it (eval, sample, train)",
}


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


def activation_bytes(
    preset: str, batch: int, frames: int, size: tuple[int, int], overrides: dict | None = None
) -> dict:
    """{"saved": bytes autograd keeps for backward, "live": peak live bytes of a no-grad forward} at fp32,
    measured on the meta device (nothing allocated)."""
    tokens, dim = text_shape(preset)
    model = build_backbone(preset, dim, overrides, device="meta")
    x, c_noise, cond = example_inputs(batch, frames, size, tokens, dim, device="meta", model=model)
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


def estimate_memory(
    preset: str, batch: int, frames: int, size: tuple[int, int], precision: str = "fp32", overrides: dict | None = None
) -> dict[str, float]:
    """Bytes each phase needs (rough): fp32 weights, plus for training gradients and two optimiser states (Adam
    and LAMB both keep two moments) and the activations saved for backward; inference keeps the peak of live
    activations (the sampling run at the doubled CFG batch). bf16 halves activations and adds bf16 weight copies."""
    weights = 4 * count_parameters(preset, text_shape(preset)[1], overrides)
    act = activation_bytes(preset, 1, frames, size, overrides)
    shrink = 0.5 if precision == "bf16" else 1.0
    casts = 0.5 * weights if precision == "bf16" else 0.0
    return {
        "eval": weights + casts + shrink * act["live"] * batch,
        "sample": weights + casts + shrink * act["live"] * 2 * batch,
        "train": 4 * weights + casts + shrink * (act["saved"] + act["live"]) * batch,
    }


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


def memory_guard(
    estimates: dict[str, float], phases: tuple[str, ...], available: float, fraction: float
) -> tuple[tuple[str, ...], list[str]]:
    """(phases that fit in ``fraction`` of ``available``, one skip message per phase that does not)."""
    keep, notes = [], []
    for phase in phases:
        if estimates[phase] <= fraction * available:
            keep.append(phase)
        else:
            notes.append(
                f"{phase} skipped: needs ~{estimates[phase] / GIB:.1f} GiB, {available / GIB:.1f} GiB "
                f"available (limit {fraction:.0%} of it)"
            )
    return tuple(keep), notes


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
        # in-process (bench isolate=False), memory that earlier work freed after the baseline can leave the resident
        # set below it: a phase's reading would go negative (seen: -0.106 GiB), so the floor follows the set down
        self.baseline = min(self.baseline, self._status("VmRSS"))
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
        except OSError:
            self.kind = "cpu_peak_rss_above_imports_cumulative"

    def read_gib(self) -> float:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / GIB
        return (self._status("VmHWM") - self.baseline) / GIB
