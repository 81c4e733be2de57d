"""``lit-snapvideo fit``: config -> DataModule + module + Trainer -> run directory.

A run directory describes itself: ``runs/<experiment>/<version>/`` holds ``config.yaml`` (merged), the TensorBoard
events, ``checkpoints/{last,best}.ckpt`` (written atomically by Lightning: temp file, then rename; under
``trainer.strategy=fsdp`` folders of per-rank shards, sharding.py), ``samples/*.gif``
and, at the end, ``summary.json``. Rerunning the same experiment resumes from ``last.ckpt`` (model, EMA, optimiser,
scheduler, step, the data stream position and the wall time so far; the per-step random draws are functions of the
step, so the resumed run repeats the uninterrupted one, also from a step in the middle of an epoch). A ``last.ckpt``
that is unsafe to load, cut short, of another model or missing tensors is refused before anything in the run
directory is written. A start that fails before its first step (bad data, a problem found late) removes the run
directory it created; an existing run's directory is never removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import AdvancedProfiler, Profiler, SimpleProfiler
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .callbacks import (
    BestAndLastCheckpoint,
    DataTrace,
    SampleQuality,
    SampleVideos,
    SkippedFiles,
    Throughput,
    TrainingStopped,
    WallTime,
)
from .config import ConfigError, file_in_the_way, save_config
from .data.datamodule import EDMDataModule
from .errors import UserError
from .results import read_json_object, write_json_atomic
from .module import EDMVideoModule, module_for, state_dict_mismatch
from .models.presets import forward_flops
from .run_lock import LOCK_NAME, NEW_VERSION_LOCK, FolderLock
from .safe_load import CheckpointError, load_checkpoint_file, require_finite, unreadable_reason
from .sharding import STRATEGY as FSDP, fsdp_strategy

log = logging.getLogger("lit_snapvideo")
# the EMA backbone and the frozen text tower are meant to stay in eval mode during training
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# the DataModule's stream position (in every checkpoint) makes the training loader resumable mid-epoch
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
# a resumed run's checkpoints folder holds its checkpoints; best.ckpt and last.ckpt are rewritten in place
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


# the version rank 0 picked for --new-version, for the ranks Lightning's DDP launcher starts by rerunning the command
VERSION_ENV = "LIT_SNAPVIDEO_NEW_VERSION"


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.logging.root) / str(cfg.logging.experiment or "default") / str(cfg.logging.version or "version_0")


def next_free_version(cfg: DictConfig) -> str:
    base = Path(cfg.logging.root) / str(cfg.logging.experiment or "default")
    taken = {p.name for p in base.glob("version_*")} if base.exists() else set()
    i = 0
    while f"version_{i}" in taken:
        i += 1
    return f"version_{i}"


def resolve_precision(cfg: DictConfig) -> str:
    """auto: bf16 autocast on GPU, fp32 on CPU (bf16 autocast made whole backbones 6-30x slower here: docs/decisions.md)."""
    if cfg.trainer.precision != "auto":
        return "32-true" if cfg.trainer.precision == "32" else cfg.trainer.precision
    return (
        "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "32-true"
    )


def train_flops_per_video(module: EDMVideoModule) -> Optional[float]:
    """FLOPs of a training step per video, as the backbone's kind counts them (models/registry.py)."""
    try:
        fwd = forward_flops(
            module.backbone,
            frames=module.cfg.data.frames,
            size=tuple(module.cfg.data.pad_to),
            text_len=module.cfg.text.max_length,
            text_dim=module.text_encoder.dim,
        )
    except Exception as err:  # FLOP counting is informative only: never stop a run for it
        log.warning("could not count FLOPs (%s); MFU will not be logged", err)
        return None
    return module.spec.train_flops(fwd, module.cfg.optim.self_cond_prob)


