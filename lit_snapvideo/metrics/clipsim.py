"""CLIPSIM: mean cosine similarity between the CLIP embedding of a prompt and of each frame of its video.

Following the usual definition (Wu et al., GODIVA; the paper's Tables 2, 3 and 5 report values near 0.25), the
score is the plain cosine similarity, not scaled by 100 and not clipped at 0, averaged over frames and videos.
The CLIP model is an open_clip architecture name plus a local checkpoint path (nothing is downloaded); a custom
architecture can be registered by passing its JSON config file (open_clip's ``model_configs`` format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.model import get_model_preprocess_cfg


class CLIPSim:
    """Frame-text CLIP similarity with a local open_clip checkpoint.

    scorer = CLIPSim("ViT-B-32", "open_clip_vit_b32.bin")
    scorer(videos, prompts)          # (B,) per-video CLIPSIM; videos (B, 3, T, H, W) in [-1, 1]
    """

    def __init__(
        self,
        model_name: str,
        checkpoint: str | os.PathLike,
        model_config: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ):
        checkpoint = Path(checkpoint)
        if model_config is not None:
            if not Path(model_config).is_file():
                raise FileNotFoundError(f"{model_config}: open_clip model config (JSON) not found")
            open_clip.add_model_config(model_config)
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"CLIPSIM: unknown open_clip model '{model_name}' (pass model_config=<json> for a custom one)"
            )
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: open_clip checkpoint for '{model_name}' not found")
        try:
            self.model = open_clip.create_model(
                model_name, pretrained=str(checkpoint), device=device, require_pretrained=True
            )
        except Exception as err:
            raise ValueError(
                f"{checkpoint}: could not load as open_clip '{model_name}' weights: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = get_model_preprocess_cfg(self.model)
        size = cfg["size"]
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
        self.device = device

    def _preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> CLIP input: shortest side resized (bicubic), centre crop, normalised."""
        frames = ((frames + 1) / 2).clamp(0, 1)
        h, w = frames.shape[-2:]
        scale = max(self.size[0] / h, self.size[1] / w)
        resized = (max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale)))
        frames = F.interpolate(frames, size=resized, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (resized[0] - self.size[0]) // 2, (resized[1] - self.size[1]) // 2
        frames = frames[..., top : top + self.size[0], left : left + self.size[1]]
        return (frames - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-video CLIPSIM ``(B,)``: mean over frames of cos(text(prompt_b), image(frame_{b,t}))."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"CLIPSIM: expected videos of shape (B, 3, T, H, W), got {tuple(videos.shape)}")
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"CLIPSIM: {videos.shape[0]} videos but {len(prompts)} prompts")
        b, t = videos.shape[0], videos.shape[2]
        frames = self._preprocess(rearrange(videos.to(self.device).float(), "b c t h w -> (b t) c h w"))
        image = F.normalize(self.model.encode_image(frames), dim=-1)
        text = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)), dim=-1)
        sims = (rearrange(image, "(b t) d -> b t d", b=b, t=t) * text[:, None]).sum(-1)
        return sims.mean(dim=1).cpu()


def clipsim(scorer: CLIPSim, batches) -> float:
    """Mean CLIPSIM over ``(videos, prompts)`` pairs from ``batches`` (an iterable)."""
    scores = [scorer(videos, prompts) for videos, prompts in batches]
    if not scores:
        raise ValueError("CLIPSIM: no videos to score")
    return float(torch.cat(scores).mean())
