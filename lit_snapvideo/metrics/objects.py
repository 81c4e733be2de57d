"""Where the content is: the denoiser's error split into the object's pixels and the plain background's.

On the embedded moving-shapes set an object covers ~8% of a clip, so a whole-frame error is >90% background and
cannot see a backbone that gets the background right and draws no object (docs/decisions.md, issue 27). Per clip:

    background colour b (3,)    the per-channel median over the clip (the background is most of the pixels)
    object mask m (T, H, W)     pixels whose largest channel difference from b exceeds ``OBJECT_THRESHOLD``
    object MSE                  mean (D - x)^2 over m          background MSE: the same over not-m
    object recovered            <D - b, x - b>_m / <x - b, x - b>_m
                                1: D puts the whole object back; 0: D draws the background alone (or noise
                                uncorrelated with the object); it is a projection, so it does not reward
                                a D that is merely bright where the object is not.

A clip is scored only if its background is plain: at least ``PLAIN_SHARE`` of its pixels lie within
``BACKGROUND_TOLERANCE`` of b, and the mask holds at least ``MIN_OBJECT_PIXELS`` pixels (a checkered background or
a user's real video fails the first test and is skipped).
"""

from __future__ import annotations

import torch
from torch import Tensor

OBJECT_THRESHOLD = 0.25  # in [-1, 1] units: 32 of 255 levels, above mp4 ringing, below every object's contrast
BACKGROUND_TOLERANCE = 0.1  # a background pixel lies within 13 levels of the median (codec noise)
PLAIN_SHARE = 0.6  # a plain background is most of the clip (the embedded objects cover ~8%)
MIN_OBJECT_PIXELS = 4


def background_and_mask(video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Clean clips (B, 3, T, H, W) in [-1, 1] -> (background colour (B, 3), object mask (B, T, H, W) bool,
    plain (B,) bool: whether the clip has a plain background and an object to score)."""
    flat = video.flatten(2)  # (B, 3, P)
    background = flat.median(dim=2).values  # (B, 3)
    distance = (video - background[:, :, None, None, None]).abs().amax(dim=1)  # (B, T, H, W)
    mask = distance > OBJECT_THRESHOLD
    near = (distance <= BACKGROUND_TOLERANCE).flatten(1).float().mean(1)
    plain = (near >= PLAIN_SHARE) & (mask.flatten(1).sum(1) >= MIN_OBJECT_PIXELS)
    return background, mask, plain


def object_scores(denoised: Tensor, clean: Tensor) -> dict[str, Tensor]:
    """Per clip (B,): ``object_mse``, ``background_mse``, ``object_recovered`` and ``plain`` (bool; the scores of a
    clip that is not plain are 0 and must be left out of any average: :func:`masked_mean`).

    denoised, clean: (B, 3, T, H, W) in data space."""
    background, mask, plain = background_and_mask(clean)
    m = mask[:, None].to(clean.dtype)  # (B, 1, T, H, W)
    error = (denoised - clean).pow(2)
    channels = clean.shape[1]
    object_pixels = m.sum((1, 2, 3, 4)).clamp(min=1.0)
    background_pixels = (1 - m).sum((1, 2, 3, 4)).clamp(min=1.0)
    b = background[:, :, None, None, None]
    target = (clean - b) * m
    recovered = ((denoised - b) * target).sum((1, 2, 3, 4)) / target.pow(2).sum((1, 2, 3, 4)).clamp(min=1e-12)
    zero = torch.zeros_like(recovered)
    return {
        "object_mse": torch.where(plain, (error * m).sum((1, 2, 3, 4)) / (object_pixels * channels), zero),
        "background_mse": torch.where(
            plain, (error * (1 - m)).sum((1, 2, 3, 4)) / (background_pixels * channels), zero
        ),
        "object_recovered": torch.where(plain, recovered, zero),
        "plain": plain,
    }


def masked_mean(values: Tensor, plain: Tensor) -> Tensor:
    """Mean of ``values`` (B,) over the plain clips; 0 when there is none (the caller counts them)."""
    weights = plain.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)