def set_cpu_threads(cfg: DictConfig) -> int:
    """torch intra-op threads for CPU training: ``trainer.cpu_threads``, or this process's share of the cores
    (``trainer.devices`` CPU processes under DDP) minus its data workers.

    Also flushes denormal floats to zero: as the U-Net trained, denormals slowed its steps from ~200 to ~600 ms
    per video on this CPU (a step at the step-500 weights: 420 ms/video, 229 with flushing)."""
    processes = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) and cfg.trainer.devices > 1 else 1
    threads = cfg.trainer.cpu_threads or max(1, (os.cpu_count() or 1) // processes - cfg.data.num_workers)
    torch.set_flush_denormal(True)
    if not torch.cuda.is_available() or cfg.trainer.accelerator == "cpu":
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def build_profiler(kind: Optional[str], run_dir: Path) -> Optional[Profiler]:
    """``trainer.profiler``: Lightning's simple or advanced profiler, reporting to ``run_dir/fit-profile.txt``
    at the end of training (results/profile/fit_step_parts.md uses it)."""
    if kind is None:
        return None
    profiler_class = {"simple": SimpleProfiler, "advanced": AdvancedProfiler}[kind]
    return profiler_class(dirpath=run_dir, filename="profile")


def build_trainer(
    cfg: DictConfig, run_dir: Path, module: EDMVideoModule, enable_progress_bar: bool = True, **overrides
) -> tuple[L.Trainer, dict]:
    t = cfg.trainer
    logger = TensorBoardLogger(
        save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name, default_hp_metric=False
    )
    checkpoint = BestAndLastCheckpoint(run_dir / "checkpoints", t.checkpoint_every_n_steps)
    wall_time = WallTime()
    throughput = Throughput(train_flops_per_video(module), cfg.logging.mfu_peak_tflops)
    samples = SampleVideos(
        cfg.logging.sample_every_n_steps,
        list(cfg.logging.sample_prompts),
        cfg.logging.sample_steps,
        cfg.logging.sample_cfg,
        cfg.logging.sample_seed,
        run_dir / "samples",
    )
    callbacks = [
        checkpoint,
        wall_time,
        throughput,
        samples,
        SkippedFiles(),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.logging.data_trace:
        callbacks.append(DataTrace(run_dir / "data_trace.tsv"))
    if cfg.logging.quality_every_n_steps > 0:
        callbacks.append(
            SampleQuality(
                cfg.logging.quality_every_n_steps,
                cfg.logging.quality_num_videos,
                cfg.logging.quality_steps,
                cfg.logging.sample_cfg,
                cfg.logging.sample_seed,
            )
        )
    if enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 2)))
    precision = resolve_precision(cfg)
    # fsdp: Lightning's FSDPStrategy wrapping each backbone block (sharding.py); the module clips the gradients
    strategy = fsdp_strategy(module, precision, t.accelerator) if t.strategy == FSDP else t.strategy
    kwargs = dict(
        max_steps=t.max_steps,
        max_time=t.max_time,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy,
        num_nodes=t.num_nodes,
        precision=precision,
        deterministic=t.deterministic,
        val_check_interval=t.val_every_n_steps,
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=enable_progress_bar,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the JointSampler shards the training stream itself (EDMDataModule)
        profiler=build_profiler(t.profiler, run_dir),
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs), {
        "parameters": sum(p.numel() for p in module.backbone.parameters()),  # counted before FSDP shards them
        "throughput": throughput,
        "samples": samples,
        "checkpoint": checkpoint,
        "wall_time": wall_time,
    }


