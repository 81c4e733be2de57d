"""Per-frame FID with a user-supplied TorchScript Inception network (torchmetrics does the bookkeeping).

The expected file is the TorchScript Inception-v3 of the StyleGAN2-ADA / stylegan-v metrics
(``inception-2015-12-05.pt``), called as ``detector(frames_uint8 (N, 3, H, W), return_features=True)`` and
returning ``(N, 2048)`` pool features; it resizes to 299x299 itself. Every frame of every video counts as one
image. torchmetrics' ``FrechetInceptionDistance`` accumulates the sums in float64 (its covariance divides by
N-1) and keeps the real statistics across ``reset()``. Nothing here downloads the network.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from einops import rearrange
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ..errors import one_line
from .fvd import DetectorError, VideoSource, check_features, iter_video_batches, load_torchscript, summarise, to_uint8

INCEPTION_KWARGS = dict(return_features=True)  # stylegan2-ada's call for FID features


class _FrameFeatures(nn.Module):
    """uint8 frames ``(N, 3, H, W)`` -> ``(N, D)`` features through the TorchScript detector."""

    def __init__(self, detector: torch.jit.ScriptModule, path: str, detector_kwargs: dict):
        super().__init__()
        self.detector, self.path, self.detector_kwargs = detector, path, detector_kwargs

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        try:
            feats = self.detector(frames, **self.detector_kwargs)
        except Exception as err:
            raise DetectorError(
                f"{self.path}: the Inception detector failed on uint8 frames {tuple(frames.shape)} called "
                f"with {self.detector_kwargs}: {one_line(err)}"
            ) from None
        return check_features(feats, frames.shape[0], self.path)


class FID:
    """Per-frame FID of generated videos against real videos.

    fid = FID("inception-2015-12-05.pt")
    fid.update_real(val_loader)                  # videos (N, 3, T, H, W) in [-1, 1], or dict batches
    fid.score([fake_seed0, fake_seed1])         # {"fid": mean, "fid_std": std, "fid_per_seed": [...], ...}
    """

    def __init__(
        self,
        detector_path: str | os.PathLike,
        detector_kwargs: dict | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
    ):
        detector = load_torchscript(detector_path, "the Inception detector (e.g. inception-2015-12-05.pt)", device)
        features = _FrameFeatures(
            detector, str(detector_path), dict(INCEPTION_KWARGS if detector_kwargs is None else detector_kwargs)
        )
        # torchmetrics probes the network once with a uint8 299x299 image to learn the feature size
        self.metric = FrechetInceptionDistance(feature=features, reset_real_features=False).to(device)
        self.batch_size, self.device = batch_size, device

    @torch.no_grad()
    def _update(self, source: VideoSource, real: bool) -> int:
        count = 0
        for videos in iter_video_batches(source, self.batch_size):
            if videos.ndim != 5 or videos.shape[1] != 3:
                raise ValueError(f"FID: expected videos of shape (B, 3, T, H, W), got {tuple(videos.shape)}")
            frames = rearrange(to_uint8(videos), "b c t h w -> (b t) c h w").to(self.device)
            self.metric.update(frames, real=real)
            count += frames.shape[0]
        return count

    def update_real(self, source: VideoSource) -> int:
        """Add real videos; returns the number of frames added."""
        return self._update(source, real=True)

    def score(self, fake_sets: Sequence[VideoSource]) -> dict:
        """FID of each generated set (one per sampling seed) against the real frames seen so far."""
        values = []
        for fake in fake_sets:
            self.metric.reset()  # drops the previous set's fake statistics, keeps the real ones
            self._update(fake, real=False)
            values.append(float(self.metric.compute()))
        return summarise("fid", values)
