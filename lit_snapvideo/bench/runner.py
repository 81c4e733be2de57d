"""Running the benchmark: plan each row (FLOPs, memory estimates, the memory guard's verdict), measure the planned
rows in order under one time budget, and write the files.

    run_bench(settings, out)   -> OUT/throughput.{csv,md}; returns one row per preset
    run_scaling(settings, out) -> OUT/scaling.{csv,png}; returns one row per (preset, clip shape, phase)
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..models.presets import count_parameters, forward_flops
from ..models.registry import backbone
from ..report import fmt
from .memory import GIB, available_bytes, estimate_memory, memory_guard
from .render import (
    PAPER_ROWS,
    SCALING_COLUMNS,
    THROUGHPUT_COLUMNS,
    ms_cell,
    plot_scaling,
    speedups,
    throughput_markdown,
    write_csv,
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
from .timing import matmul_probe_tflops, median_iqr, run_job


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
    info["load_average"] = os.getloadavg()  # (1, 5, 15 min), compared with the load at the end in the table
    return info


def plan_preset(
    preset: str,
    settings: BenchSettings,
    frames: Optional[int] = None,
    size: Optional[tuple[int, int]] = None,
    phases: Optional[tuple[str, ...]] = None,
    overrides: Optional[dict] = None,
    available: Optional[float] = None,
) -> dict:
    """A row before measuring: sizes, FLOPs, memory estimates, the memory guard's verdict ("run_phases", "notes")
    and each phase's FLOPs per batch ("work")."""
    device = settings.resolved_device()
    own_frames, own_size = settings.clip_for(preset)
    frames, size = frames or own_frames, tuple(size or own_size)
    phases = phases or settings.phases_for(preset)
    b, arch = settings.batch_for(preset), arch_of(preset)
    tokens, dim = text_shape(preset)
    fwd = forward_flops(preset, frames, size, tokens, dim, overrides=overrides)
    row: dict[str, Any] = {
        "preset": preset,
        "arch": arch,
        "params": count_parameters(preset, dim, overrides),
        "batch": b,
        "frames": frames,
        "height": size[0],
        "width": size[1],
        "text_tokens": tokens,
        "precision": settings.precision,
        "compile": settings.compile,
        "sample_steps": settings.sample_steps,
        "sample_evals": 2 * settings.sample_steps - 1,
        "fwd_gflops_per_video": fwd / 1e9,
        "overrides": overrides,
    }
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


def measure_planned(
    row: dict,
    settings: BenchSettings,
    peak_flops: Optional[float],
    deadline: Optional[float] = None,
    floor_rate: Optional[tuple[float, str]] = None,
) -> dict:
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
                notes.append(
                    f"{phase} skipped: needs over {floor:.0f} s at {floor_rate[0] / 1e9:.0f} GFLOP/s "
                    f"({floor_rate[1]}), {max(left, 0):.0f} s of the time budget left"
                )
            else:
                kept.append(phase)
                left -= floor
        phases = tuple(kept)
    if phases:
        job = dict(
            preset=row["preset"],
            overrides=row["overrides"],
            batch=b,
            frames=row["frames"],
            size=(row["height"], row["width"]),
            phases=phases,
            precision=settings.precision,
            compile=row["compile"],
            grad_checkpointing=settings.grad_checkpointing,
            repeats=settings.repeats,
            warmup=settings.warmup,
            sample_steps=settings.sample_steps,
            device=settings.resolved_device(),
            threads=settings.resolved_threads()[0],
            deadline=deadline,
        )
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
            if row["compile"] and row[f"{phase}_warmup_s"] is not None:
                notes.append(f"{phase}: compile + first call {row[f'{phase}_warmup_s']:.0f} s")
    row["notes"] = "; ".join(notes)
    return row


def measure_all(
    plans: list[dict], settings: BenchSettings, peak_flops: Optional[float], log: Callable[[str], None] = print
) -> list[dict]:
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
        log(
            f"{row['preset']} {row['frames']}x{row['height']}x{row['width']} b{row['batch']}: "
            + ", ".join(f"{p} {ms_cell(row, p)}" for p in PHASES)
            + f" ms/video ({time.perf_counter() - started:.0f} s)"
            + (f"; {row['notes']}" if row["notes"] else "")
        )
    return rows


