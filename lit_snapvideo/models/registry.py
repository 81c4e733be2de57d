"""Backbone kinds: one entry per kind holds all that the kit needs to know about it.

    spec = backbone("fit")                    # Backbone(cls=FIT, optimizer=..., self_conditioning=True, ...)
    spec.train_flops(forward_flops)           # FLOPs of a training step per video

Nothing outside this file branches on a kind's name: ``models.presets`` builds ``spec.cls``, ``module`` takes the
optimiser and self-conditioning, ``train`` and ``bench`` count FLOPs, ``bench`` resizes and pads clips here.

A backbone is an ``nn.Module`` whose constructor takes ``text_dim`` (the width of the text embeddings) and
``grad_checkpointing`` besides its own arguments (each with a default), and whose
``forward(x (B, 3, T, H, W), c_noise (B,), cond, self_cond=None) -> (F (B, 3, T, H, W), state)``; ``cond`` holds
``text`` (B, L, text_dim), ``text_mask`` (B, L), ``fps`` (B,) and ``orig_size`` (B, 2); ``state`` is what the next
call receives as ``self_cond`` (FIT's latents), or None. Adding one: its model file and one entry in
:data:`BACKBONES`; ``model.preset=<kind>`` trains it at its defaults (README "Add a backbone").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from .. import paper
from .dit import DiT
from .fit import FIT
from .unet3d import UNet3D
from .upsampler import FITUpsampler

Size = tuple[int, int]


def conditioning_text_dim(model: nn.Module) -> int:
    """The text width of a backbone that embeds its conditioning with ``layers.ConditioningEmbedding``."""
    return model.cond_embed.text[1].in_features


def text_dim_attribute(model: nn.Module) -> int:
    """The text width a backbone keeps as ``model.text_dim``."""
    return model.text_dim


def any_size(arguments: dict) -> Size:
    """A backbone that takes any frame size."""
    return (1, 1)


def same_arguments(arguments: dict, frames: int, size: Size) -> dict:
    """A backbone that takes any clip with the arguments it has."""
    return {}


@dataclass(frozen=True)
class Backbone:
    """What the kit knows about one kind of backbone.

    Args:
        cls: the ``nn.Module`` class (see the module docstring for its interface).
        optimizer: the paper's optimiser for it, ``{"name": "adam" | "adamw" | "lamb", "lr", "betas"}``;
            ``optim.name/lr/betas`` set in a config override it.
        self_conditioning: ``forward`` returns a state that is fed back as ``self_cond``: training adds a no-grad
            first pass (pix2seq), sampling carries the state from one evaluation to the next.
        text_dim: reads the text width of a built backbone (FLOP counting feeds it example text embeddings).
        size_multiple: ``(H, W)`` that a frame size must be a multiple of, from the constructor arguments.
        clip_overrides: constructor overrides for another clip ``(frames, (H, W))``, from the constructor arguments.
        upsampler: a cascade stage conditioned on a low-resolution video: ``cond`` also holds ``low_res``
            (B, 3, T, H / scale, W / scale) and ``aug_sigma`` (B,), the module noise-augments ``batch["low_res"]``,
            the instance has ``scale``; its clip is its own ``input_size`` in the benchmark.
    """

    cls: type[nn.Module]
    optimizer: Mapping[str, Any]
    self_conditioning: bool = False
    text_dim: Callable[[nn.Module], int] = text_dim_attribute
    size_multiple: Callable[[dict], Size] = any_size
    clip_overrides: Callable[[dict, int, Size], dict] = same_arguments
    upsampler: bool = False

    def train_flops(self, forward_flops: float, self_cond_prob: float = 1.0) -> float:
        """FLOPs of a training step per video from those of a forward pass: forward + backward ~ 3 forward passes,
        plus the no-grad self-conditioning pass when it runs."""
        return forward_flops * (3 + (1 if self.self_conditioning and self_cond_prob > 0 else 0))


def _fit_tile(arguments: dict) -> Size:
    """FIT's group tile in pixels (patch x group: 20 x 16 px for the paper layout, why the paper pads 36 -> 40)."""
    return tuple(p * g for p, g in zip(arguments["patch_size"][1:], arguments["group_size"][1:]))


def _fit_clip(arguments: dict, frames: int, size: Size) -> dict:
    """FIT learns its positional table at ``input_size`` and groups at most all frames."""
    group = tuple(arguments["group_size"])
    return {"input_size": (frames, *size), "group_size": (min(frames, group[0]), *group[1:])}


def _upsampler_tile(arguments: dict) -> Size:
    """The FIT tile, and a multiple of the upsampling scale (the low-resolution frame is H / scale x W / scale)."""
    return tuple(math.lcm(t, arguments["scale"]) for t in _fit_tile(arguments))


def _patch_tile(arguments: dict) -> Size:
    """A DiT's patch in pixels (H, W)."""
    return tuple(arguments["patch_size"][1:])


def _learned_table_clip(arguments: dict, frames: int, size: Size) -> dict:
    """A DiT learns its positional table at ``input_size``."""
    return {"input_size": (frames, *size)}


def _unet_tile(arguments: dict) -> Size:
    """The U-Net halves H and W at each of its levels but the last."""
    return (2 ** (len(arguments["channel_mult"]) - 1),) * 2


BACKBONES: dict[str, Backbone] = {
    "fit": Backbone(
        FIT,
        paper.TABLE9["fit"],
        self_conditioning=True,
        text_dim=conditioning_text_dim,
        size_multiple=_fit_tile,
        clip_overrides=_fit_clip,
    ),
    # the cascade's second stage (models/upsampler.py); Table 9: the same LAMB recipe as FIT
    "fit_upsampler": Backbone(
        FITUpsampler,
        paper.TABLE9["fit"],
        self_conditioning=True,
        text_dim=conditioning_text_dim,
        size_multiple=_upsampler_tile,
        clip_overrides=_fit_clip,
        upsampler=True,
    ),
    # the control transformer (models/dit.py); not in the paper: DiT's own recipe (AdamW, 1e-4, no weight decay)
    "dit": Backbone(
        DiT,
        {"name": "adamw", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0},
        text_dim=conditioning_text_dim,
        size_multiple=_patch_tile,
        clip_overrides=_learned_table_clip,
    ),
    # Table 9's "Adam" with decoupled weight decay: torch's L2 decay zeroed the U-Net's text attention (README)
    "unet": Backbone(
        UNet3D, {**paper.TABLE9["unet"], "name": "adamw"}, text_dim=conditioning_text_dim, size_multiple=_unet_tile
    ),
}


def backbone(kind: str) -> Backbone:
    """The entry of ``kind``; ValueError naming the known kinds."""
    if kind not in BACKBONES:
        raise ValueError(
            f"unknown backbone kind '{kind}'; known kinds: {', '.join(BACKBONES)} (lit_snapvideo/models/registry.py)"
        )
    return BACKBONES[kind]


def kind_of(model: nn.Module) -> str:
    """The kind whose class built ``model``; ValueError naming the known kinds."""
    for kind, spec in BACKBONES.items():  # the exact class first: an upsampler is also a FIT
        if type(model) is spec.cls:
            return kind
    for kind, spec in BACKBONES.items():
        if isinstance(model, spec.cls):
            return kind
    raise ValueError(f"{type(model).__name__} is not a registered backbone; known kinds: {', '.join(BACKBONES)}")