def check_resume(cfg: DictConfig, module: EDMVideoModule, path: Path) -> None:
    """Refuse to resume from ``path`` unless it is safe to load, was trained with the same model and holds every
    tensor of ``module`` (CheckpointError naming the file). Runs before anything in the run directory is written."""
    fresh = "move it away or start a fresh run with --new-version"
    try:  # mmap: the tensors are mapped, not read; their shapes are all the key check needs
        ckpt = load_checkpoint_file(path, "cpu", mmap=True, hint=f"fit never writes such a file; {fresh}")
    except CheckpointError:
        raise
    except Exception as err:  # torch's errors for a cut or corrupt file are many lines and do not name it
        reason = unreadable_reason(err)
        raise CheckpointError(f"{path}: cannot resume: the file is truncated or corrupt ({reason}); {fresh}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    saved = ((hparams or {}).get("cfg") or {}).get("model")
    if not isinstance(saved, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a lit-snapvideo checkpoint (no model config or state_dict); {fresh}")
    wanted = {"preset": cfg.model.preset, "overrides": OmegaConf.to_container(cfg.model.overrides, resolve=True)}
    had = {"preset": saved.get("preset"), "overrides": saved.get("overrides") or {}}
    if had != wanted:
        raise CheckpointError(
            f"{path}: cannot resume: it was trained with model.preset={had['preset']} "
            f"model.overrides={had['overrides']}, the config asks for model.preset="
            f"{wanted['preset']} model.overrides={wanted['overrides']}; use the run's model or "
            "start a fresh run with --new-version"
        )
    problem = state_dict_mismatch(module, ckpt["state_dict"])
    if problem:
        raise CheckpointError(f"{path}: cannot resume: {problem}; {fresh}")
    require_finite(ckpt["state_dict"], path, "cannot resume from")


def fit(
    cfg: DictConfig,
    resume: bool = True,
    new_version: bool = False,
    enable_progress_bar: bool = True,
    **trainer_overrides,
) -> Path:
    """Train ``cfg``; returns the run directory. ``resume``: continue from ``last.ckpt`` when it exists.

    The run folder is locked for the whole run (run_lock.py): a second ``fit`` of it is refused with
    :class:`~lit_snapvideo.run_lock.RunInUseError`. Under DDP every rank runs this function; rank 0 alone takes
    the lock and writes config.yaml and summary.json (Lightning writes the checkpoints and the logs from rank 0)."""
    if new_version and VERSION_ENV not in os.environ and launched_ranks() > 1:
        raise ConfigError(
            "--new-version: each process of a torchrun / srun launch would pick its own version "
            "folder; name the run with logging.version=... instead"
        )
    if new_version and VERSION_ENV in os.environ:  # a process of a DDP launch: rank 0 picked the version
        cfg.logging.version = os.environ[VERSION_ENV]
    if not launch_rank_zero():  # rank 0 holds the lock
        if new_version and VERSION_ENV not in os.environ:
            cfg.logging.version = next_free_version(cfg)
        return _fit_locked(cfg, resume, new_version, enable_progress_bar, [], **trainer_overrides)
    if new_version and VERSION_ENV not in os.environ:
        experiment_dir = run_dir_of(cfg).parent
        created = folders_to_create(experiment_dir)
        with FolderLock(experiment_dir / NEW_VERSION_LOCK, wait=True):  # one pick at a time: each claims its number
            cfg.logging.version = next_free_version(cfg)
            created.insert(0, run_dir_of(cfg))
            lock = FolderLock(run_dir_of(cfg) / LOCK_NAME, hint=IN_USE_HINT).acquire()
    else:
        created = folders_to_create(run_dir_of(cfg))
        lock = FolderLock(run_dir_of(cfg) / LOCK_NAME, hint=IN_USE_HINT).acquire()
    try:
        return _fit_locked(cfg, resume, new_version, enable_progress_bar, created, **trainer_overrides)
    finally:
        lock.release()


IN_USE_HINT = "wait for it to end, stop it, or start a fresh run with --new-version"


def launch_rank_zero() -> bool:
    """Whether this process is rank 0 of its launch (or launched alone): the environment variables that torchrun,
    SLURM and Lightning's DDP launcher set for the other ranks are all 0 or unset."""
    return all(int(os.environ.get(v) or 0) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def folders_to_create(run_dir: Path) -> list[Path]:
    """The run folder and those of its parents that do not exist yet (deepest first): what a start makes."""
    return [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]


def _fit_locked(
    cfg: DictConfig,
    resume: bool,
    new_version: bool,
    enable_progress_bar: bool,
    created: list[Path],
    **trainer_overrides,
) -> Path:
    """:func:`fit` once the run folder is claimed; ``created``: the folders this start made (a start that fails
    before its first step removes them)."""
    run_dir = run_dir_of(cfg)
    trainer = None
    try:
        check_run_folders(run_dir)
        L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        set_cpu_threads(cfg)
        datamodule = EDMDataModule(cfg)
        module = module_for(cfg)(cfg)
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if resume and last.exists() else None
        if ckpt_path:
            check_resume(cfg, module, last)  # a foreign or other-model checkpoint leaves the run as it was
            log.info("resuming from %s", ckpt_path)
        init_report = None
        if cfg.model.init_from and not ckpt_path:  # a fresh run starts from stage-1 weights (the paper's upsampler)
            from .models.init_from import init_from_stage1

            init_report = init_from_stage1(module.backbone, cfg.model.init_from)
            module.ema_backbone.load_state_dict(module.backbone.state_dict())
        trainer, parts = build_trainer(cfg, run_dir, module, enable_progress_bar, **trainer_overrides)
        hand_over = new_version and trainer.is_global_zero and VERSION_ENV not in os.environ
        if hand_over:  # the launcher's processes inherit the environment
            os.environ[VERSION_ENV] = str(cfg.logging.version)
        try:
            if trainer.is_global_zero:
                save_config(cfg, run_dir)
                if init_report is not None:
                    report = {"init_from": cfg.model.init_from, **init_report}
                    (run_dir / "init_report.json").write_text(json.dumps(report, indent=2) + "\n")
            # weights_only: Lightning's own load of the checkpoint is as safe as check_resume's
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        finally:
            if hand_over:
                os.environ.pop(VERSION_ENV, None)
    except (TrainingStopped, SIGTERMException) as stop:  # SIGTERMException: Lightning's stop of every DDP rank
        if not isinstance(stop, TrainingStopped):
            stop = TrainingStopped("SIGTERM", trainer.global_step, run_dir / "checkpoints" / "last.ckpt", saved=False)
        if trainer.is_global_zero:
            write_summary(run_dir, cfg, module, trainer, parts, ckpt_path is not None, stop.signal_name)
        raise stop from None
    except Exception:
        if (trainer is None or trainer.is_global_zero) and (trainer is None or trainer.global_step == 0):
            remove_stray_run(run_dir, created)  # bad data or config found late: nothing to keep
        raise
    if trainer.is_global_zero:
        write_summary(run_dir, cfg, module, trainer, parts, resumed=ckpt_path is not None)
    return run_dir


RUN_FOLDERS = ("checkpoints", "samples")  # what a run makes inside its folder


def check_run_folders(run_dir: Path) -> None:
    """UserError naming a plain file where the run makes one of :data:`RUN_FOLDERS`: refused before the first
    step (samples/ is made at the first sample step, when training had begun), not as an OS error's traceback."""
    for name in RUN_FOLDERS:
        blocker = file_in_the_way(run_dir / name)
        if blocker is not None:
            raise UserError(f"{blocker} is a file where the run writes its {name}/ folder; move it away")


def launched_ranks() -> int:
    """Processes started together by an outside launcher (torchrun's WORLD_SIZE, SLURM's task count), else 1."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


# what a start writes before its first step; a folder holding anything else is never removed
STRAY_FILES = (
    "config.yaml",
    "hparams.yaml",
    "events.out.tfevents.*",
    "data_trace.tsv",
    "init_report.json",
    LOCK_NAME,
)


def remove_stray_run(run_dir: Path, created: list[Path]) -> None:
    """Remove the run directory of a failed start when this start created it (it is in ``created``, the folders
    that did not exist before) and it holds nothing but :data:`STRAY_FILES`; then its new parents left empty.
    An existing run's folder is never in ``created``."""
    if run_dir not in created or not run_dir.is_dir():
        return
    if not all(any(p.match(pattern) for pattern in STRAY_FILES) for p in run_dir.rglob("*") if p.is_file()):
        return
    shutil.rmtree(run_dir)
    for parent in created[created.index(run_dir) + 1 :]:  # deepest first; stop at one that holds something
        try:
            parent.rmdir()
        except OSError:
            break
    log.info("removed %s: the start failed before its first step", run_dir)


def read_summary(path: Path) -> dict:
    """A run's summary.json, or {} when there is none or it is damaged (with a warning naming it: the next
    write_summary replaces it)."""
    try:
        return read_json_object(path)
    except FileNotFoundError:
        return {}
    except UserError as err:
        log.warning("%s; writing a new one", err)
        return {}


def write_summary(
    run_dir: Path,
    cfg: DictConfig,
    module: EDMVideoModule,
    trainer: L.Trainer,
    parts: dict,
    resumed: bool = False,
    stopped_by: Optional[str] = None,
) -> dict:
    """summary.json: what `make compare` tabulates (parameters, steps, wall time, losses, ms/video), written
    atomically (a temporary file, then a rename). ``stopped_by``: the signal that ended this segment, if any."""
    path = run_dir / "summary.json"
    previous = read_summary(path)
    val = trainer.callback_metrics.get("val/loss")
    infer = parts["samples"].infer_ms_per_video_per_eval
    wall = parts["wall_time"]
    # a checkpoint written before checkpoints carried the wall time: the earlier segments are in the old summary
    earlier = previous.get("wall_time_s", 0.0) if resumed and not wall.restored else 0.0
    summary = {
        "experiment": cfg.logging.experiment,
        "preset": cfg.model.preset,
        "kind": module.kind,
        "parameters": parts["parameters"],
        "steps": trainer.global_step,
        "max_steps": cfg.trainer.max_steps,
        "max_time": cfg.trainer.max_time,
        "batch_size": cfg.data.batch_size,  # per rank
        "world_size": trainer.world_size,  # global batch = batch_size x world_size (x accumulate_grad_batches)
        "videos_seen": float(module.videos_seen),
        "wall_time_s": round(wall.seconds() + earlier, 1),  # every segment, killed ones up to their checkpoint
        "final_val_loss": float(val) if val is not None else None,
        "final_object_recovered": {  # per sigma, the last validation's (metrics/objects.py); {} off the embedded set
            key.rsplit("_", 1)[1]: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("val/object_recovered_sigma_")
        },
        "train_ms_per_video": parts["throughput"].median_ms_per_video() or previous.get("train_ms_per_video"),
        "train_mfu": parts["throughput"].median_mfu() or previous.get("train_mfu"),  # median step / the reference
        "mfu_reference_tflops": parts["throughput"].peak or previous.get("mfu_reference_tflops"),
        "infer_ms_per_video_per_eval": (min(infer) if infer else previous.get("infer_ms_per_video_per_eval")),
        "nonfinite_steps": module.nonfinite_total,
        "skipped_files": trainer.datamodule.skipped_files() if hasattr(trainer.datamodule, "skipped_files") else None,
        "data_root": cfg.data.root,
        "clip": [cfg.data.frames, *cfg.data.pad_to],  # frames, H, W the backbone saw (padded)
        "optimizer": module.optimizer_settings()["name"],
        "sigma_in": cfg.diffusion.sigma_in,
        "sigma_data": cfg.diffusion.sigma_data,
        "framework": cfg.diffusion.framework,
        "precision": trainer.precision,
        "device": str(module.device),
        "run_dir": str(run_dir),
        "stopped_by": stopped_by,  # null: training ran to max_steps / max_time
    }
    write_json_atomic(path, summary, nonfinite="null")  # a diverged run still gets its summary
    return summary
