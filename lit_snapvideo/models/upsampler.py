"""The cascade's second stage: a FIT upsampler conditioned on the low-resolution video (paper §3.3, Table 8).

    model = FITUpsampler(text_dim, scale=8, input_size=(16, 288, 512), group_size=(16, 18, 16), ...)
    F, latents = model(x (B, 3, T, H, W), c_noise (B,), cond | {"low_res": (B, 3, T, H/8, W/8), "aug_sigma": (B,)})

The FIT of ``models/fit.py`` unchanged but for its stem and one conditioning token (choices the paper leaves open, §9
item 5; docs/decisions.md "The upsampler"):
* The low-resolution video (already noise-augmented by the module, in data space) is upsampled bicubically to the
  high resolution, divided by sqrt(1 + aug_sigma^2) (unit variance, as c_in gives the noisy input), and concatenated
  channel-wise with the noisy input before patchifying: the patch embedding reads 6 channels. Every patch then sees
  its own low-resolution content at its own position (the most direct conditioning, as in SR3, Imagen and Imagen
  Video's super-resolution stages); cross-attention to a separate low-resolution token set would cost a read per
  block and pass the content through the few latents, which at 147,456 patches is the bottleneck.
* The augmentation level ``aug_sigma`` is one more conditioning token (sinusoids of aug_sigma x 1000, an MLP whose
  last layer starts at zero) beside sigma, fps and size, and joins the adaLN vector the same way. The module draws it
  per example in training (noise conditioning augmentation, Imagen); at sampling time it is a setting.
Nothing here knows EDM: the noise level of the low-resolution input is the module's (``module.py``), and so is the
option to diffuse the residual over the same bicubic upsampling (``upsampler.residual_scale``).

Initialisation from a stage-1 FIT checkpoint (the paper fine-tunes the upsampler from the 3.9B's weights): every
tensor of the same name and shape carries over (the latent embeddings among them); the positional table is resized
trilinearly to the new patch grid; the patch embedding keeps its weights for the noisy input and gets zero weights
for the low-resolution channels (the upsampler starts as the stage-1 denoiser); the augmentation token is new.
Anything else that differs is an error naming the keys, and the file loads through ``safe_load`` like every other
(``models/init_from.py``).
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .fit import FIT
from .layers import ConditioningEmbedding, ScalarEmbedding

log = logging.getLogger(__name__)

AUG_SCALE = 1000.0  # aug_sigma in [0, ~1] -> sinusoid arguments in [0, ~1000] (pix2seq's scaling of t in [0, 1])


def bicubic_upsample(video: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, T, h, w) -> (B, C, T, *size), each frame bicubically (no clamping; the bicubic baseline clamps)."""
    b = video.shape[0]
    frames = rearrange(video, "b c t h w -> (b t) c h w")
    up = F.interpolate(frames.float(), size=tuple(size), mode="bicubic", align_corners=False)
    return rearrange(up, "(b t) c h w -> b c t h w", b=b).to(video.dtype)


class AugmentedConditioning(ConditioningEmbedding):
    """:class:`ConditioningEmbedding` plus the augmentation-level token: tokens [sigma, fps, size, aug, text...];
    the vector (adaLN) adds the aug token. The token's MLP ends at zero, so a stage-1 model's behaviour is kept at
    initialisation."""

    def __init__(self, dim: int, text_dim: int, pooled_text: bool = False):
        super().__init__(dim, text_dim, pooled_text)
        self.aug = ScalarEmbedding(dim, scale=AUG_SCALE)
        nn.init.zeros_(self.aug.mlp[-1].weight)
        nn.init.zeros_(self.aug.mlp[-1].bias)

    def forward(self, c_noise: Tensor, cond: dict) -> tuple[Tensor, Tensor, Tensor]:
        tokens, mask, vector = super().forward(c_noise, cond)
        aug = self.aug(cond["aug_sigma"].float()).to(tokens.dtype)  # (B, dim)
        tokens = torch.cat([tokens[:, :3], aug[:, None], tokens[:, 3:]], dim=1)
        mask = torch.cat([mask[:, :3], mask.new_ones(mask.shape[0], 1), mask[:, 3:]], dim=1)
        return tokens, mask, vector + aug


