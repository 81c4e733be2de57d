"""Training callbacks: best + last checkpoints, sample GIFs in TensorBoard, throughput / MFU / peak memory,
skipped-file counts.

Sample videos go into TensorBoard as animated GIFs inside an *image* summary (TensorBoard's image panel plays them):
``SummaryWriter.add_video`` needs moviepy and breaks with moviepy 2 (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import logging
import math
import resource
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
import torch

from .generation import evaluation_videos, generate_videos, grid_legend, validation_prompts, write_grid

log = logging.getLogger(__name__)


# ---- checkpoints ----------------------------------------------------------------------------------


class BestAndLastCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (lowest ``val/loss``) and ``last.ckpt`` = the newest state, after every validation, every
    ``every_n_steps`` steps (0: never) and at the end of training. Lightning 2.6's ``save_last`` rewrites last.ckpt
    only at a step where a top-k file was saved, and at the end only if it never wrote one: a run whose validation loss
    stopped improving left a stale last.ckpt (resume and ``evaluate`` then used old weights). Lightning writes both
    files atomically (temp file, then rename).

    The two names are fixed: no ``last-v1.ckpt`` beside a ``last.ckpt`` (Lightning's version counter made one when
    a run folder had moved, and the next resume read the older file). A checkpoint from the run's earlier place
    names its files there; :meth:`load_state_dict` reads those names as the files of this folder."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0):
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor="val/loss",
            mode="min",
            save_top_k=1,
            save_last=True,
            enable_version_counter=False,
        )
        self.every_n_steps = every_n_steps
        self.stop_request = StopRequest()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # a moved or copied run folder: its best/last are the files of the same name here (else Lightning forgets
        # the best score, and the first validation after the move overwrites best.ckpt whatever its loss)
        before = state_dict.get("dirpath")
        if before and self.dirpath and before != self.dirpath:

            def here(path: Any) -> Any:
                return str(Path(self.dirpath) / Path(path).name) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": here(state_dict.get("best_model_path")),
                "kth_best_model_path": here(state_dict.get("kth_best_model_path")),
                "last_model_path": here(state_dict.get("last_model_path")),
                "best_k_models": {here(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        # _should_skip_saving_checkpoint: fast_dev_run, sanity check, not fitting, or already saved at this step
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_request.install(trainer.world_size)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # Lightning's own test for a validation after this batch; that one saves (a save now would block best.ckpt)
        validates = (
            trainer.enable_validation
            and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % trainer.val_check_batch == 0
        )
        stopping = self.stop_request.stops(trainer)
        if not validates and (stopping or (self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0)):
            self._save_last_if_stale(trainer)
        if stopping and not validates:  # at a validation step the stop comes after it, with its save
            self._stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_stale(trainer)
        if self.stop_request.stops(trainer):
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        # every callback has seen this step (Lightning runs the checkpoint callbacks last), and last.ckpt holds it
        raise TrainingStopped(self.stop_request.signal, trainer.global_step, Path(self.last_model_path))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_if_stale(trainer)
        self.stop_request.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stop_request.restore()


class TrainingStopped(Exception):
    """Training stopped at a step boundary on SIGTERM or SIGINT, after writing ``checkpoint`` (that step's
    state); the command line exits with 128 + the signal's number (143, 130)."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path, saved: bool = True) -> None:
        holds = "holds that step" if saved else "holds the last save before it (DDP stops without a new one)"
        super().__init__(f"stopped by {signal_name} at step {step}; {checkpoint} {holds}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + int(getattr(signal, self.signal_name))


class StopRequest:
    """SIGTERM (a cluster's notice before preemption, ``kill``) and SIGINT (Ctrl+C) during training: note the
    signal, so :class:`BestAndLastCheckpoint` saves and stops at the next step boundary. A second signal stops at
    once (KeyboardInterrupt), without a checkpoint.

    One process: these handlers replace Lightning's SIGTERM handler for the training loop (it would stop without a
    checkpoint, with exit status 0) and are put back after it; SIGUSR1, SLURM's requeue signal, stays
    Lightning's. Under DDP the ranks must stop at the same step: Lightning's handler keeps SIGTERM (it stops every
    rank together, without a checkpoint at the signal) and SIGINT is left as it is; the stop is still recorded."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: Optional[str] = None  # the name of the signal received
        self.own = False  # whether this process stops itself (one process), not Lightning's DDP stop
        self._previous: dict[int, Any] = {}

    def stops(self, trainer: L.Trainer) -> bool:
        """Whether to save and stop now: a signal came, this process stops itself, and training is not done."""
        not_done = trainer.max_steps < 0 or trainer.global_step < trainer.max_steps
        return self.signal is not None and self.own and not_done

    def install(self, world_size: int = 1) -> None:
        if threading.current_thread() is not threading.main_thread():  # Python handles signals in the main thread
            return
        self.signal, self._previous, self.own = None, {}, world_size == 1
        for signum in self.SIGNALS if world_size == 1 else (signal.SIGTERM,):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler if world_size == 1 else self._note_and_chain)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            self.restore()
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopping without a checkpoint")
        self.signal = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint and stopping after this step (again: stop now)", self.signal)

    def _note_and_chain(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}


# ---- sample GIFs ----------------------------------------------------------------------------------


def add_gif_summary(
    writer: Any, tag: str, data: bytes, size: tuple[int, int], step: int, description: str = ""
) -> None:
    """Write encoded GIF bytes as a TensorBoard image summary (what torch's add_video does, minus moviepy);
    ``description`` (markdown) is shown with the image, e.g. the prompts of a sample grid."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

    width, height = size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    metadata = SummaryMetadata(summary_description=description)
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image, metadata=metadata)]), step)


