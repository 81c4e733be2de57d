"""The one EDM DataModule both backbones train on.

A batch is ``{"video": float32 (B, 3, T, *data.pad_to) in [-1, 1], "caption": list[str],
"fps": float32 (B,) (math.inf for still images), "orig_size": float32 (B, 2) source (H, W) in
pixels, "is_image": bool (B,), "key": int64 (B,) each example's draw seed (training: it seeds the example's
diffusion noise, so a sample's loss does not depend on the rank or batch it lands in)}``; with ``data.low_res_size``
(an upsampler) also ``"low_res": (B, 3, T, *low_res_size)``, each clip downsampled from the same decoded frames. Examples are cropped to ``data.size``; the collate function pads
the batch to ``data.pad_to`` with :func:`lit_snapvideo.data.video.pad_video` (undo with
``crop_padding``), once per batch where one large op is cheaper than B small ones.

Training draws frame rates from ``data.fps_choices`` and mixes still images into each batch with
probability ``data.image_fraction`` (:class:`JointSampler`); the stream depends only on
``data.seed`` and the position in it, which checkpoints carry, so a resumed run sees the batches
the uninterrupted run would have seen. Under DDP ``data.batch_size`` is per rank (the global batch is
``batch_size x devices x num_nodes``) and the sampler shards the one stream over the ranks, so the ranks' batches
of a step together are the batch one process would draw at the global size (the Trainer runs with
``use_distributed_sampler=False``: Lightning's wrapper would re-shard the pass and lose the stream position).
Validation is deterministic: the first ``data.limit_val_clips`` records of the val split at ``data.val_fps`` from
frame 0, the same clips on every rank (a small set; the loss equals one process's at any device count).
Bad files are skipped and counted across workers: :meth:`EDMDataModule.skipped_files`.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
from omegaconf import DictConfig
from torch.utils.data import DataLoader, default_collate

from .datasets import ClipDataset, JointSampler, Record, SkipLog, check_batch_size, check_validation_set, load_records
from .shapes import EMBEDDED_ROOTS, generate_shapes
from .video import pad_video

log = logging.getLogger(__name__)


def collate_padded(examples: list[dict], pad_to: tuple[int, int]) -> dict:
    """Stack examples and pad the videos: (B, 3, T, *size) -> (B, 3, T, *pad_to)."""
    batch = default_collate(examples)
    batch["video"] = pad_video(batch["video"], pad_to)
    return batch


def validation_set(val: list[Record], c: DictConfig, skip_log: SkipLog, frames: Optional[int] = None) -> ClipDataset:
    """The clips fit validates on (``c``: the data config): the first ``data.limit_val_clips`` of the val split at
    ``data.val_fps`` from frame 0. ``frames``: instead of ``data.frames`` (data check's --frames)."""
    val = val[: c.limit_val_clips] if c.limit_val_clips > 0 else val
    return ClipDataset(val, frames or c.frames, list(c.size), fps_choices=[c.val_fps], train=False,
                       skip_log=skip_log, low_res_size=c.low_res_size, decoded_cache_mb=c.decoded_cache_mb)


class EDMDataModule(L.LightningDataModule):
    """``EDMDataModule(cfg)`` with the whole experiment config (it reads ``cfg.data``)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg.data
        self.train_set: Optional[ClipDataset] = None
        self.val_set: Optional[ClipDataset] = None
        self.skip_log = SkipLog()  # a temporary folder every DataLoader worker writes its markers to
        self.stream_position = 0  # training draws consumed so far (all ranks), saved in checkpoints

    def prepare_data(self) -> None:
        """Generate the embedded set when ``data.root`` is one of its default folders (``data/shapes``: the full
        set, ``data/shapes_simple``: the ablation's) and it is missing."""
        root = Path(self.cfg.root)
        variant = EMBEDDED_ROOTS.get(self.cfg.root.rstrip("/"))
        if variant and self.cfg.manifest is None and not (root / "manifest.csv").is_file():
            log.info("generating the %s moving-shapes set in %s (%d train, %d val clips)", variant, root,
                     self.cfg.n_train, self.cfg.n_val)
            generate_shapes(root, self.cfg.n_train, self.cfg.n_val, seed=self.cfg.seed, variant=variant)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        c = self.cfg
        train, val = load_records(c.root, c.manifest, self.skip_log)  # DataError for empty sets / bad manifests
        self.train_set = ClipDataset(train, c.frames, list(c.size), fps_choices=list(c.fps_choices), train=True,
                                     skip_log=self.skip_log, low_res_size=c.low_res_size,  # padded per batch
                                     decoded_cache_mb=c.decoded_cache_mb)
        self.val_set = validation_set(val, c, self.skip_log)
        check_validation_set(self.val_set, c.root)  # not at the first validation, after training has begun
        n_img = sum(self.train_set.is_image)
        log.info("data: %d train records (%d images), %d val records from %s", len(train), n_img, len(val), c.root)

    def _loader(self, dataset: ClipDataset, batch_size: int, sampler=None) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=partial(collate_padded, pad_to=tuple(self.cfg.pad_to)),
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=sampler is not None,  # every training batch is whole (check_batch_size)
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world_size = trainer.world_size if trainer else 1
        check_batch_size(self.cfg.batch_size, len(self.train_set), self.cfg.root, world_size)
        sampler = JointSampler(self.train_set.is_image, self.cfg.image_fraction, self.cfg.seed,
                               consumed=lambda: self.stream_position,
                               rank=trainer.global_rank if trainer else 0, world_size=world_size)
        return self._loader(self.train_set, self.cfg.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.cfg.val_batch_size)

    # ---- resuming: a restarted run continues the training stream where the checkpoint left it ----

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.trainer is not None and self.trainer.training:
            self.stream_position += len(batch["caption"]) * self.trainer.world_size
        return batch

    def state_dict(self) -> dict:
        return {"stream_position": self.stream_position}

    def load_state_dict(self, state: dict) -> None:
        self.stream_position = int(state.get("stream_position", 0))

    def skipped_files(self) -> int:
        """Distinct bad files skipped so far, summed over all DataLoader workers."""
        return self.skip_log.count()