class FITUpsampler(FIT):
    """FIT taking ``cond["low_res"]`` (B, 3, T, H/scale, W/scale) and ``cond["aug_sigma"]`` (B,) besides FIT's
    conditioning; see the module docstring. Arguments: FIT's (``in_channels`` are the video's channels, the output's
    too) plus ``scale``, the spatial upsampling factor (8: 36x64 -> 288x512 in the paper)."""

    def __init__(self, *args, scale: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        if scale < 1:
            raise ValueError(f"FITUpsampler: scale must be an integer >= 1, got {scale}")
        self.scale = int(scale)
        self.video_channels = self.in_channels
        self.in_channels = 2 * self.video_channels  # noisy input + upsampled low-res, concatenated
        stem = self.patch_embed[0]
        self.patch_embed[0] = nn.Linear(2 * stem.in_features, stem.out_features)
        cond_dim, text_dim = self.cond_embed.sigma.mlp[-1].out_features, self.cond_embed.text[1].in_features
        self.cond_embed = AugmentedConditioning(cond_dim, text_dim, self.cond_embed.pooled_text is not None)

    def low_res_size(self, h: int, w: int) -> tuple[int, int]:
        """The low-resolution frame size for high-resolution frames (h, w); ValueError when ``scale`` does not
        divide them."""
        if h % self.scale or w % self.scale:
            raise ValueError(f"FITUpsampler: frame size {(h, w)} is not divisible by the upsampling scale {self.scale}")
        return h // self.scale, w // self.scale

    def forward(self, x: Tensor, c_noise: Tensor, cond: dict, self_cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 5 or x.shape[1] != self.video_channels:
            raise ValueError(
                f"FITUpsampler: expected x of shape (B, {self.video_channels}, T, H, W), got {tuple(x.shape)}"
            )
        missing = [k for k in ("low_res", "aug_sigma") if k not in cond]
        if missing:
            raise ValueError(f"FITUpsampler: cond lacks {missing} (the low-resolution video and its noise level)")
        low, aug = cond["low_res"], cond["aug_sigma"]
        b, _, t, h, w = x.shape
        expected = (b, self.video_channels, t, *self.low_res_size(h, w))
        if tuple(low.shape) != expected:
            raise ValueError(
                f"FITUpsampler: cond['low_res'] has shape {tuple(low.shape)}, expected {expected} "
                f"(x {tuple(x.shape)} / scale {self.scale})"
            )
        if tuple(aug.shape) != (b,):
            raise ValueError(f"FITUpsampler: cond['aug_sigma'] has shape {tuple(aug.shape)}, expected ({b},)")
        up = bicubic_upsample(low, (h, w)) / torch.sqrt(1 + aug.float() ** 2).view(-1, 1, 1, 1, 1).to(low.dtype)
        return super().forward(torch.cat([x, up.to(x.dtype)], dim=1), c_noise, cond, self_cond)


_FIT_SIGNATURE = inspect.signature(FIT)
# preset_kwargs and the config's overrides read a class's arguments from its signature: FIT's plus ``scale``
FITUpsampler.__signature__ = _FIT_SIGNATURE.replace(
    parameters=[
        *_FIT_SIGNATURE.parameters.values(),
        inspect.Parameter("scale", inspect.Parameter.KEYWORD_ONLY, default=8, annotation=int),
    ]
)


def psnr(video: Tensor, reference: Tensor) -> Tensor:
    """(B,) PSNR in dB of videos in [-1, 1] against the reference, over all pixels and frames (peak 1 in [0, 1])."""
    mse = ((video.float() - reference.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