class SampleVideos(L.Callback):
    """Every ``every_n_steps`` (and at the end of training) sample the fixed prompts with fixed seeds from the EMA
    weights, write ``samples/step_<6-digit step>.gif`` (and ``samples/prompts.txt``) in the run directory and a GIF
    image summary ``samples/grid`` whose description lists the prompts in grid order. Rank 0 samples and writes;
    under FSDP every rank samples (each forward pass gathers the sharded weights), rank 0 alone writes."""

    def __init__(
        self, every_n_steps: int, prompts: list[str], steps: int, cfg_scale: float, seed: int, out_dir: str | Path
    ) -> None:
        self.every = every_n_steps
        self.prompts, self.steps, self.cfg_scale, self.seed = list(prompts), steps, cfg_scale, seed
        self.out_dir = Path(out_dir)
        self.last_step = -1
        self.infer_ms_per_video_per_eval: list[float] = []

    def _sample(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.global_step == self.last_step or not self.prompts:
            return
        if not (trainer.is_global_zero or module.sharded):
            return
        self.last_step = trainer.global_step
        prompts, low_res = self.prompts, None
        if module.spec.upsampler:  # the first validation clips' captions and low-resolution videos
            prompts, low_res = upsampler_inputs(trainer.datamodule.val_set, len(self.prompts))
        start = time.perf_counter()
        videos = generate_videos(
            module, prompts, self.steps, self.cfg_scale, self.seed, batch_size=len(prompts), low_res=low_res
        )
        if not trainer.is_global_zero:
            return
        evals = 2 * self.steps - 1
        self.infer_ms_per_video_per_eval.append(1000 * (time.perf_counter() - start) / (len(prompts) * 2 * evals))
        data, size = write_grid(self.out_dir / f"step_{trainer.global_step:06d}.gif", videos, prompts)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                add_gif_summary(
                    logger.experiment,
                    "samples/grid",
                    data,
                    size,
                    trainer.global_step,
                    description=grid_legend(prompts),
                )

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self._sample(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self._sample(trainer, module)


def upsampler_inputs(dataset: Any, n: int) -> tuple[list[str], torch.Tensor]:
    """(captions, low_res (n', 3, T, h, w)) of the first ``n`` clips of a data set that serves low-res videos
    (n' = min(n, its size)): an upsampler's fixed inputs for its training samples."""
    examples = [dataset[i] for i in range(min(n, len(dataset)))]
    return [e["caption"] for e in examples], torch.stack([e["low_res"] for e in examples])


# ---- throughput -----------------------------------------------------------------------------------


def peak_memory_gib(device: torch.device) -> float:
    """Peak accelerator memory (CUDA) or the process's peak resident memory (CPU), in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


class Throughput(L.Callback):
    """Logs videos/s, ms/video, peak memory and MFU of each training step.

    ``train_flops_per_video``: FLOPs of one training step per video (forward + backward ~ 3x forward, plus FIT's
    no-grad self-conditioning forward); MFU = achieved FLOP/s / ``peak_tflops``. Without a given peak, the
    reference is a matmul probe at the run's precision and thread count, measured at the start (bench's probe)."""

    def __init__(
        self, train_flops_per_video: Optional[float] = None, peak_tflops: Optional[float] = None, skip_first: int = 3
    ) -> None:
        self.flops = train_flops_per_video
        self.peak = peak_tflops
        self.skip_first = skip_first
        self.ms_per_video: list[float] = []
        self._t0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, module: Any) -> None:
        if self.peak or not self.flops:
            return
        from .bench.timing import matmul_probe_tflops  # bench's MFU reference; imported late (bench imports models)

        precision = "bf16" if "bf16" in str(trainer.precision) else "fp32"
        n = 8192 if module.device.type == "cuda" else 1024  # 1024^3 fp32: ~10 ms a call on this CPU
        self.peak = matmul_probe_tflops(module.device.type, precision, n=n, repeats=5)

    def median_mfu(self) -> Optional[float]:
        """The median step's MFU (None without FLOPs or a peak)."""
        ms = self.median_ms_per_video()
        if not (ms and self.flops and self.peak):
            return None
        return self.flops / (ms / 1000) / (self.peak * 1e12)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        seconds = time.perf_counter() - self._t0
        videos = batch["video"].shape[0]
        ms = 1000 * seconds / videos
        if batch_idx >= self.skip_first:
            self.ms_per_video.append(ms)
        metrics = {
            "perf/videos_per_s": videos / seconds * trainer.world_size,
            "perf/ms_per_video": ms,
            "perf/peak_memory_gib": peak_memory_gib(module.device),
        }
        if self.flops:
            achieved = self.flops * videos / seconds
            metrics["perf/tflops"] = achieved / 1e12
            if self.peak:
                metrics["perf/mfu"] = achieved / (self.peak * 1e12)
        module.log_dict(metrics, on_step=True, on_epoch=False)

    def median_ms_per_video(self) -> Optional[float]:
        return statistics.median(self.ms_per_video) if self.ms_per_video else None


class WallTime(L.Callback):
    """Wall-clock seconds of a run, summed over all its segments: checkpoints carry the sum, so a resumed run (also
    after a kill) adds its time to that of the segments before it. The clock starts when the callback is made."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.before = 0.0  # seconds of the earlier segments, up to the checkpoint this run resumed from
        self.restored = False  # whether a checkpoint gave ``before``

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before, self.restored = float(state_dict.get("seconds", 0.0)), True


class DataTrace(L.Callback):
    """One line per training step in ``path`` (``logging.data_trace``): step, stream position after the batch, and
    per video its caption, frame rate and a hash of its pixels. A resumed run appends the steps it repeats, so
    the last line of each step is the one that counts. Written line by line, so a killed run keeps its lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        position = getattr(trainer.datamodule, "stream_position", "")
        items = [
            f"{caption}|{float(fps):g}|{hashlib.sha1(video.detach().cpu().numpy().tobytes()).hexdigest()[:12]}"
            for caption, fps, video in zip(batch["caption"], batch["fps"], batch["video"])
        ]
        with self.path.open("a") as f:
            f.write("\t".join([str(trainer.global_step), str(position), *items]) + "\n")


def read_data_trace(path: str | Path) -> dict[int, list[str]]:
    """Step -> [stream position, items...] from a :class:`DataTrace` file; the last line of a step wins."""
    steps = {}
    for line in Path(path).read_text().splitlines(keepends=True):
        if line.endswith("\n"):  # a killed run may leave a cut last line
            step, *rest = line.rstrip("\n").split("\t")
            steps[int(step)] = rest
    return steps


class SkippedFiles(L.Callback):
    """Puts the data module's count of skipped (unreadable) files in the logs and the progress bar."""

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "skipped_files") and trainer.global_step % trainer.log_every_n_steps == 0:
            module.log("data/skipped_files", float(dm.skipped_files()), prog_bar=True, on_step=True, on_epoch=False)


