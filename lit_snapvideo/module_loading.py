"""Rebuilding a trained module from a checkpoint written by ``lit-snapvideo fit``: :func:`load_module` (sample,
evaluate, sweep, gpu-check). The file is data, not a plan: it loads weights-only, its tensor shapes are compared
with its config on the meta device before anything real is built, and the paths a loaded module writes to are the
reader's, never the checkpoint's.

    module = load_module("runs/fit/version_0/checkpoints/last.ckpt")   # FITModule / UNetModule, EMA included
"""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import ExperimentConfig
from .models.presets import build_backbone
from .models.text import tower_width
from .module import EDMVideoModule, module_for, state_dict_mismatch
from .safe_load import CheckpointError, load_checkpoint_file, require_finite


# where a loaded module may write: the reader's choice (its command line, the kit's defaults), never the paths a
# checkpoint's config stored (a checkpoint is data, not a plan)
READER_PATHS = ("text.cache_dir", "logging.root")


class _TextWidth(nn.Module):
    """Stands in for the frozen text tower when only shapes are checked: the tower is never stored, its width is
    all the backbone needs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def meta_module(cfg: DictConfig) -> EDMVideoModule:
    """The module ``cfg`` describes, built on the meta device: every stored tensor's shape and no memory, so a
    config that asks for a huge model costs nothing before its weights are compared."""
    text = _TextWidth(tower_width(cfg.text.encoder))
    overrides = OmegaConf.to_container(cfg.model.overrides, resolve=True)
    backbone = build_backbone(cfg.model.preset, text_dim=text.dim, overrides=overrides, device="meta")
    with torch.device("meta"):
        return module_for(cfg)(cfg, backbone=backbone, text_encoder=text)


def load_module(
    checkpoint: str, map_location: str | torch.device = "cpu", text_cache_dir: Optional[str] = None
) -> EDMVideoModule:
    """Rebuild the right face from a Lightning checkpoint written by ``lit-snapvideo fit``.

    Loads safely (see :func:`load_checkpoint_file`) and strictly: every backbone and EMA tensor must be in the
    file with its shape, so a foreign or partial file is an error, never random weights. The shapes are compared
    on the meta device before anything is built. The paths the module writes to (:data:`READER_PATHS`) are the
    caller's: ``text_cache_dir`` (default: the kit's ``.cache/text_embeddings``), not the checkpoint's."""
    torch.set_flush_denormal(True)  # denormals made CPU steps ~2x slower (see train.set_cpu_threads)
    ckpt = load_checkpoint_file(checkpoint, map_location)
    if not isinstance(ckpt, dict) or "cfg" not in (ckpt.get("hyper_parameters") or {}):
        raise CheckpointError(f"{checkpoint}: not a lit-snapvideo checkpoint (no 'cfg' in its hyper_parameters)")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{checkpoint}: not a lit-snapvideo checkpoint (no 'state_dict')")
    require_finite(ckpt["state_dict"], checkpoint)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
    defaults = OmegaConf.structured(ExperimentConfig)
    for key in READER_PATHS:
        OmegaConf.update(cfg, key, OmegaConf.select(defaults, key))
    if text_cache_dir is not None:
        cfg.text.cache_dir = text_cache_dir
    problem = state_dict_mismatch(meta_module(cfg), ckpt["state_dict"])
    if problem:
        raise CheckpointError(
            f"{checkpoint}: the weights do not fit its config (model.preset={cfg.model.preset}): {problem}"
        )
    module = module_for(cfg)(cfg)
    module.load_state_dict(ckpt["state_dict"])
    return module
