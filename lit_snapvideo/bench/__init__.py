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

Files, by concern (every public name is importable from ``lit_snapvideo.bench``):
- ``settings.py``: :class:`BenchSettings`, the phases, and the clip shapes a run plans (text embeddings, padding);
- ``memory.py``: the meta-device memory estimate, the memory guard, :class:`PeakMemory`;
- ``timing.py``: warm-up and synchronised repeats, the matmul probe, one job measured in its own process
  (``python -m lit_snapvideo.bench JOB.json RESULT.json``, see ``__main__.py``);
- ``render.py``: the markdown table, the speed-ups, the CSV files and the scaling plot;
- ``runner.py``: :func:`run_bench` and :func:`run_scaling`, which plan, measure and write.
"""

from __future__ import annotations

from .memory import GIB, MEMORY_KINDS, PeakMemory, activation_bytes, available_bytes, estimate_memory, memory_guard
from .render import (
    PAPER_MODEL_NAMES,
    PAPER_ROWS,
    RATIO_PAIRS,
    SCALING_COLUMNS,
    THROUGHPUT_COLUMNS,
    ms_cell,
    plot_scaling,
    speedups,
    throughput_markdown,
    write_csv,
)
from .runner import (
    hardware_info,
    measure_all,
    measure_planned,
    phase_flops,
    plan_preset,
    reference_peak,
    run_bench,
    run_scaling,
)
from .settings import (
    PHASES,
    SCALING_FRAMES,
    SCALING_SIZES,
    BenchSettings,
    arch_of,
    pad_multiple,
    padded_size,
    scaled_overrides,
    text_shape,
)
from .timing import (
    FixedTextEmbeddings,
    OverTimeBudget,
    build_bench_module,
    matmul_probe_tflops,
    measure_job,
    median_iqr,
    run_job,
    synchronize,
    time_repeats,
)

__all__ = [
    "PHASES",
    "SCALING_FRAMES",
    "SCALING_SIZES",
    "BenchSettings",
    "text_shape",
    "arch_of",
    "scaled_overrides",
    "pad_multiple",
    "padded_size",
    "GIB",
    "MEMORY_KINDS",
    "activation_bytes",
    "estimate_memory",
    "available_bytes",
    "memory_guard",
    "PeakMemory",
    "synchronize",
    "OverTimeBudget",
    "time_repeats",
    "median_iqr",
    "matmul_probe_tflops",
    "FixedTextEmbeddings",
    "build_bench_module",
    "measure_job",
    "run_job",
    "PAPER_MODEL_NAMES",
    "PAPER_ROWS",
    "RATIO_PAIRS",
    "THROUGHPUT_COLUMNS",
    "SCALING_COLUMNS",
    "speedups",
    "ms_cell",
    "throughput_markdown",
    "write_csv",
    "plot_scaling",
    "phase_flops",
    "hardware_info",
    "plan_preset",
    "measure_planned",
    "measure_all",
    "reference_peak",
    "run_bench",
    "run_scaling",
]
