"""Initialise a backbone from a stage-1 FIT checkpoint (``model.init_from``): the cascade's upsampler, or a FIT.

    report = init_from_stage1(model, "runs/fit/version_0/checkpoints/last.ckpt")   # {loaded, resized, new, dropped}

Its own file so that ``registry`` (which imports the backbone classes) and ``presets`` (which imports ``registry``)
can both be imported here at the top without a circle.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..safe_load import CheckpointError, load_checkpoint_file, require_finite, unreadable_reason
from .fit import FIT
from .presets import preset_kwargs
from .registry import backbone
from .upsampler import FITUpsampler

log = logging.getLogger(__name__)

NEW_PREFIXES = ("cond_embed.aug.",)  # what a stage-1 FIT does not have


def _stage1_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The backbone weights of a stage-1 FIT checkpoint (its EMA, the weights it samples with); CheckpointError for
    a file that is not one."""
    expected = "model.init_from takes a checkpoint written by lit-snapvideo fit"
    try:
        ckpt = load_checkpoint_file(path, "cpu", hint=expected)
    except CheckpointError:
        raise
    except Exception as err:  # cut short, random bytes, a JSON file: torch's error, cut to one line
        raise CheckpointError(
            f"model.init_from {path}: cannot be read as a checkpoint ({unreadable_reason(err)}); {expected}"
        ) from None
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"model.init_from {path}: not a lit-snapvideo checkpoint (no config or state_dict)")
    model = cfg.get("model") or {}
    try:
        kind, _ = preset_kwargs(model.get("preset"), model.get("overrides") or {})
    except ValueError as err:
        raise CheckpointError(f"model.init_from {path}: its model is unknown here ({err})") from None
    if not issubclass(backbone(kind).cls, FIT) or backbone(kind).upsampler:
        raise CheckpointError(
            f"model.init_from {path}: a '{kind}' checkpoint (model.preset={model.get('preset')}); the upsampler "
            "initialises from a stage-1 FIT checkpoint"
        )
    state = ckpt["state_dict"]
    prefix = "ema_backbone." if any(k.startswith("ema_backbone.") for k in state) else "backbone."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    require_finite(weights, path, "model.init_from")
    return weights


def init_from_stage1(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Initialise ``model`` (a FIT or FITUpsampler) from the stage-1 FIT checkpoint at ``path``, in place.

    Returns ``{"loaded": [...], "resized": [...], "new": [...], "dropped": [...]}`` (parameter names). Resized:
    ``pos_embed`` (trilinear to the new patch grid) and, for an upsampler, ``patch_embed.0.weight`` (the stage-1
    weights for the noisy input, zeros for the low-resolution channels). New: the augmentation token. Any other
    missing, extra or reshaped tensor raises CheckpointError naming them (strict but for these exceptions)."""
    source = _stage1_weights(path)
    target = model.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "resized": [], "new": [], "dropped": []}
    problems, values = [], {}
    for key, value in target.items():
        old = source.get(key)
        if old is None:
            if key.startswith(NEW_PREFIXES):
                report["new"].append(key)
            else:
                problems.append(f"{key} missing")
        elif old.shape == value.shape:
            values[key] = old
            report["loaded"].append(key)
        elif key == "pos_embed" and old.ndim == 4 and old.shape[-1] == value.shape[-1]:
            table = rearrange(old.float(), "t h w d -> 1 d t h w")
            table = F.interpolate(table, size=tuple(value.shape[:3]), mode="trilinear", align_corners=False)
            values[key] = rearrange(table, "1 d t h w -> t h w d").to(value.dtype)
            report["resized"].append(key)
        elif (
            key == "patch_embed.0.weight"
            and isinstance(model, FITUpsampler)
            and value.shape == (old.shape[0], 2 * old.shape[1])
        ):
            channels = model.video_channels
            volume = old.shape[1] // channels
            weight = value.new_zeros(value.shape[0], volume, 2 * channels)
            weight[:, :, :channels] = old.view(old.shape[0], volume, channels)  # patches are (pt ph pw c), c last
            values[key] = weight.view_as(value)
            report["resized"].append(key)
        else:
            problems.append(f"{key} {tuple(old.shape)} != {tuple(value.shape)}")
    report["dropped"] = [k for k in source if k not in target]
    problems += [f"{k} unexpected" for k in report["dropped"]]
    if problems:
        shown = ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else "")
        raise CheckpointError(
            f"model.init_from {path}: {len(problems)} stage-1 tensor(s) do not fit this model ({shown}); the "
            "upsampler must have the stage-1 preset's widths, depth and latent count"
        )
    with torch.no_grad():
        for key, value in values.items():
            target[key].copy_(value)
    log.info(
        "model.init_from %s: %d tensors loaded, resized %s, new %s",
        path,
        len(report["loaded"]),
        report["resized"],
        report["new"],
    )
    return report
