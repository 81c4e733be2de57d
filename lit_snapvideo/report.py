"""Markdown reports that put our runs beside the paper's tables (the paper's §5; its numbers: paper.py).

``compare_runs`` reads each run's ``summary.json`` (and ``metrics.json`` when ``lit-snapvideo evaluate`` wrote
one) and writes Table 2's layout: parameters, train and inference ms/video, validation loss, quality columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from . import paper
from .results import read_json_object

QUALITY_PREFIXES = (
    "probe/prompt",
    "probe/shape",
    "probe/color",
    "probe/direction",
    "probe/fvd",
    "probe/temporal",
    "fvd",
    "fid",
    "clipsim",
    "denoise/object_recovered_sigma_1",
    "denoise/object_recovered_sigma_3",
)  # metrics.json keys that become columns (not its run settings); the object's, where it is decided (issue 27)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def human_count(n: Optional[float]) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def write_markdown(lines: list[str], out: str | Path) -> str:
    text = "\n".join(lines) + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def load_run(run_dir: str | Path) -> dict:
    """summary.json (+ metrics.json when present) of a run directory; a clear error when it has none."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: no run summary (train it first, e.g. make ablation-fit)")
    run = read_json_object(summary_path)
    config_path = run_dir / "config.yaml"  # summaries written before data_root / clip were recorded: the run's config
    if ("data_root" not in run or "clip" not in run) and config_path.is_file():
        data = (yaml.safe_load(config_path.read_text()) or {}).get("data", {})
        run.setdefault("data_root", data.get("root"))
        if data.get("frames") and data.get("pad_to"):
            run.setdefault("clip", [data["frames"], *data["pad_to"]])
    metrics_path = run_dir / "metrics.json"
    run["metrics"] = read_json_object(metrics_path) if metrics_path.is_file() else {}
    return run


def data_description(runs: list[dict]) -> str:
    """The runs' data folders and clip shapes for a report's header, e.g. "`data/shapes_simple` (8x24x40 clips, ...)"
    (summaries and configs without a data root: "the embedded moving-shapes set")."""
    roots = sorted({r["data_root"] for r in runs if r.get("data_root")})
    sets = ", ".join(f"`{root}`" for root in roots) if roots else "the embedded moving-shapes set"
    clips = sorted({"x".join(str(n) for n in r["clip"]) for r in runs if r.get("clip")})
    return f"{sets} ({', '.join(clips)} clips, frames x H x W as the backbone saw them)" if clips else sets


