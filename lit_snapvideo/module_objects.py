"""Validation's object scores (metrics/objects.py, issue 27): per sigma, how much of the object D puts back and the
object's and the background's MSE, summed over the plain-background clips of every rank and logged at the epoch's end
as ``val/{object_recovered,object_mse,background_mse}_sigma_<s>``. Mixed into :class:`~.module.EDMVideoModule`."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class ObjectScoresMixin:
    """``scores_objects`` and the epoch's sums; ``validation_step`` calls ``_add_object_scores`` at every sigma."""

    @property
    def scores_objects(self) -> bool:
        """Whether validation logs the object metrics (metrics/objects.py): a text-to-video backbone on the embedded
        set, whose clips have plain backgrounds; decided once for the data set, so every rank logs the same keys."""
        if getattr(self, "_scores_objects", None) is None:
            from .data.shapes import foreign_caption

            d = self.cfg.data
            foreign = None if self.spec.upsampler else foreign_caption(d.root, d.manifest)
            self._scores_objects = not self.spec.upsampler and foreign is None
            if foreign is not None and self.global_rank == 0:
                log.info("val/object_*: skipped, %s is not the moving-shapes set (caption %r)", d.root, foreign)
        return self._scores_objects

    def on_validation_epoch_start(self) -> None:
        self._object_sums: dict[str, Tensor] = {}  # "val/<score>_sigma_<s>" -> sum over the plain clips
        self._object_clips = torch.zeros((), device=self.device)

    def _add_object_scores(self, batch: dict, info: dict, sigma: Tensor, label: str, first: bool) -> None:
        """Adds this batch's object scores at one sigma (metrics/objects.py) to the epoch's sums."""
        from .metrics.objects import object_scores  # lazy: metrics/ imports open_clip

        denoised = self.edm.combine(info["x_sigma"], info["F"], sigma, self.sigma_in_for(batch))
        scores = object_scores(denoised, self.diffused(batch))
        plain = scores.pop("plain")
        if first:  # the same clips at every sigma
            self._object_clips = self._object_clips + plain.sum()
        for name, values in scores.items():
            key = f"val/{name}_sigma_{label}"
            self._object_sums[key] = self._object_sums.get(key, 0.0) + values[plain].sum()

    def on_validation_epoch_end(self) -> None:
        """Logs the object scores averaged over every rank's plain clips; none when no clip is plain (no 0 / 0)."""
        if not getattr(self, "_object_sums", None):
            return
        keys = sorted(self._object_sums)
        totals = torch.stack([self._object_clips.float()] + [self._object_sums[k].float() for k in keys])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[0] > 0:
            for key, total in zip(keys, totals[1:]):
                self.log(key, total / totals[0])
