"""``lit-snapvideo gpu-check``: every GPU measurement of issue 20 in one call, under one time budget.

    run_check(CheckSettings(out="results/gpu", budget_s=540))      # on a GPU machine
    run_check(CheckSettings(out="/tmp/check", dry_run=True))        # the same stages, tiny, on the CPU

Stages, run in the order of ``stages`` (each one writes its files as soon as it has finished):
- ``throughput``: unet_284m and fit_500m at 16x40x64, bf16, batch 8 and 64, eval / sample / train, eager.
- ``presets``: unet_85m and fit_3_9b at batch 64 (with the pair's batch-64 rows: the four paper presets); the
  memory guard (bench.memory_guard) notes each phase it skipped and why.
- ``upsampler``: the cascade's second stage, fit_3_9b_upsampler at its own 16x288x512 clip (147,456 patches),
  batch 1, eval and a 2-step sample (issue 21); its row joins the throughput table.
- ``ablation``: experiments/ablation/{fit,unet}.yaml trained for ``ablation_seconds`` of wall clock each
  (trainer.max_time), then a sample grid, ``lit-snapvideo evaluate``'s probe metrics and ablation.md (compare_runs).
- ``compile``: the pair again with ``torch.compile``; the warm-up seconds (compilation included) are a column of
  their own, apart from the timed steps.

The budget is checked before each unit of work: a stage that cannot start in the time left is recorded as
skipped; a benchmark phase that cannot finish is skipped by bench's own time guard, and a measuring process
still running at the deadline is stopped (bench.run_job). Files: see :data:`PROMISED`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import paper
from .bench import (
    PHASES,
    THROUGHPUT_COLUMNS,
    BenchSettings,
    hardware_info,
    measure_all,
    plan_preset,
    reference_peak,
    speedups,
    write_csv,
)
from .report import fmt

STAGES = ("throughput", "presets", "upsampler", "ablation", "compile")
PAIR = ("unet_284m", "fit_500m")
EXTRA_PRESETS = ("unet_85m", "fit_3_9b")
CHECK_COLUMNS = THROUGHPUT_COLUMNS + [f"{p}_warmup_s" for p in PHASES]
# files a run writes (the gifs when the ablation stage ran; the test checks them all after a dry run);
# ablation_runs/ holds the two run directories
PROMISED = (
    "gpu_check.md",
    "gpu_check.json",
    "gpu_check.log",
    "throughput_b8_b64.csv",
    "throughput_b8_b64.md",
    "ablation.md",
    "ablation_fit_samples.gif",
    "ablation_unet_samples.gif",
)
NOT_MEASURED = (
    "Not measured yet: nothing here ran on a GPU. `make gpu-check` on a GPU machine replaces this file "
    f"with the batch-8 and batch-64 numbers and the FIT/U-Net ratios beside the paper's "
    f"{paper.speedup('train_ms'):.2f}x / {paper.speedup('infer_ms'):.2f}x."
)


@dataclass
class CheckSettings:
    """What one gpu-check call measures. ``dry_run``: tiny presets, clips and data on the CPU (:meth:`resolved`)."""

    out: str | Path = "results/gpu"
    budget_s: float = 540.0
    dry_run: bool = False
    stages: tuple[str, ...] = STAGES
    pair: tuple[str, ...] = PAIR
    extra_presets: tuple[str, ...] = EXTRA_PRESETS
    upsampler_preset: str = "fit_3_9b_upsampler"  # measured at its own clip (bench.settings.clip_for), batch 1
    batches: tuple[int, ...] = (8, 64)
    # Heun steps per batch: a b64 run is 8x longer; batch 1 is the upsampler stage's (3 evaluations at 147,456 patches)
    sample_steps: dict[int, int] = field(default_factory=lambda: {8: 8, 64: 2, 1: 2})
    frames: int = 16
    size: tuple[int, int] = (40, 64)
    precision: str = "bf16"
    memory_fraction: float = 0.92
    available_gib: Optional[float] = None  # memory-guard override (the dry run uses it to show skips)
    isolate: bool = True
    ablation_seconds: float = 90.0
    ablation_overrides: tuple[str, ...] = ()
    eval_videos: int = 32
    eval_steps: int = 32
    data_root: Optional[str] = None  # default: the recipe's data.root (made if missing)
    work_dir: Optional[str] = None  # dry run: data and probe cache (default: a temp dir)
    device: str = "auto"

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; valid: {', '.join(STAGES)}")
        if self.budget_s <= 0 or self.ablation_seconds <= 0:
            raise ValueError(
                f"the budget and ablation seconds must be > 0 (got {self.budget_s}, {self.ablation_seconds})"
            )

    def resolved(self) -> "CheckSettings":
        """The dry run's tiny sizes: fit_tiny / unet_tiny, 8x16x16 clips, batches 2 and 4, fp32, in-process."""
        if not self.dry_run:
            return self
        return dataclasses.replace(
            self,
            pair=("unet_tiny", "fit_tiny"),
            extra_presets=("unet_tiny", "fit_tiny"),
            upsampler_preset="fit_up_tiny",
            batches=(2, 4),
            sample_steps={2: 2, 4: 1, 1: 2},
            frames=8,
            size=(16, 16),
            precision="fp32",
            isolate=False,
            device="cpu",
            available_gib=1e-4,
            ablation_seconds=min(self.ablation_seconds, 30.0),
            eval_videos=2,
            eval_steps=2,
        )


