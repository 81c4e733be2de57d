"""Where a real `fit` training step's time goes, against the bench's compute-only step (issue 28, item 1).

    .venv/bin/python experiments/profile/fit_step_parts.py [--steps 80] [--threads 2] [--presets fit,unet]
        -> results/profile/fit_step_parts.md

For each ablation recipe (experiments/ablation/<name>.yaml, its own clip and batch):
- two real ``fit`` runs in this process under Lightning's SimpleProfiler: the recipe's one data worker and no worker
  (decoding inline, so its cost shows in the step). One validation, one sample round and one quality round run at the
  last step; their times are listed apart, with their share of the recipe's 1,000-step interval.
- the per-step parts: waiting for the loader, ``training_step`` (forward, self-conditioning pass, loss, logging),
  backward, gradient clipping, the optimiser step with the EMA update (the EMA timed alone too), and the rest of the
  loop (callbacks, progress bar, logging). Medians over the steps after the first ``--warmup``.
- the bench's compute-only step (experiments/profile/train_step.py's ``make_step``: loss, backward, clip, AdamW; no
  loader, EMA, logging or callbacks) with and without the self-conditioning pass.
- one clip's decode (``ClipDataset.__getitem__``), the work the loader's worker does 8 times a step.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.profilers import SimpleProfiler

sys.path.insert(0, str(Path(__file__).parent))
from compile_step import matmul_gflops  # noqa: E402
from train_step import make_step, ms_per_video  # noqa: E402

from lit_snapvideo.config import load_config  # noqa: E402
from lit_snapvideo.data.datamodule import EDMDataModule  # noqa: E402
from lit_snapvideo.data.video import read_video  # noqa: E402
from lit_snapvideo.module import EDMVideoModule  # noqa: E402
from lit_snapvideo.train import fit  # noqa: E402

LOADER = "[_TrainingEpochLoop].train_dataloader_next"
VARIANTS = ((1, 0), (0, 0), (0, 1024))  # (data.num_workers, data.decoded_cache_mb)


class StepClock(SimpleProfiler):
    """SimpleProfiler that also stamps the start of every loader call: the differences are whole steps."""

    def __init__(self, report_dir: str) -> None:
        super().__init__(dirpath=report_dir, filename="profile")
        self.step_starts: list[float] = []

    def start(self, action_name: str) -> None:
        if action_name == LOADER:
            self.step_starts.append(time.perf_counter())
        super().start(action_name)


def timed_ema(log: list[float]):
    """Wrap EDMVideoModule.update_ema so each call's seconds go to ``log``."""
    original = EDMVideoModule.update_ema

    @functools.wraps(original)
    def update_ema(self) -> None:
        start = time.perf_counter()
        original(self)
        log.append(time.perf_counter() - start)

    return original, update_ema


def real_fit(recipe: str, steps: int, threads: int, workers: int, root: str, cache_mb: float = 0) -> dict:
    """One real ``fit`` of ``recipe`` for ``steps`` steps under the profiler: seconds per part per step."""
    cfg = load_config(
        f"experiments/ablation/{recipe}.yaml",
        [
            f"logging.root={root}",
            f"logging.experiment={recipe}_w{workers}_c{cache_mb:g}",
            f"trainer.max_steps={steps}",
            f"trainer.cpu_threads={threads}",
            f"trainer.val_every_n_steps={steps}",
            f"logging.sample_every_n_steps={steps}",
            f"logging.quality_every_n_steps={steps}",
            f"data.num_workers={workers}",
            f"data.decoded_cache_mb={cache_mb}",
        ],
    )
    ema_log: list[float] = []
    original, wrapped = timed_ema(ema_log)
    EDMVideoModule.update_ema = wrapped
    clock = StepClock(report_dir=root)
    try:
        fit(cfg, resume=False, enable_progress_bar=True, profiler=clock)
    finally:
        EDMVideoModule.update_ema = original
    return {
        "durations": dict(clock.recorded_durations),
        "step_starts": clock.step_starts,
        "ema": ema_log,
        "batch": cfg.data.batch_size,
        "cfg": cfg,
    }


def median_ms(values: list[float], skip: int, batch: int) -> float:
    kept = values[skip:] or values
    return 1000 * statistics.median(kept) / batch


def parts_row(run: dict, warmup: int) -> dict[str, float]:
    """ms per video of each part, medians over the steps after ``warmup`` (the last step, with validation, dropped)."""
    d, b = run["durations"], run["batch"]

    def part(suffix: str) -> list[float]:
        matches = [v for k, v in d.items() if k.endswith(suffix)]
        return matches[0] if matches else []

    walls = [t1 - t0 for t0, t1 in zip(run["step_starts"], run["step_starts"][1:])]
    row = {
        "step (wall)": median_ms(walls, warmup, b),
        "loader wait": median_ms(part(LOADER), warmup, b),
        "training_step (fwd, self-cond, loss, log)": median_ms(part("Strategy.training_step"), warmup, b),
        "backward": median_ms(part("Strategy.backward"), warmup, b),
        "grad clipping": median_ms(part("configure_gradient_clipping"), warmup, b),
    }
    optimizer = median_ms(part("Module.optimizer_step"), warmup, b)  # the closure: training_step + backward inside
    row["optimizer + EMA"] = optimizer - row["training_step (fwd, self-cond, loss, log)"] - row["backward"]
    row["of which EMA"] = median_ms(run["ema"], warmup, b)
    row["callbacks, logging, rest"] = row["step (wall)"] - optimizer - row["loader wait"]
    return row


