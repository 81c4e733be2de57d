"""The paper's sampling figures from trained checkpoints (the paper's §5): Fig. 5 (quality against the CFG
weight) and Fig. 6 (quality against the number of sampling steps).

    rows = run_sweep(["runs/fit/version_0/checkpoints/last.ckpt"], "cfg", out_dir="results")
        -> results/sweep_cfg.csv, results/sweep_cfg.png

Every point samples the same validation prompts with the same seed (only the swept setting changes) and scores
them with the embedded set's probe (probe-FVD, prompt accuracy; metrics.probe.probe_metrics), plus FVD (TorchScript I3D)
and CLIPSIM (open_clip) when their files are given. The CSV is rewritten after each point, so a stopped sweep
keeps what it finished.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .data.datamodule import EDMDataModule
from .data.datasets import load_records
from .data.shapes import is_shapes_caption
from .data.video import crop_padding
from .generation import evaluation_videos, validation_prompts
from .metrics.probe import data_fingerprint, probe_for, probe_metrics
from .module_loading import load_module

CFG_WEIGHTS = (0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)  # Fig. 5
STEP_COUNTS = (16, 32, 64, 128, 256, 512, 1024)  # Fig. 6
CPU_MAX_STEPS = 256  # Fig. 6 on a CPU stops here: 512 and 1024 Heun steps take hours per point
SWEEPS = {
    "cfg": {
        "values": CFG_WEIGHTS,
        "xlabel": "classifier-free guidance weight w",
        "paper": "paper Fig. 5 (40 steps): guidance improves FVD and CLIPSIM, high w over-saturates colours; "
        "ours: D_u + w (D_c - D_u), w = 1 is no guidance (the paper's convention is unknown)",
    },
    "steps": {
        "values": STEP_COUNTS,
        "xlabel": "sampling steps (Heun)",
        "paper": "paper Fig. 6: good at 64 steps, FVD improves up to 256",
    },
}
COLUMNS = [
    "run",
    "preset",
    "sweep",
    "cfg_scale",
    "steps",
    "num_videos",
    "seed",
    "seconds",
    "prompt_accuracy",
    "shape_accuracy",
    "color_accuracy",
    "direction_accuracy",
    "probe_fvd",
    "temporal_consistency",
    "fvd",
    "clipsim",
]


def sweep_values(
    kind: str, values: Optional[Sequence[float]], device: str, cap: bool = True, log: Callable[[str], None] = print
) -> list[float]:
    """The points of a sweep: ``values`` or the paper's; steps above :data:`CPU_MAX_STEPS` dropped on a CPU."""
    points = list(values if values else SWEEPS[kind]["values"])
    if kind == "steps" and device == "cpu" and cap:
        dropped = [v for v in points if v > CPU_MAX_STEPS]
        if dropped:
            log(
                f"sweep steps: capped at {CPU_MAX_STEPS} steps on the CPU; not run: {', '.join(map(str, dropped))} "
                f"(--no-cap runs them)"
            )
        points = [v for v in points if v <= CPU_MAX_STEPS]
    return points


class Scorer:
    """The metrics of one run's samples: probe (moving-shapes data only), FVD and CLIPSIM when files are given."""

    def __init__(
        self,
        module: Any,
        num_videos: int,
        fvd_detector: Optional[str] = None,
        clip_model: Optional[str] = None,
        clip_checkpoint: Optional[str] = None,
        probe_cache: str = ".cache/probe",
        fvd_cache: str = ".cache/fvd",
        probe_kwargs: Optional[dict] = None,
    ):
        cfg = module.cfg
        train, val = load_records(cfg.data.root, cfg.data.manifest)
        shapes = all(is_shapes_caption(r.caption) for r in train + val)
        if not shapes and not fvd_detector and not clip_model:
            raise ValueError(
                f"{cfg.data.root} is not the moving-shapes set, so the probe cannot score it; give "
                "--fvd-detector or --clip-model/--clip-checkpoint"
            )
        self.probe = probe_for(cfg, probe_cache, **(probe_kwargs or {})) if shapes else None
        self.fvd = self.real = self.clip = None
        if fvd_detector:
            from .metrics.fvd import FVD, real_stats_key

            dm = EDMDataModule(cfg)
            dm.setup("validate")
            real = torch.cat([crop_padding(b["video"], tuple(cfg.data.size)) for b in dm.val_dataloader()])
            self.fvd = FVD(
                fvd_detector, cache_dir=fvd_cache, num_videos=min(num_videos, len(real)), frames=cfg.data.frames
            )
            key = real_stats_key(
                data_fingerprint(cfg.data.root, cfg.data.manifest),
                "val",
                len(real),
                cfg.data.frames,
                cfg.data.size,
                cfg.data.val_fps,
            )
            self.real = self.fvd.real_stats(real, key=key)
        if clip_model and clip_checkpoint:
            from .metrics.clipsim import CLIPSim

            self.clip = CLIPSim(clip_model, clip_checkpoint)

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> dict:
        """``videos`` (N, 3, T, H, W) in [-1, 1], padding cropped -> the CSV's metric columns."""
        out: dict[str, Any] = {}
        if self.probe is not None:
            m = probe_metrics(self.probe, videos, prompts)
            out.update(
                {
                    k: m[f"probe/{k}"]
                    for k in (
                        "prompt_accuracy",
                        "shape_accuracy",
                        "color_accuracy",
                        "direction_accuracy",
                        "temporal_consistency",
                    )
                }
            )
            out["probe_fvd"] = m["probe/fvd"]
        if self.fvd is not None:
            scores = self.fvd.score([videos], self.real)
            out["fvd"] = next(v for k, v in scores.items() if k.startswith("fvd") and k.count("_") == 1)
        if self.clip is not None:
            from .metrics.clipsim import clipsim

            out["clipsim"] = clipsim(self.clip, [(videos, list(prompts))])
        return out