def max_time(seconds: float) -> str:
    """trainer.max_time ("DD:HH:MM:SS") of ``seconds``."""
    s = max(1, int(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Check:
    """One gpu-check call: its budget, log, stage records and the throughput rows measured so far."""

    def __init__(self, settings: CheckSettings, log: Callable[[str], None] = print) -> None:
        self.s = settings.resolved()
        self.out = Path(self.s.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.time() + self.s.budget_s
        self.started = time.time()
        self.stages: list[dict] = []
        self.rows: list[dict] = []
        self.peak: Optional[dict] = None
        self.info: dict = {}
        self._print = log
        (self.out / "gpu_check.log").write_text("")

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, line: str) -> None:
        line = f"[{time.time() - self.started:5.0f} s] {line}"
        self._print(line)
        with open(self.out / "gpu_check.log", "a") as f:
            f.write(line + "\n")

    # ---- throughput ------------------------------------------------------------------------------------

    def bench_settings(
        self,
        presets: list[str],
        batch: int,
        compile: bool,
        reserve_s: float,
        available_gib: Optional[float] = None,
        phases: tuple[str, ...] = PHASES,
    ) -> BenchSettings:
        s = self.s
        return BenchSettings(
            presets=presets,
            batch_size=batch,
            frames=s.frames,
            size=s.size,
            precision=s.precision,
            compile=compile,
            phases=phases,
            sample_steps=s.sample_steps[batch],
            device=s.device,
            threads=1 if s.dry_run else None,
            memory_fraction=s.memory_fraction,
            available_gib=available_gib,
            isolate=s.isolate,
            time_budget_s=max(1.0, self.left() - reserve_s),
        )

    def measure(
        self,
        presets: list[str],
        batch: int,
        compile: bool,
        reserve_s: float,
        available_gib: Optional[float] = None,
        phases: tuple[str, ...] = PHASES,
    ) -> list[dict]:
        """Plan (memory guard) and measure ``presets`` at ``batch``, leaving ``reserve_s`` of the budget."""
        settings = self.bench_settings(presets, batch, compile, reserve_s, available_gib, phases)
        if self.peak is None:
            self.info, self.peak = hardware_info(settings), reference_peak(settings)
            self.log(f"{self.info['hardware']}, torch {self.info['torch']}; MFU reference: {self.peak['label']}")
            if settings.resolved_device() == "cuda":
                import torch

                torch.cuda.empty_cache()  # the probe's matrices would count against the memory guard's free memory
        plans = [plan_preset(p, settings) for p in presets]
        disabled = compile and self.s.dry_run  # inductor's C++ build takes minutes on a CPU: the dry run runs eagerly
        if disabled:
            import torch._dynamo

            torch._dynamo.config.disable, before = True, torch._dynamo.config.disable
        try:
            rows = measure_all(plans, settings, self.peak["flops"], self.log)
        finally:
            if disabled:
                torch._dynamo.config.disable = before
        for row in rows:
            row["notes"] = "; ".join(filter(None, [row["notes"], "dry run: dynamo disabled" if disabled else ""]))
        self.rows += rows
        self.write_throughput()
        return rows

    def write_throughput(self) -> None:
        write_csv(self.rows, CHECK_COLUMNS, self.out / "throughput_b8_b64.csv")
        (self.out / "throughput_b8_b64.md").write_text(throughput_markdown(self.rows, self.s, self.peak, self.info))

    # ---- ablation --------------------------------------------------------------------------------------

    def ablation(self, reserve_s: float) -> str:
        """Train both CPU ablation recipes for a fixed wall clock each, sample, evaluate, compare."""
        import torch

        from .config import load_config
        from .data.shapes import generate_shapes
        from .evaluate import evaluate_checkpoint
        from .generation import evaluation_videos, validation_prompts, write_grid
        from .metrics.probe import probe_for
        from .module import load_module
        from .report import compare_runs
        from .train import fit

        s = self.s
        device = "cuda" if s.device != "cpu" and torch.cuda.is_available() else "cpu"
        work = Path(s.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
        workers = 0 if s.dry_run else max(1, min(8, (os.cpu_count() or 2) - 2))
        runs_root = self.out / "ablation_runs"
        overrides = [f"logging.root={runs_root}", f"data.num_workers={workers}"]
        probe_kwargs: dict[str, Any] = {"num_workers": max(workers, 1)}
        if s.dry_run:  # the tiny recipe of tests/conftest.py
            root = Path(s.data_root or work / "shapes")
            if not (root / "manifest.csv").is_file():
                generate_shapes(root, n_train=24, n_val=4, seed=0, workers=1, variant="simple")
            overrides += [
                "data.frames=8",
                "data.size=[16,32]",
                "data.pad_to=[16,32]",
                "data.batch_size=2",
                "data.val_batch_size=2",
                "data.limit_val_clips=2",
                "text.max_length=8",
                "trainer.max_steps=3",
                "trainer.val_every_n_steps=3",
                "optim.warmup_steps=2",
                "logging.sample_steps=2",
                "logging.sample_every_n_steps=0",
                "logging.quality_every_n_steps=0",
                f"text.cache_dir={work / 'text_cache'}",
            ]
            probe_kwargs.update(steps=3, batch_size=4, max_train=16)
        else:
            root = Path(s.data_root or load_config("experiments/ablation/fit.yaml").data.root)
        overrides.append(f"data.root={root}")
        if not (root / "manifest.csv").is_file():
            started = time.perf_counter()
            from .config import DataConfig

            generate_shapes(root, DataConfig().n_train, DataConfig().n_val, workers=os.cpu_count(), variant="simple")
            self.log(f"ablation: made {root} in {time.perf_counter() - started:.0f} s")
        probe_cache = str(work / "probe") if s.dry_run else ".cache/probe"
        tiny = lambda kind: [f"model.preset={kind}_tiny"] if s.dry_run else []
        configs = {
            kind: load_config(f"experiments/ablation/{kind}.yaml", overrides + tiny(kind) + list(s.ablation_overrides))
            for kind in ("fit", "unet")
        }
        started = time.perf_counter()
        probe = probe_for(configs["fit"], probe_cache, **probe_kwargs)
        self.log(
            f"ablation: probe ready in {time.perf_counter() - started:.0f} s "
            f"(validation accuracy {probe.meta.get('val_accuracy', {}).get('all', float('nan')):.2f})"
        )
        run_dirs, stopped = [], ""
        for i, (kind, cfg) in enumerate(configs.items()):
            # each run gets the same wall clock; what is left after training goes to sampling and scoring
            seconds = min(s.ablation_seconds, (self.left() - reserve_s - 30 * (2 - i)) / (2 - i) - 20)
            if seconds < 5:
                stopped = f"partial: stopped before {kind}, {max(self.left(), 0):.0f} s of the budget left"
                break
            cfg.trainer.max_time = max_time(seconds)
            shutil.rmtree(runs_root / cfg.logging.experiment, ignore_errors=True)  # a fresh run, never a resume
            run_dir = fit(cfg, resume=False, enable_progress_bar=False)
            summary = json.loads((run_dir / "summary.json").read_text())
            self.log(
                f"ablation {kind}: {summary['steps']} steps in {summary['wall_time_s']:.0f} s "
                f"(max_time {cfg.trainer.max_time}), val loss {summary['final_val_loss']}"
            )
            # this run's config is the current one: its text cache too
            module = load_module(str(run_dir / "checkpoints" / "last.ckpt"), text_cache_dir=cfg.text.cache_dir)
            module = module.to(device)
            prompts = validation_prompts(cfg.data.root, cfg.data.manifest, min(8, s.eval_videos))
            videos = evaluation_videos(module, prompts, s.eval_steps, 2.0, seed=0, batch_size=8)
            write_grid(self.out / f"ablation_{kind}_samples.gif", videos)
            metrics = evaluate_checkpoint(
                str(run_dir / "checkpoints" / "last.ckpt"),
                s.eval_videos,
                s.eval_steps,
                batch_size=16,
                probe_cache=probe_cache,
                out=str(run_dir / "metrics.json"),
                progress=False,
                probe_kwargs=probe_kwargs,
                module=module,
            )
            self.log(
                f"ablation {kind}: prompt accuracy {fmt(metrics.get('probe/prompt_accuracy'), 3)}, "
                f"probe-FVD {fmt(metrics.get('probe/fvd'), 1)}"
            )
            run_dirs.append(run_dir)
            del module
            if device == "cuda":
                torch.cuda.empty_cache()  # the compile stage's measuring processes need the memory
        if not run_dirs:
            return stopped
        text = compare_runs(run_dirs, self.out / "ablation.md")
        runs = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
        where = "; ".join(
            f"{r['experiment']}: {r['device']}, precision {r['precision']}, max_time {r['max_time']}" for r in runs
        )  # compare_runs describes CPU runs; these ran here
        head, rest = text.split("\n", 1)
        (self.out / "ablation.md").write_text(
            f"{head}\n\ngpu-check runs ({where}); samples: ablation_{{fit,unet}}_samples.gif.\n{rest}"
        )
        return stopped or f"{len(run_dirs)} runs"

    # ---- the record --------------------------------------------------------------------------------------

    def run_stage(self, name: str, min_s: float, work: Callable[[], str]) -> None:
        """Run ``work`` if ``min_s`` seconds are left; record done / partial / skipped / failed with its seconds."""
        started = time.time()
        record = {"stage": name, "status": "skipped", "seconds": 0.0, "notes": ""}
        if self.left() < min_s:
            record["notes"] = f"{self.left():.0f} s of the budget left, needs ~{min_s:.0f} s"
        else:
            self.log(f"stage {name}: {self.left():.0f} s of the budget left")
            try:
                notes = work() or ""
                record.update(status="partial" if notes.startswith("partial") else "done", notes=notes)
            except Exception as err:  # a failed stage must not lose the others' results
                record.update(status="failed", notes=f"{type(err).__name__}: {err}")
        record["seconds"] = round(time.time() - started, 1)
        self.log(f"stage {name}: {record['status']} in {record['seconds']:.0f} s {record['notes']}".rstrip())
        self.stages.append(record)
        self.write_summary()

    def write_summary(self) -> None:
        info = {
            "dry_run": self.s.dry_run,
            "budget_s": self.s.budget_s,
            "elapsed_s": round(time.time() - self.started, 1),
            "stages": self.stages,
            "settings": {k: v for k, v in dataclasses.asdict(self.s).items() if k != "out"},
        }
        (self.out / "gpu_check.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        lines = [
            f"# gpu-check{' (dry run: tiny sizes on the CPU, not a measurement)' if self.s.dry_run else ''}",
            "",
            f"Budget {self.s.budget_s:.0f} s, {info['elapsed_s']:.0f} s used. Command: `make gpu-check` "
            f"(`lit-snapvideo gpu-check`); the log is gpu_check.log.",
            "",
            "| stage | status | seconds | notes |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['stage']} | {r['status']} | {r['seconds']:.0f} | {r['notes']} |" for r in self.stages]
        lines += [
            "",
            "Files: throughput_b8_b64.{csv,md} (throughput, presets, compile), ablation.md, "
            "ablation_{fit,unet}_samples.gif, ablation_runs/ (run directories with summary.json, metrics.json).",
        ]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def throughput_markdown(rows: list[dict], s: CheckSettings, peak: Optional[dict], info: Optional[dict] = None) -> str:
    """Rows by (preset, batch, compile) and the FIT/U-Net ratios at each batch beside the paper's."""
    dry = " (dry run: tiny presets on the CPU, not a measurement)" if s.dry_run else ""
    lines = [f"# Throughput at batch {' and '.join(str(b) for b in s.batches)}{dry}", ""]
    if s.dry_run or not rows:
        lines += [NOT_MEASURED, ""]
    if info:
        lines.append(
            f"- Hardware: {info['hardware']}; torch {info['torch']} ({info['threads']}), Python {info['python']}"
        )
    lines += [
        f"- Clip {s.frames}x{s.size[0]}x{s.size[1]}, {s.precision}; sample phase: "
        + ", ".join(f"batch {b}: {n} Heun steps with CFG" for b, n in s.sample_steps.items())
        + "; ms per video, median [IQR] of 5 repeats after 1 warm-up call (lit_snapvideo/bench/timing.py).",
        "- Warm-up s: the untimed first call(s) of each phase; with torch.compile it holds the compilation, "
        "so compile time ~ compiled warm-up minus eager warm-up.",
        f"- MFU reference: {peak['label'] if peak else '-'}. Command: `make gpu-check`.",
        "",
        "| preset | batch | compile | train ms | eval ms | sample ms | train MFU | eval MFU | "
        "warm-up s (eval/sample/train) | peak GiB (eval/sample/train) | notes |",
        "|" + "---|" * 11,
    ]
    cell = lambda r, p: (
        f"{r[f'{p}_ms']:.1f} [{r[f'{p}_q1_ms']:.1f}-{r[f'{p}_q3_ms']:.1f}]" if r.get(f"{p}_ms") is not None else "-"
    )
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "-"
    for r in rows:
        warm = "/".join(fmt(r.get(f"{p}_warmup_s"), 1) for p in PHASES)
        mem = "/".join(fmt(r.get(f"peak_mem_{p}_gib")) for p in PHASES)
        clip = (r["frames"], r["height"], r["width"])
        at = "" if clip == (s.frames, *s.size) else f" at {'x'.join(map(str, clip))}"  # an upsampler: its own clip
        lines.append(
            f"| `{r['preset']}`{at} | {r['batch']} | {'on' if r['compile'] else 'off'} | {cell(r, 'train')} | "
            f"{cell(r, 'eval')} | {cell(r, 'sample')} | {pct(r.get('train_mfu'))} | {pct(r.get('eval_mfu'))} "
            f"| {warm} | {mem} | {r['notes'] or ''} |"
        )
    groups = {(r["batch"], r["compile"]) for r in rows}
    ratio_lines = []
    x = lambda v: f"{v:.2f}x" if v is not None else "-"
    for batch, compiled in sorted(groups):
        group = [r for r in rows if (r["batch"], r["compile"]) == (batch, compiled) and r["preset"] in s.pair]
        fit = next((r for r in group if r["arch"] == "fit"), None)
        unet = next((r for r in group if r["arch"] == "unet"), None)
        if fit and unet:
            # named as the paper pair so that speedups() puts the paper's ratio beside (the dry run's tiny pair too)
            ratio = speedups([{**fit, "preset": "fit_500m"}, {**unet, "preset": "unet_284m"}])[0]
            ratio_lines.append(
                f"| {fit['preset']} / {unet['preset']} | {batch} | {'on' if compiled else 'off'} | "
                f"{x(ratio['train'])} | {x(ratio['paper_train'])} | {x(ratio['eval'])} | "
                f"{x(ratio['paper_eval'])} | {x(ratio['sample'])} |"
            )
    if ratio_lines:
        lines += [
            "",
            "## FIT over U-Net (U-Net ms / FIT ms; > 1: FIT faster)",
            "",
            "| pair | batch | compile | train | paper train (A100) | eval | paper infer (A100) | sample run |",
            "|---|---|---|---|---|---|---|---|",
        ] + ratio_lines
    return "\n".join(lines) + "\n"


def run_check(settings: CheckSettings, log: Callable[[str], None] = print) -> Check:
    """Run the stages of ``settings`` in order under its budget; returns the Check (its files are in ``out``)."""
    check = Check(settings, log)
    s = check.s
    ablation_need = 2 * s.ablation_seconds + 60  # two runs + probe, sampling, scoring
    later = lambda name: ablation_need if "ablation" in s.stages[s.stages.index(name) + 1 :] else 0.0
    pair = list(s.pair)
    units = {
        "throughput": (30, lambda: _measure_batches(check, pair, False, later("throughput"))),
        "presets": (
            30,
            lambda: _summarise(
                check.measure(list(s.extra_presets), max(s.batches), False, later("presets"), s.available_gib)
            ),
        ),
        "upsampler": (60 if not s.dry_run else 5, lambda: _measure_upsampler(check, later("upsampler"))),
        "ablation": (ablation_need if not s.dry_run else 10, lambda: check.ablation(0.0)),
        "compile": (
            60 if not s.dry_run else 5,
            lambda: _measure_batches(check, pair, True, later("compile"), order=sorted(s.batches, reverse=True)),
        ),
    }
    for name in s.stages:
        check.run_stage(name, units[name][0], units[name][1])
    if "ablation" not in s.stages or not (check.out / "ablation.md").is_file():
        (check.out / "ablation.md").write_text("# Ablation on the GPU\n\nNot run: see gpu_check.md.\n")
    if not check.rows:
        check.write_throughput()
    check.log(f"done in {time.time() - check.started:.0f} s; files in {check.out}")
    return check


def _measure_batches(
    check: Check, presets: list[str], compile: bool, reserve_s: float, order: Optional[list[int]] = None
) -> str:
    rows = []
    for batch in order or check.s.batches:
        if check.left() - reserve_s < 10:
            return _summarise(rows) + f"; batch {batch} not started: the time left is reserved for later stages"
        rows += check.measure(presets, batch, compile, reserve_s)
    return _summarise(rows)


def _measure_upsampler(check: Check, reserve_s: float) -> str:
    """The upsampler preset at its own clip (bench.settings.clip_for), batch 1, eval and sample."""
    phases = ("eval", "sample")
    return _summarise(check.measure([check.s.upsampler_preset], 1, False, reserve_s, phases=phases), phases)


def _summarise(rows: list[dict], phases: tuple[str, ...] = PHASES) -> str:
    measured = sum(1 for r in rows for p in phases if r.get(f"{p}_ms") is not None)
    return f"{measured} of {len(rows) * len(phases)} phases measured"