def compare_runs(run_dirs: list[str | Path], out: str | Path) -> str:
    """Write ``out`` (markdown) comparing the runs with the paper's Table 2; returns the text."""
    runs = [load_run(r) for r in run_dirs]
    lines = ["# Ablation: FIT vs 3D U-Net, with the DiT control (paper Table 2 in miniature)", ""]
    lines.append(
        f"Our runs (this machine; CPU-scale presets on {data_description(runs)}; "
        "ms/video measured during training, batch as configured, fp32):"
    )
    lines.append("")
    quality_keys = sorted(
        {
            k
            for r in runs
            for k, v in r["metrics"].items()
            if isinstance(v, (int, float))
            and k.startswith(QUALITY_PREFIXES)
            and not k.endswith(("num_scored", "num_seeds"))
        }
    )
    head = [
        "run",
        "preset",
        "params",
        "budget",
        "steps",
        "wall time (s)",
        "train ms/video",
        "infer ms/video/eval",
        "val loss",
    ] + quality_keys
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in runs:
        budget = f"max_time {r['max_time']}" if r.get("max_time") else f"{r.get('max_steps', r['steps'])} steps"
        row = [
            r["experiment"],
            r["preset"],
            human_count(r["parameters"]),
            budget,
            str(r["steps"]),
            fmt(r["wall_time_s"], 0),
            fmt(r.get("train_ms_per_video"), 1),
            fmt(r.get("infer_ms_per_video_per_eval"), 1),
            fmt(r.get("final_val_loss"), 4),
        ] + [fmt(r["metrics"].get(k), 4) for k in quality_keys]
        lines.append("| " + " | ".join(row) + " |")
    by_kind: dict[str, dict] = {}
    for r in runs:  # the speed-ups compare the first run of each kind (list the equal-steps pair first)
        by_kind.setdefault(r["kind"], r)
    names = {"unet": "U-Net", "dit": "DiT"}
    f = by_kind.get("fit")
    others = [(kind, by_kind[kind]) for kind in names if f and kind in by_kind]
    if others:
        lines.append("")
    for kind, u in others:
        train_note, infer_note = (
            (
                f" (paper, FIT 500M vs U-Net 284M: {paper.speedup('train_ms'):.2f}x)",
                f" (paper: {paper.speedup('infer_ms'):.2f}x)",
            )
            if kind == "unet"
            else (" (not in the paper)",) * 2
        )
        if f.get("train_ms_per_video") and u.get("train_ms_per_video"):
            lines.append(
                f"- Training speed-up FIT over {names[kind]} (ours): "
                f"{u['train_ms_per_video'] / f['train_ms_per_video']:.2f}x" + train_note
            )
        if f.get("infer_ms_per_video_per_eval") and u.get("infer_ms_per_video_per_eval"):
            lines.append(
                f"- Inference speed-up FIT over {names[kind]} (ours, per denoiser evaluation during sampling): "
                f"{u['infer_ms_per_video_per_eval'] / f['infer_ms_per_video_per_eval']:.2f}x" + infer_note
            )
    lines += [
        "",
        "Paper, Table 2 (A100, ms / video / GPU, internal data set at 64x36):",
        "",
        "| model | params | FID | FVD | CLIPSIM | train ms/video | infer ms/video |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in paper.TABLE2:
        lines.append(
            f"| {p['model']} | {human_count(p['params'])} | {p['fid']} | {p['fvd']} | {p['clipsim']} | "
            f"{p['train_ms']} | {p['infer_ms']} |"
        )
    lines += [
        "",
        "Validation loss: the Snap-EDM F-space loss on a fixed sigma grid with fixed noise, EMA weights "
        "(comparable across backbones trained with the same sigma_in and sigma_data). Quality columns come "
        "from `lit-snapvideo evaluate` (metrics.json) when it has been run; embedded-set metrics do not "
        "compare with published FVD/FID numbers.",
    ]
    return write_markdown(lines, out)


SIGMA_METRICS = ("probe/prompt_accuracy", "probe/fvd", "probe/temporal_consistency")


def sigma_report(run_dirs: list[str | Path], out: str | Path) -> str:
    """results/sigma_ablation.md: our Table 3 rows (probe metrics) beside the paper's (FID/FVD/CLIPSIM)."""
    runs = {r["experiment"]: r for r in (load_run(d) for d in run_dirs)}
    lines = [
        "# Diffusion-framework ablation (paper Table 3 at CPU scale)",
        "",
        f"Ours: fit_small on {data_description(list(runs.values()))}, equal steps, embedded-set probe metrics (prompt "
        "accuracy: higher is better; probe-FVD: lower is better; they do not compare with published FVD). "
        "Paper: FIT 500M on its internal data set.",
        "",
        "| row | sigma_data | sigma_in | steps | val loss* | prompt acc. | probe-FVD | temporal cons. | paper FID | paper FVD | paper CLIPSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, published in paper.TABLE3.items():
        r = runs.get(name)
        m = r["metrics"] if r else {}
        lines.append(
            f"| {published['row']} | {published['sigma_data']} | {published['sigma_in']} | "
            f"{r['steps'] if r else 'not run'} | {fmt(r.get('final_val_loss') if r else None, 4)} | "
            + " | ".join(fmt(m.get(k), 3) for k in SIGMA_METRICS)
            + f" | {published['fid']} | {published['fvd']} | {published['clipsim']} |"
        )
    lines += [
        "",
        "*The validation loss is each run's own training objective; it does not compare across rows with "
        "different sigma_data, sigma_in or framework. Compare rows by the probe metrics.",
    ]
    return write_markdown(lines, out)


CURVE_TAGS = (
    ("train/loss", "train loss (Snap-EDM, F-space)"),
    ("val/loss", "validation loss (fixed sigma grid, EMA)"),
    ("quality/color_accuracy", "colour accuracy (probe)"),
    ("perf/ms_per_video", "train ms / video"),
)


def plot_curves(run_dirs: list[str | Path], out: str | Path, smooth: int = 10) -> Path:
    """A PNG of the runs' TensorBoard curves side by side (train loss as a running mean of ``smooth`` logs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = plt.subplots(1, len(CURVE_TAGS), figsize=(4.2 * len(CURVE_TAGS), 3.4))
    for run_dir in run_dirs:
        run = load_run(run_dir)
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
        for ax, (tag, title) in zip(axes, CURVE_TAGS):
            if tag not in events.Tags()["scalars"]:
                continue
            scalars = events.Scalars(tag)
            steps, values = [e.step for e in scalars], [e.value for e in scalars]
            if tag == "train/loss":  # the per-step loss swings with the drawn sigmas
                values = [sum(values[max(0, i - smooth + 1) : i + 1]) / min(i + 1, smooth) for i in range(len(values))]
            ax.plot(
                steps, values, marker="o" if len(values) < 12 else None, label=f"{run['experiment']} ({run['preset']})"
            )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
    for ax in axes[:2]:
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