def reference_peak(settings: BenchSettings) -> dict:
    """{"flops": peak FLOP/s for MFU, "label": where it comes from}."""
    if settings.peak_tflops:
        return {"flops": settings.peak_tflops * 1e12, "label": f"the given peak {settings.peak_tflops:g} TFLOP/s"}
    device = settings.resolved_device()
    torch.set_num_threads(settings.resolved_threads()[0])  # the probe runs here, with the measurement's threads
    tflops = matmul_probe_tflops(device, settings.precision)
    n = 8192 if device == "cuda" else 2048
    return {
        "flops": tflops * 1e12,
        "label": f"a measured {settings.precision} {n}^3 matmul probe (best of 10 calls: {tflops:.3f} TFLOP/s "
        f"with these threads; not the datasheet peak)",
    }


def run_bench(
    settings: BenchSettings, out: str | Path = "results", command: str = "", log: Callable[[str], None] = print
) -> list[dict]:
    """Measure every preset of ``settings``; write OUT/throughput.csv and OUT/throughput.md; return the rows."""
    out = Path(out)
    info = hardware_info(settings)
    settings = dataclasses.replace(settings, threads=settings.resolved_threads()[0])  # fixed for the whole run
    peak = reference_peak(settings)
    log(f"{info['hardware']}, {info['threads']}; MFU reference: {peak['label']}")
    variants = (
        [dataclasses.replace(settings, compile=c) for c in (False, True)] if settings.compile_rows else [settings]
    )
    plans = [plan_preset(p, variant) for p in settings.presets for variant in variants]
    for plan in plans:
        plan["notes"] += [f"{p} not requested" for p in PHASES if p not in settings.phases_for(plan["preset"])]
    rows = measure_all(plans, settings, peak["flops"], log)
    write_csv(rows, THROUGHPUT_COLUMNS, out / "throughput.csv")
    (out / "throughput.md").write_text(
        throughput_markdown(rows, settings, info, peak, command or "lit-snapvideo bench")
    )
    for s in speedups(rows):
        log(
            f"FIT/U-Net speed-up {s['fit']}/{s['unet']}: train {fmt(s['train'])}x (paper {fmt(s['paper_train'])}x), "
            f"infer {fmt(s['eval'])}x (paper {fmt(s['paper_eval'])}x)"
        )
    return rows


def run_scaling(
    settings: BenchSettings,
    out: str | Path = "results",
    phases: tuple[str, ...] = ("eval", "train"),
    frames_list: tuple[int, ...] = SCALING_FRAMES,
    sizes: tuple[tuple[int, int], ...] = SCALING_SIZES,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """ms/video and peak memory of ``phases`` for each preset against frames (at the first size) and against
    resolution (at 16 frames); writes OUT/scaling.csv and OUT/scaling.png."""
    out = Path(out)
    info = hardware_info(settings)
    settings = dataclasses.replace(settings, threads=settings.resolved_threads()[0])  # fixed for the whole run
    shapes = [(f, sizes[0]) for f in frames_list] + [(16, s) for s in sizes if s != sizes[0] or 16 not in frames_list]
    jobs = [(preset, frames, size) for preset in settings.presets for frames, size in shapes]
    multiple = pad_multiple(settings.presets)  # one padded size per shape, the same for every preset
    plans = [
        plan_preset(
            preset,
            settings,
            frames,
            padded_size(size, multiple),
            phases,
            scaled_overrides(preset, frames, padded_size(size, multiple)),
        )
        for preset, frames, size in jobs
    ]
    measured = measure_all(plans, settings, None, log)  # no MFU in the sweep
    rows = [
        {
            "preset": r["preset"],
            "arch": r["arch"],
            "phase": phase,
            "batch": r["batch"],
            "frames": r["frames"],
            "height": size[0],
            "width": size[1],
            "padded_height": r["height"],
            "padded_width": r["width"],
            "fwd_gflops_per_video": r["fwd_gflops_per_video"],
            "ms": r.get(f"{phase}_ms"),
            "q1_ms": r.get(f"{phase}_q1_ms"),
            "q3_ms": r.get(f"{phase}_q3_ms"),
            "peak_mem_gib": r.get(f"peak_mem_{phase}_gib"),
            "memory_kind": r.get("memory_kind"),
            "notes": r["notes"],
        }
        for r, (_, _, size) in zip(measured, jobs)
        for phase in phases
    ]
    write_csv(rows, SCALING_COLUMNS, out / "scaling.csv")
    batches = ", ".join(f"{p} batch {settings.batch_for(p)}" for p in settings.presets)
    plot_scaling(
        rows,
        out / "scaling.png",
        sizes[0],
        f"{batches}, {settings.precision}; {info['hardware']}, torch {info['torch']} ({info['threads']})",
    )
    return rows