class SampleQuality(L.Callback):
    """Every ``every_n_steps`` (and at the end): sample ``num_videos`` validation captions (fixed seed, EMA weights)
    and log the embedded set's probe metrics: ``quality/prompt_accuracy``, ``quality/color_accuracy``,
    ``quality/shape_accuracy`` and ``quality/probe_fvd`` (comparable
    across runs and backbones at equal ``num_videos``; not comparable with published FVD). The probe is trained once
    per data set and cached (``lit-snapvideo probe`` trains it ahead of a run). Rank 0 samples and scores; under
    FSDP every rank samples (the forward passes need every rank), rank 0 alone scores."""

    def __init__(self, every_n_steps: int, num_videos: int, steps: int, cfg_scale: float, seed: int = 0) -> None:
        self.every, self.num_videos, self.steps, self.cfg_scale, self.seed = (
            every_n_steps,
            num_videos,
            steps,
            cfg_scale,
            seed,
        )
        self.probe: Any = None
        self.prompts: list[str] = []
        self.last_step = -1

    def on_fit_start(self, trainer: L.Trainer, module: Any) -> None:
        from .data.shapes import foreign_caption
        from .metrics.probe import probe_for  # lazy: metrics/ loads only when quality is logged

        if not (trainer.is_global_zero or module.sharded):  # rank 0 samples and scores
            return
        cfg = module.cfg
        if foreign_caption(cfg.data.root, cfg.data.manifest) is not None:  # the probe's labels are those captions
            if trainer.is_global_zero:
                log.warning("logging.quality_every_n_steps: skipped, %s is not the moving-shapes set", cfg.data.root)
            return
        self.prompts = validation_prompts(cfg.data.root, cfg.data.manifest, self.num_videos)
        if trainer.is_global_zero:  # probe_for may train and cache the probe: one writer
            self.probe = probe_for(cfg)

    def _score(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.global_step == self.last_step or not self.prompts:
            return
        self.last_step = trainer.global_step
        from .metrics.probe import probe_metrics

        videos = evaluation_videos(module, self.prompts, self.steps, self.cfg_scale, self.seed, batch_size=8)
        if self.probe is None:  # another rank under FSDP: it took part in the sampling
            return
        metrics = probe_metrics(self.probe, videos, self.prompts)
        values = {
            "quality/prompt_accuracy": metrics["probe/prompt_accuracy"],
            "quality/color_accuracy": metrics["probe/color_accuracy"],  # the issue-16 bar: colour >= 0.8, shape >= 0.6
            "quality/shape_accuracy": metrics["probe/shape_accuracy"],
            "quality/probe_fvd": metrics["probe/fvd"],
            "quality/temporal_consistency": metrics["probe/temporal_consistency"],
        }
        if math.isfinite(metrics["probe/direction_accuracy"]):  # NaN when no prompt names a direction
            values["quality/direction_accuracy"] = metrics["probe/direction_accuracy"]
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self._score(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self.every > 0:
            self._score(trainer, module)