PERIODIC = {  # the once-a-round work of the recipe: action-name suffixes of its profiler entries
    "validation (loss on the sigma grid, object scores)": ("Strategy.validation_step", "val_next"),
    "sample videos (SampleVideos)": ("SampleVideos.on_train_batch_end",),
    "probe quality (SampleQuality)": ("SampleQuality.on_train_batch_end",),
    "checkpoint save": ("save_checkpoint",),
}


def periodic_rows(run: dict) -> list[tuple[str, float, float]]:
    """(work, seconds, share of a 1,000-step interval) for validation, samples, quality and the checkpoint."""
    walls = [t1 - t0 for t0, t1 in zip(run["step_starts"], run["step_starts"][1:])]
    interval_s = 1000 * statistics.median(walls)
    rows = []
    for name, suffixes in PERIODIC.items():
        total = sum(sum(v) for k, v in run["durations"].items() if k.endswith(suffixes))
        rows.append((name, total, total / (total + interval_s)))
    return rows


def decode_ms(recipe: str) -> dict[str, float]:
    """ms per training clip (median of 35 videos): decoding the drawn frames (the default), decoding the whole video
    once (a miss of data.decoded_cache_mb) and taking the drawn frames from the decoded video (a hit)."""
    cfg = load_config(f"experiments/ablation/{recipe}.yaml", ["data.decoded_cache_mb=1024"])
    dm = EDMDataModule(cfg)
    dm.setup("fit")
    data = dm.train_set
    videos = [i for i, image in enumerate(data.is_image) if not image][:40]
    times: dict[str, list[float]] = {"decode the drawn frames": [], "cache miss": [], "cache hit": []}
    for i in videos:
        r = data.records[i]
        start = time.perf_counter()
        read_video(r.path, data.frames, data.size, data.fps_choices, r.fps, torch.Generator().manual_seed(i))
        middle = time.perf_counter()
        decoded = data._decoded_video(i)
        end = time.perf_counter()
        decoded.clip(data.frames, data.fps_choices, torch.Generator().manual_seed(i))
        times["decode the drawn frames"].append(middle - start)
        times["cache miss"].append(end - middle)
        times["cache hit"].append(time.perf_counter() - end)
    return {name: 1000 * statistics.median(values[5:]) for name, values in times.items()}


def compute_only(recipe: str, batch: int, frames: int, size: tuple[int, int]) -> dict[str, float]:
    cfg = load_config(f"experiments/ablation/{recipe}.yaml")
    overrides = dict(cfg.model.overrides)
    with_sc = make_step(cfg.model.preset, batch, frames, size, overrides=overrides)
    without_sc = make_step(cfg.model.preset, batch, frames, size, overrides=overrides, self_cond_prob=0.0)
    a = min(ms_per_video(with_sc, batch) for _ in range(3))
    b = min(ms_per_video(without_sc, batch) for _ in range(3))
    return {"compute-only step": a, "compute-only, no self-cond pass": b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", default="fit,unet", help="ablation recipes (experiments/ablation/<name>.yaml)")
    parser.add_argument("--out", default="results/profile/fit_step_parts.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rate = matmul_gflops()
    lines = [
        "# Where a real `fit` step's time goes (issue 28, item 1)",
        "",
        f"Command: `.venv/bin/python experiments/profile/fit_step_parts.py --steps {args.steps} --threads "
        f"{args.threads} --presets {args.presets}`; torch {torch.__version__}, measured fp32 matmul rate {rate:.0f} "
        "GFLOP/s at these threads. ms per video (step time / batch), medians over steps "
        f"{args.warmup + 1}-{args.steps - 1}.",
        "",
    ]
    periodic: list[str] = []
    with tempfile.TemporaryDirectory() as root:
        for recipe in args.presets.split(","):
            runs = {
                f"{w} data worker(s){', decoded cache' if mb else ''}": real_fit(
                    recipe, args.steps, args.threads, w, root, mb
                )
                for w, mb in VARIANTS
            }
            cfg = next(iter(runs.values()))["cfg"]
            batch, frames, size = cfg.data.batch_size, cfg.data.frames, tuple(cfg.data.size)
            rows = {name: parts_row(run, args.warmup) for name, run in runs.items()}
            bench = compute_only(recipe, batch, frames, size)
            clip_ms = decode_ms(recipe)
            names = list(next(iter(rows.values())))
            lines += [
                f"## `{recipe}` ({cfg.model.preset}, batch {batch}, {frames}x{size[0]}x{size[1]})",
                "",
                "| part, ms/video | " + " | ".join(rows) + " |",
                "|---|" + "---|" * len(rows),
            ]
            lines += [f"| {n} | " + " | ".join(f"{r[n]:.1f}" for r in rows.values()) + " |" for n in names]
            lines += [
                "",
                f"Bench compute-only step (same preset, clip, batch; AdamW; no loader, EMA, logging): "
                f"{bench['compute-only step']:.1f} ms/video; without the self-conditioning pass "
                f"{bench['compute-only, no self-cond pass']:.1f}. One training clip (ms, = ms per video): "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in clip_ms.items())
                + ". The decoded cache fills as training draws each video once: a run of "
                f"{args.steps} steps is mostly misses, so its loader wait is the cache's cost in the first pass; "
                "once full, a draw costs a hit.",
                "",
            ]
            periodic += [
                f"- `{recipe}` {a}: {s:.1f} s ({share:.1%} of a 1,000-step interval)"
                for a, s, share in periodic_rows(next(iter(runs.values())))
            ]
    lines += ["## Once-a-round work at the last step (validation, samples, quality), recipe with 1 worker", ""]
    lines += periodic + [""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
