"""The benchmark's files: the throughput table in the layout of the paper's Table 2 with its A100 numbers beside
ours (markdown), the FIT over U-Net speed-ups, the CSV files, and the scaling plot.

    throughput_markdown(rows, settings, info, peak, command) -> the text of OUT/throughput.md
    write_csv(rows, THROUGHPUT_COLUMNS, OUT / "throughput.csv")
    plot_scaling(rows, OUT / "scaling.png", base_size=(36, 64)) -> 2 x 2 log-log panels
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .. import paper
from ..report import fmt, human_count
from .memory import MEMORY_KINDS
from .settings import PHASES, BenchSettings, text_shape

PAPER_MODEL_NAMES = {row["preset"]: row["model"] for row in paper.TABLE2}
PAPER_ROWS = {row["preset"]: row for row in paper.TABLE2}

# (FIT, U-Net, the paper pair whose ratio is printed beside): the small CPU pair stands in for 500M vs 284M
RATIO_PAIRS = [
    ("fit_500m", "unet_284m", "fit_500m", "unet_284m"),
    ("fit_small", "unet_small", "fit_500m", "unet_284m"),
    ("fit_mini", "unet_mini", "fit_500m", "unet_284m"),  # the CPU ablation pair (make bench-compile)
    ("fit_3_9b", "unet_284m", "fit_3_9b", "unet_284m"),
]

THROUGHPUT_COLUMNS = [
    "preset",
    "arch",
    "params",
    "batch",
    "frames",
    "height",
    "width",
    "text_tokens",
    "precision",
    "compile",
    "fwd_gflops_per_video",
    "train_ms",
    "train_q1_ms",
    "train_q3_ms",
    "eval_ms",
    "eval_q1_ms",
    "eval_q3_ms",
    "sample_steps",
    "sample_evals",
    "sample_ms",
    "sample_q1_ms",
    "sample_q3_ms",
    "train_tflops",
    "train_mfu",
    "eval_tflops",
    "eval_mfu",
    "sample_tflops",
    "sample_mfu",
    "peak_mem_eval_gib",
    "peak_mem_sample_gib",
    "peak_mem_train_gib",
    "memory_kind",
    "est_mem_eval_gib",
    "est_mem_sample_gib",
    "est_mem_train_gib",
    "paper_train_ms",
    "paper_infer_ms",
    "notes",
]

SCALING_COLUMNS = [
    "preset",
    "arch",
    "phase",
    "batch",
    "frames",
    "height",
    "width",
    "padded_height",
    "padded_width",
    "fwd_gflops_per_video",
    "ms",
    "q1_ms",
    "q3_ms",
    "peak_mem_gib",
    "memory_kind",
    "notes",
]


def speedups(rows: list[dict]) -> list[dict]:
    """FIT over U-Net speed-ups (U-Net ms / FIT ms) for each pair measured in this run, with the paper's."""
    out = []
    for compiled, fit, unet, paper_fit, paper_unet in (
        (c, *pair) for c in (False, True) for pair in RATIO_PAIRS
    ):  # eager with eager, compiled with compiled
        by_preset = {r["preset"]: r for r in rows if bool(r.get("compile")) == compiled}
        if fit not in by_preset or unet not in by_preset:
            continue
        entry = {"fit": fit, "unet": unet, "paper_pair": f"{paper_fit} / {paper_unet}", "compiled": compiled}
        for ours, phase, paper_key in (
            ("train", "train", "train_ms"),
            ("eval", "eval", "infer_ms"),
            ("sample", "sample", None),
        ):
            a, b = by_preset[fit].get(f"{phase}_ms"), by_preset[unet].get(f"{phase}_ms")
            entry[ours] = b / a if a and b else None
            entry[f"paper_{ours}"] = (
                PAPER_ROWS[paper_unet][paper_key] / PAPER_ROWS[paper_fit][paper_key] if paper_key else None
            )
        out.append(entry)
    return out


def compile_mode(settings: BenchSettings) -> str:
    if settings.compile_rows:
        return "each preset eager and compiled (inductor, dynamic=False; the compile time in the notes)"
    return "on" if settings.compile else "off"


def ms_cell(row: dict, phase: str) -> str:
    """A phase's "median [q1-q3]" in ms per video, or "-" when it was not measured."""
    if row.get(f"{phase}_ms") is None:
        return "-"
    return f"{row[f'{phase}_ms']:.1f} [{row[f'{phase}_q1_ms']:.1f}-{row[f'{phase}_q3_ms']:.1f}]"