def run_sweep(
    checkpoints: Sequence[str],
    kind: str,
    values: Optional[Sequence[float]] = None,
    num_videos: int = 16,
    steps: int = 40,
    cfg_scale: float = 2.0,
    seed: int = 0,
    batch_size: int = 8,
    fvd_detector: Optional[str] = None,
    clip_model: Optional[str] = None,
    clip_checkpoint: Optional[str] = None,
    out_dir: str | Path = "results",
    device: Optional[str] = None,
    cap: bool = True,
    probe_cache: str = ".cache/probe",
    probe_kwargs: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Sweep ``kind`` ("cfg": the guidance weight at ``steps`` Heun steps; "steps": the step count at ``cfg_scale``)
    for each checkpoint; writes OUT_DIR/sweep_<kind>.{csv,png} and returns the rows."""

    if kind not in SWEEPS:
        raise ValueError(f"unknown sweep {kind!r}; valid: {', '.join(SWEEPS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    points = sweep_values(kind, values, device, cap, log)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for checkpoint in checkpoints:
        module = load_module(str(checkpoint)).to(device)
        run = module.cfg.logging.experiment or Path(checkpoint).stem
        prompts = validation_prompts(module.cfg.data.root, module.cfg.data.manifest, num_videos)
        score = Scorer(
            module, num_videos, fvd_detector, clip_model, clip_checkpoint, probe_cache, probe_kwargs=probe_kwargs
        )
        for value in points:
            w, n = (float(value), steps) if kind == "cfg" else (cfg_scale, int(value))
            started = time.perf_counter()
            videos = evaluation_videos(module, prompts, n, w, seed, batch_size)  # same prompts and seed at every point
            row = {
                "run": run,
                "preset": module.cfg.model.preset,
                "sweep": kind,
                "cfg_scale": w,
                "steps": n,
                "num_videos": len(prompts),
                "seed": seed,
                **score(videos, prompts),
            }
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            log(
                f"sweep {kind} {run}: cfg {w:g}, {n} steps: "
                + ", ".join(f"{k} {row[k]:.3f}" for k in ("prompt_accuracy", "probe_fvd", "fvd", "clipsim") if k in row)
                + f" ({row['seconds']:.0f} s)"
            )
            write_rows(rows, out_dir / f"sweep_{kind}.csv")
    plot_sweep(rows, kind, out_dir / f"sweep_{kind}.png")
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value: Any) -> Any:
    """A CSV cell: floats to 6 digits; NaN and inf as an empty cell (a missing value, not a number)."""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value


def plot_sweep(rows: list[dict], kind: str, path: Path) -> None:
    """Two panels against the swept setting: distances (probe-FVD, FVD: lower is better) and agreement with the
    prompt (prompt accuracy, CLIPSIM: higher is better); one line per run; the paper's trend in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "cfg_scale" if kind == "cfg" else "steps"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        (axes[0], ("probe_fvd", "fvd"), "distance to real clips (lower is better)"),
        (axes[1], ("prompt_accuracy", "clipsim"), "agreement with the prompt (higher is better)"),
    )
    for color, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        mine = sorted((r for r in rows if r["run"] == run), key=lambda r: r[x_key])
        for ax, keys, title in panels:
            for key, style in zip(keys, ("-o", "--s")):
                points = [(r[x_key], r[key]) for r in mine if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), style, color=f"C{color}", label=f"{run} ({mine[0]['preset']}) {key}")
            ax.set_title(title, fontsize=9)
    for ax, _, _ in panels:
        ax.set_xlabel(SWEEPS[kind]["xlabel"])
        if kind == "steps":
            ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    first = rows[0] if rows else {}
    fixed = f"{first.get('steps')} Heun steps" if kind == "cfg" else f"CFG weight {first.get('cfg_scale')}"
    fig.suptitle(
        f"{kind} sweep: {first.get('num_videos')} videos per point, {fixed}, embedded-set probe metrics "
        f"(not comparable with published FVD)\n{SWEEPS[kind]['paper']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
