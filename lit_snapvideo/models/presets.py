"""Named backbone sizes: the paper's four (Tables 7 and 8) and small ones for CPU ablations and tests.

    model = build_backbone("fit_small", text_dim=512)              # nn.Module: forward(x, c_noise, cond, self_cond)
    count_parameters("fit_3_9b", text_dim=1024)                     # on the meta device, nothing allocated
    forward_flops("unet_85m", frames=16, size=(40, 64))             # FLOPs of one forward pass, per video

Sizes at 16 x 40 x 64 (``lit-snapvideo models`` prints this table). Parameters exclude the text encoder;
the paper presets take T5-11B's 1024-wide embeddings projected to their conditioning width, the CPU presets the
256-wide "tiny" open_clip tower. FLOPs: one forward pass of one video with 16 text tokens, torch's
FlopCounterMode on the meta device (a multiply-add counts 2).

    preset      paper size   parameters   forward GFLOPs/video
    unet_85m         85M        85.8M          690
    unet_284m       284M       281.1M         1863
    fit_500m        500M       500.6M          695
    fit_3_9b        3.9B      4013.0M         6432
    fit_small          -         2.1M          1.50
    unet_small         -         0.5M          1.34
    fit_mini           -         1.9M          0.53  (at its own 8 x 24 x 40 clip; n/a at 16 x 40 x 64)
    unet_mini          -         0.5M          0.31  (at 8 x 24 x 40)
    fit_tiny, unet_tiny: unit-test sizes (0.4M / 0.1M; 8 x 16 x 16 clips, a training step in ~50 / ~150 ms).

The cascade's second stage (models/upsampler.py), each at its own clip (the low-resolution input x scale):
    fit_3_9b_upsampler  3.9B      4162.7M        28516  (16 x 288 x 512 from 16 x 36 x 64: 147,456 patches)
    fit_up_mini            -         2.1M         0.87  (8 x 48 x 80 from fit_mini's 8 x 24 x 40)
    fit_up_tiny: the unit tests' (8 x 32 x 64 from fit_tiny's 8 x 16 x 32).

FIT-500M needs 2.7x fewer FLOPs per video than U-Net-284M; the paper measures 3.3x faster training (Table 2).

The small presets are the CPU pair at the paper's clip (``make bench``): the same architecture families, narrow and
shallow, at matched forward FLOPs (1.3-1.5 GFLOPs per video).
* fit_small keeps the paper's layout: patch 1x4x4, groups 16x5x4 patches (8 groups), 256 latents (32 per group),
  2 blocks x 2 global layers; the patch side narrow (64), the latent side wider (128).
* unet_small keeps Table 7's 4-level ADM shape at 8 base channels (mult 1,1,2,4; one ResBlock per level), with
  attention at downsample factors 4 and 8.
* Dropout is 0 in both (0.1 in the paper presets): on this CPU the dropout masks cost as much as the matmuls.
  ``model.overrides.dropout=0.1`` turns it back on.

The mini presets are the CPU ablation pair (experiments/ablation/), on 8-frame 24x40 clips.
* fit_mini is fit_small's layout at that clip (groups 8x3x5 patches, 128 latents) plus two of FIT's small-scale
  options, ``patch_conv`` and ``sigma_modulation`` (results/fit_cpu_screen.md).
* unet_mini is unet_small plus attention at downsample factor 2 and ``pooled_text`` (Imagen).
Why each size and option, with the measurements: docs/decisions.md ("The CPU presets").
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import paper
from .registry import BACKBONES, backbone, kind_of

PAPER_TEXT_DIM = paper.T5_TEXT_DIM

# The small CPU pair at the paper's clip (~1.3-1.5 forward GFLOPs per 16x40x64 video each; `make bench`);
# dropout off, see the module docstring
_FIT_SMALL = dict(
    kind="fit",
    patch_size=(1, 4, 4),
    group_size=(16, 5, 4),
    patch_dim=64,
    latent_dim=128,
    num_latents=256,
    cond_dim=128,
    num_blocks=2,
    global_layers=2,
    patch_head_dim=32,
    latent_head_dim=32,
    dropout=0.0,
)
_FIT_TINY = dict(  # unit-test sizes: 8 x 16 x 16 videos
    kind="fit",
    input_size=(8, 16, 16),
    patch_size=(1, 4, 4),
    group_size=(8, 2, 2),
    patch_dim=32,
    latent_dim=64,
    num_latents=80,
    cond_dim=32,
    num_blocks=2,
    global_layers=1,
    patch_head_dim=16,
    latent_head_dim=16,
    dropout=0.0,
)
_UNET_SMALL = dict(
    kind="unet",
    base_channels=8,
    channel_mult=(1, 1, 2, 4),
    num_res_blocks=1,
    attention_resolutions=(16, 8),
    head_channels=8,
    cond_dim=128,
    dropout=0.0,
    norm_groups=4,
)

PRESETS: dict[str, dict[str, Any]] = {
    # the paper's four (Tables 7 and 8)
    "unet_85m": dict(kind="unet", **paper.TABLE7["unet_85m"]),
    "unet_284m": dict(kind="unet", **paper.TABLE7["unet_284m"]),
    "fit_500m": dict(kind="fit", **paper.TABLE8["fit_500m"]),
    "fit_3_9b": dict(kind="fit", **paper.TABLE8["fit_3_9b"]),
    # Table 8's third column: the cascade's second stage at 16 x 288 x 512 (models/upsampler.py)
    "fit_3_9b_upsampler": dict(kind="fit_upsampler", **paper.TABLE8["fit_3_9b_upsampler"]),
    "fit_small": _FIT_SMALL,
    "unet_small": _UNET_SMALL,
    # the CPU ablation pair at 8 x 24 x 40 (experiments/ablation/; see the module docstring): the small pair's
    # layers with FIT's grid, groups and latents resized to that clip, and the U-Net's extra attention level and
    # pooled text
    # plus two of FIT's small-scale options (models/fit.py): the patch-grid convolution and adaLN sigma modulation
    # of the patch side (results/fit_cpu_screen.md)
    "fit_mini": {
        **_FIT_SMALL,
        "input_size": (8, 24, 40),
        "group_size": (8, 3, 5),
        "num_latents": 128,
        "patch_conv": True,
        "sigma_modulation": True,
    },
    # the CPU cascade's second stage (experiments/ablation/upsampler.yaml): fit_mini's widths, depth, latents and options
    # (so a fit_mini checkpoint initialises it), upsampling fit_mini's 8 x 24 x 40 clips x2 to 8 x 48 x 80: 4x the
    # patches (1,920) in 8 groups of 8 x 6 x 5 (16 latents each); why this size: docs/decisions.md "The upsampler"
    "fit_up_mini": {
        **_FIT_SMALL,
        "kind": "fit_upsampler",
        "scale": 2,
        "input_size": (8, 48, 80),
        "group_size": (8, 6, 5),
        "num_latents": 128,
        "patch_conv": True,
        "sigma_modulation": True,
    },
    "unet_mini": {**_UNET_SMALL, "attention_resolutions": (32, 16, 8), "pooled_text": True},
    # the control (models/dit.py): fit_mini's patches and conditioning width at about its forward FLOPs, every patch
    # attending to every other one (480 tokens at 8 x 24 x 40)
    "dit_mini": dict(kind="dit", input_size=(8, 24, 40), patch_size=(1, 4, 4), dim=64, depth=5, head_dim=32),
    "dit_tiny": dict(
        kind="dit", input_size=(8, 16, 16), patch_size=(1, 4, 4), dim=32, depth=2, head_dim=16, cond_dim=32
    ),
    "fit_tiny": _FIT_TINY,
    # the unit tests' upsampler: fit_tiny's widths (a fit_tiny checkpoint initialises it), 8 x 16 x 32 -> 8 x 32 x 64
    "fit_up_tiny": {
        **_FIT_TINY,
        "kind": "fit_upsampler",
        "scale": 2,
        "input_size": (8, 32, 64),
        "group_size": (8, 4, 4),
    },
    "unet_tiny": dict(
        kind="unet",
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(32,),
        head_channels=8,
        cond_dim=32,
        dropout=0.0,
        norm_groups=4,
    ),
}

# the size each is named after: Table 2's four and Table 8's upsampler
PAPER_PRESETS = {**{row["preset"]: row["params"] for row in paper.TABLE2}, **paper.UPSAMPLER_PARAMS}
ABLATION_TEXT_DIM = 256  # width of the "tiny" open_clip text tower the CPU ablations use (models/text.py)


def reference_text_dim(preset: str) -> int:
    """Text width a preset is documented with: T5-11B's 1024 for the paper's sizes (the upsampler's too), 256 for the
    CPU ones."""
    return PAPER_TEXT_DIM if preset in PAPER_PRESETS else ABLATION_TEXT_DIM


def preset_kwargs(preset: str, overrides: dict | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, constructor arguments) of ``preset``: the class defaults, then the preset's, then ``overrides``.

    ``preset`` is a name of :data:`PRESETS` or a backbone kind of ``models/registry.py`` (its class defaults).
    ValueError for unknown names and keys."""
    if preset in PRESETS:
        kwargs = dict(PRESETS[preset])
        kind = kwargs.pop("kind")
    elif preset in BACKBONES:
        kind, kwargs = preset, {}
    else:
        raise ValueError(
            f"unknown backbone preset '{preset}'; valid presets: {', '.join(PRESETS)}; or a backbone "
            f"kind at its defaults: {', '.join(BACKBONES)}"
        )
    cls = backbone(kind).cls
    parameters = {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if name not in ("text_dim", "grad_checkpointing") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(parameters))
    if unknown:
        raise ValueError(
            f"model.overrides {unknown} are not {cls.__name__} arguments; valid: {', '.join(sorted(parameters))}"
        )
    defaults = {name: p.default for name, p in parameters.items() if p.default is not p.empty}
    return kind, {**defaults, **kwargs, **overrides}


def build_backbone(
    preset: str,
    text_dim: int,
    overrides: dict | None = None,
    grad_checkpointing: bool = False,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The backbone named ``preset`` (see PRESETS), taking text embeddings of width ``text_dim``."""
    kind, kwargs = preset_kwargs(preset, overrides)
    with torch.device(device or "cpu"):
        return backbone(kind).cls(text_dim=text_dim, grad_checkpointing=grad_checkpointing, **kwargs)


def count_parameters(preset: str | nn.Module, text_dim: int = PAPER_TEXT_DIM, overrides: dict | None = None) -> int:
    """Trainable parameters of a preset (built on the meta device: no memory allocated) or of a module."""
    model = preset if isinstance(preset, nn.Module) else build_backbone(preset, text_dim, overrides, device="meta")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def example_inputs(
    batch: int = 1,
    frames: int = 16,
    size: tuple[int, int] = (40, 64),
    text_len: int = 16,
    text_dim: int = PAPER_TEXT_DIM,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    model: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Random (x (B,3,T,H,W), c_noise (B,), cond) for a backbone; every other sample is a still image. With
    ``model`` an upsampler (models/registry.py), ``cond`` also holds its low-resolution video and noise level."""

    def randn(*shape):
        if torch.device(device or "cpu").type == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=generator, device=device)

    fps = torch.full((batch,), 8.0, device=device)
    fps[1::2] = float("inf")
    cond = {
        "text": randn(batch, text_len, text_dim),
        "text_mask": torch.ones(batch, text_len, dtype=torch.bool, device=device),
        "fps": fps,
        "orig_size": torch.tensor([[36.0, 64.0]], device=device).expand(batch, 2),
    }
    if model is not None and is_upsampler(model):
        cond["low_res"] = randn(batch, 3, frames, *(max(1, s // model.scale) for s in size))
        cond["aug_sigma"] = torch.full((batch,), 0.1, device=device)
    return randn(batch, 3, frames, *size), randn(batch), cond


def is_upsampler(model: nn.Module) -> bool:
    """Whether ``model`` is of a registered upsampler kind (an unregistered module is not)."""
    try:
        return backbone(kind_of(model)).upsampler
    except ValueError:
        return False


def forward_flops(
    model: str | nn.Module,
    frames: int = 16,
    size: tuple[int, int] = (40, 64),
    text_len: int = 16,
    text_dim: int | None = None,
    overrides: dict | None = None,
) -> int:
    """FLOPs of one forward pass per video (batch 1), counted by FlopCounterMode on the meta device.

    ``model``: a preset name (``text_dim`` defaults to the paper's 1024) or a module (copied to meta)."""
    if isinstance(model, str):
        text_dim = text_dim or PAPER_TEXT_DIM
        model = build_backbone(model, text_dim, overrides, device="meta")
    else:
        # a CPU SDPA kernel is invisible to the counter; on meta SDPA decomposes into counted matmuls
        text_dim = text_dim or backbone(kind_of(model)).text_dim(model)
        model = copy.deepcopy(model).to("meta")
    x, c_noise, cond = example_inputs(1, frames, size, text_len, text_dim, device="meta", model=model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, c_noise, cond)
    return counter.get_total_flops()