def throughput_markdown(rows: list[dict], settings: BenchSettings, info: dict, peak: dict, command: str) -> str:
    """Table 2's layout with the paper's A100 columns beside ours, the header saying how it was measured."""
    batches = ", ".join(f"{r['preset']} {r['batch']}" for r in rows)
    lines = [
        "# Throughput: paper Table 2's speed columns on this machine",
        "",
        f"- Hardware: {info['hardware']}; torch {info['torch']} ({info['threads']}), Python {info['python']}",
    ]
    if "load_average" in info:
        start_load, end_load = info["load_average"], os.getloadavg()
        busy = max(start_load[0], end_load[0]) >= (os.cpu_count() or 1)
        lines.append(
            f"- Load average (1/5/15 min) at the start: {' / '.join(f'{x:.1f}' for x in start_load)}, at the end: "
            f"{' / '.join(f'{x:.1f}' for x in end_load)}"
            + (
                " (at or above the CPU count: other work shared the CPU while measuring, the timings are noisy)"
                if busy
                else " (below the CPU count)"
            )
        )
    padded = " (the paper's 36x64 padded to 40x64)" if tuple(settings.size) == (40, 64) else ""
    lines += [
        f"- Precision: {settings.precision}; torch.compile: {compile_mode(settings)}; "
        f"clip {settings.frames} x {settings.size[0]} x {settings.size[1]}{padded}; "
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
        f"- Command: `{command}`",
        "",
        "| Model | Params | Fwd GFLOPs/video | Train ms/video | Paper train (A100) | Infer ms/video/eval | "
        f"Paper infer (A100) | Sample ms/video ({settings.sample_steps} Heun steps, CFG) | Train TFLOP/s (MFU) | "
        "Eval TFLOP/s (MFU) | Peak mem GiB "
        "(eval/sample/train) | Notes |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        name = (
            f"{PAPER_MODEL_NAMES[r['preset']]} (`{r['preset']}`)"
            if r["preset"] in PAPER_MODEL_NAMES
            else f"`{r['preset']}`"
        )
        if (r["frames"], r["height"], r["width"]) != (settings.frames, *settings.size):  # an upsampler: its own clip
            name += f" at {r['frames']}x{r['height']}x{r['width']}"
        if settings.compile_rows and r["compile"]:
            name += " compiled"
        mfu = lambda p: (
            f"{r[f'{p}_tflops']:.3f} ({100 * r[f'{p}_mfu']:.1f}%)" if r.get(f"{p}_tflops") is not None else "-"
        )
        mem = "/".join(fmt(r.get(f"peak_mem_{p}_gib")) for p in PHASES)
        lines.append(
            f"| {name} | {human_count(r['params'])} | {r['fwd_gflops_per_video']:.1f} | "
            f"{ms_cell(r, 'train')} | {fmt(r.get('paper_train_ms'), 1)} | {ms_cell(r, 'eval')} | "
            f"{fmt(r.get('paper_infer_ms'), 1)} | {ms_cell(r, 'sample')} | {mfu('train')} | {mfu('eval')} | "
            f"{mem} | {r['notes'] or ''} |"
        )
    ratios = speedups(rows)
    if ratios:
        lines += [
            "",
            "## FIT over U-Net speed-up (U-Net ms / FIT ms; > 1: FIT faster), measured in this run",
            "",
            "| FIT / U-Net | train | paper train | infer (eval) | paper infer | sample run | paper pair |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in ratios:
            x = lambda v: f"{v:.2f}x" if v is not None else "-"
            lines.append(
                f"| {s['fit']} / {s['unet']}{' (compiled)' if s['compiled'] else ''} | {x(s['train'])} | {x(s['paper_train'])} | {x(s['eval'])} | "
                f"{x(s['paper_eval'])} | {x(s['sample'])} | {s['paper_pair']} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


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
            by_frames = sorted(
                (r for r in mine if (r["height"], r["width"]) == tuple(base_size)), key=lambda r: r["frames"]
            )
            by_size = sorted((r for r in mine if r["frames"] == 16), key=lambda r: r["height"] * r["width"])
            label = f"{preset} {phase}"
            for col, series, x_of in (
                (0, by_frames, lambda r: r["frames"]),
                (1, by_size, lambda r: r["padded_height"] * r["padded_width"]),
            ):
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
    sizes = sorted(
        {(r["padded_height"] * r["padded_width"], f"{r['height']}x{r['width']}") for r in rows if r["frames"] == 16}
    )
    for ax in axes[:, 1]:  # label the resolution axis with the nominal sizes
        ax.set_xticks([x for x, _ in sizes], [label for _, label in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
