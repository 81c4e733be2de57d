"""The two-stage cascade (paper §3.3): stage-1 samples upsampled by a FIT upsampler, and the upsampler's own measure.

    check_cascade(stage1, upsampler)          # lit-snapvideo sample CKPT --upsampler UP_CKPT: the cascade
    result = compare_with_bicubic(upsampler, num_videos=16, steps=[1, 40], aug_sigmas=[0.0, 0.1])  # PSNR vs real
    comparison_png("docs/upsampler.png", result["videos"])   # rows: low-res | bicubic | upsampler | real

The cascade samples in ``lit-snapvideo sample --upsampler`` and the comparison here, both through
``generation.generate_videos`` (the one generation path). The measure: PSNR at the high
resolution against the real clips of the upsampler's validation split, whose low-resolution versions (the data set's
own downsampling, ``data.low_res_size``) are the input; the baseline is a bicubic upsampling of the same input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .data.video import to_uint8
from .generation import generate_videos
from .models.upsampler import bicubic_upsample, psnr


def check_cascade(stage1: Any, upsampler: Any) -> None:
    """ValueError unless ``upsampler`` upsamples what ``stage1`` makes (frames and data.size = its low-res size)."""
    if not upsampler.spec.upsampler:
        raise ValueError(f"--upsampler: model.preset={upsampler.cfg.model.preset} is not an upsampler")
    if stage1.spec.upsampler:
        raise ValueError(f"the first stage (model.preset={stage1.cfg.model.preset}) is itself an upsampler")
    d1, d2 = stage1.cfg.data, upsampler.cfg.data
    if d1.frames != d2.frames or list(d1.size) != list(d2.low_res_size):
        raise ValueError(
            f"the upsampler takes {d2.frames} x {list(d2.low_res_size)} clips (its data.frames x data.low_res_size), "
            f"stage 1 makes {d1.frames} x {list(d1.size)} (data.frames x data.size)"
        )


def validation_pairs(upsampler: Any, n: int) -> tuple[list[str], Tensor, Tensor]:
    """(captions, low_res (n, 3, T, h, w), real (n, 3, T, H, W)) of the first ``n`` videos (no stills) of the
    upsampler's validation split, read as in training."""
    from .data.datasets import ClipDataset, load_records

    d = upsampler.cfg.data
    _, val = load_records(d.root, d.manifest)
    val = [r for r in val if not r.is_image][:n]
    if not val:
        raise ValueError(f"{d.root}: no validation videos to compare the upsampler on")
    dataset = ClipDataset(val, d.frames, list(d.size), fps_choices=[d.val_fps], low_res_size=list(d.low_res_size))
    examples = [dataset[i] for i in range(len(dataset))]
    return (
        [e["caption"] for e in examples],
        torch.stack([e["low_res"] for e in examples]),
        torch.stack([e["video"] for e in examples]),
    )


def compare_with_bicubic(
    upsampler: Any,
    num_videos: int = 16,
    steps: int | Sequence[int] = 40,
    cfg_scale: float = 1.0,
    aug_sigmas: Sequence[float] = (0.0,),
    seed: int = 0,
    batch_size: int = 8,
) -> dict:
    """PSNR (dB, mean over videos) at the high resolution against the real clips: bicubic upsampling of the
    low-resolution input, and the upsampler with each number of Heun ``steps`` at each level in ``aug_sigmas``
    (the paper picks its inference level by search; 1 step is one denoiser call from pure noise, the network's
    estimate of the mean video given the input). Returns {"bicubic_psnr", "upsampler_psnr": {steps: {level: dB}},
    "per_video": ..., "videos": {...} (the first setting's samples and the inputs, for :func:`comparison_png`)}."""
    step_counts = [steps] if isinstance(steps, int) else list(steps)
    prompts, low, real = validation_pairs(upsampler, num_videos)
    bicubic = bicubic_upsample(low, tuple(real.shape[-2:])).clamp(-1, 1)
    result: dict = {
        "num_videos": len(prompts),
        "steps": step_counts,
        "cfg_scale": cfg_scale,
        "bicubic_psnr": float(psnr(bicubic, real).mean()),
        "upsampler_psnr": {},
        "per_video": {"bicubic": psnr(bicubic, real).tolist()},
    }
    for n in step_counts:
        result["upsampler_psnr"][n] = {}
        for level in aug_sigmas:
            up = generate_videos(upsampler, prompts, n, cfg_scale, seed, batch_size, low_res=low, aug_sigma=level)
            values = psnr(up, real)
            result["upsampler_psnr"][n][float(level)] = float(values.mean())
            result["per_video"][f"upsampler_steps_{n}_aug_{level:g}"] = values.tolist()
            if "videos" not in result:
                result["videos"] = {"low_res": low, "bicubic": bicubic, "upsampler": up, "real": real}
                result["videos"].update(prompts=prompts, label=f"upsampler, {n} step{'s' * (n > 1)}")
    return result


def comparison_png(
    path: str | Path, videos: dict, rows: int = 4, frames: Sequence[int] = (0, -1), scale: int = 2
) -> Path:
    """A PNG with one row per video and frame: low-res (nearest-upscaled to the high size) | bicubic | upsampler |
    real, ``scale``x nearest, with a header naming the columns."""
    low, bicubic, up, real = (videos[k] for k in ("low_res", "bicubic", "upsampler", "real"))
    h, w = real.shape[-2:]
    nearest = low.repeat_interleave(h // low.shape[-2], dim=-2).repeat_interleave(w // low.shape[-1], dim=-1)
    columns = [nearest, bicubic, up, real]
    names = ["low-res input", "bicubic", videos.get("label", "upsampler"), "real"]
    n = min(rows, real.shape[0])
    border, header = 2, 14
    tiles = []
    for i in range(n):
        for f in frames:
            row = [to_uint8(c[i : i + 1, :, [f]])[0, 0] for c in columns]  # (H, W, 3) each
            tiles.append(row)
    width = len(columns) * (w + border) + border
    height = len(tiles) * (h + border) + border
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = border + r * (h + border), border + c * (w + border)
            canvas[y : y + h, x : x + w] = tile
    image = Image.fromarray(canvas).resize((width * scale, height * scale), Image.NEAREST)
    full = Image.new("RGB", (image.width, image.height + header), "white")
    full.paste(image, (0, header))
    draw = ImageDraw.Draw(full)
    for c, name in enumerate(names):
        draw.text((scale * (border + c * (w + border)) + 2, 1), name, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full.save(path)
    return path


def summary_markdown(result: dict, checkpoint: str, command: str, throughput: Optional[str] = None) -> str:
    """The comparison as a short markdown table (results/upsampler.md)."""
    lines = [
        "# Upsampler against bicubic (PSNR at the high resolution vs the real clips)",
        "",
        f"Checkpoint `{checkpoint}`; {result['num_videos']} validation videos; Heun sampler, guidance "
        f"{result['cfg_scale']:g}. Command: `{command}`",
        "",
        "| method | PSNR (dB) |",
        "|---|---|",
        f"| bicubic upsampling of the low-res input | {result['bicubic_psnr']:.2f} |",
    ]
    for steps, levels in result["upsampler_psnr"].items():
        for level, value in levels.items():
            lines.append(f"| upsampler, {steps} step{'s' * (int(steps) > 1)}, aug_sigma {level:g} | {value:.2f} |")
    if throughput:
        lines += ["", throughput]
    return "\n".join(lines) + "\n"
