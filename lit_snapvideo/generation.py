"""One generation path: prompts -> videos -> crop the padding -> uint8 -> mp4 files and a GIF grid.

    videos = generate_videos(module, prompts, steps=32, cfg_scale=2.0, seed=0)   # (N, 3, T, h, w) in [-1, 1]
    write_videos(videos, [Path("000.mp4"), ...], fps=8)                         # one mp4 per video
    gif, size = write_grid(Path("grid.gif"), videos, prompts)                    # the grid (+ prompts.txt beside it)

``lit-snapvideo sample``, the training callbacks (sample GIFs, probe metrics), ``evaluate``, the sweeps and
gpu-check all sample through here. ``module`` is a trained ``EDMVideoModule`` (its ``generate`` and ``cfg``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data.datasets import load_records
from .data.shapes import is_shapes_caption
from .data.video import crop_padding, to_uint8, write_video

SEED_SPACING = 100_003  # evaluation seeds s and s + 1 start their chunks this far apart: no two share noise
GRID_COLUMNS = 4  # videos per row of a GIF grid


def validation_prompts(root: str, manifest: Optional[str], n: int) -> list[str]:
    """``n`` validation captions, repeated as needed. For the moving-shapes set, its one-object video captions
    (ground truth for the probe); for any other data set, its video captions (the stills' if it has no video)."""
    train, val = load_records(root, manifest)
    if all(is_shapes_caption(r.caption) for r in train + val):
        captions = [r.caption for r in val if not r.is_image and " and a " not in r.caption]
        if not captions:
            raise ValueError(f"{root}: no one-object validation video captions to evaluate with")
    else:
        captions = [r.caption for r in val if not r.is_image] or [r.caption for r in val]
        if not captions:
            raise ValueError(f"{root}: no validation records to take prompts from")
    return (captions * (n // len(captions) + 1))[:n]


def generate_videos(
    module: Any,
    prompts: Sequence[str],
    steps: int,
    cfg_scale: float,
    seed: int,
    batch_size: int = 8,
    progress: Optional[Callable[[int], Any]] = None,
    low_res: Optional[Tensor] = None,
    **sampler: Any,
) -> Tensor:
    """(N, 3, T, h, w) samples in [-1, 1] on the CPU, the padding cropped to ``data.size``.

    ``batch_size`` prompts per sampler call; the call from prompt ``i`` on samples with seed ``seed + i``.
    ``progress(k)`` after each sampler step of a call with ``k`` prompts. ``low_res``: an upsampler's input videos
    (N, 3, T, *data.low_res_size), one per prompt (e.g. stage 1's samples: the cascade). ``sampler``: the other
    arguments of ``module.generate`` (solver, threshold_percentile, oscillate_low, fps, use_ema, aug_sigma)."""
    if low_res is not None and len(low_res) != len(prompts):
        raise ValueError(f"{len(low_res)} low-resolution videos for {len(prompts)} prompts")
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        step = None if progress is None else (lambda i, n, t, x, k=len(chunk): progress(k))
        if low_res is not None:
            sampler["low_res"] = low_res[start : start + batch_size]
        video = module.generate(chunk, steps=steps, cfg_scale=cfg_scale, seed=seed + start, callback=step, **sampler)
        out.append(crop_padding(video, tuple(module.cfg.data.size)).cpu())
    return torch.cat(out)


def evaluation_videos(
    module: Any,
    prompts: Sequence[str],
    steps: int,
    cfg_scale: float,
    seed: int,
    batch_size: int = 8,
    progress: Optional[Callable[[int], Any]] = None,
) -> Tensor:
    """The set a metric scores for sampling seed ``seed``: :func:`generate_videos` from ``seed * SEED_SPACING``."""
    return generate_videos(module, prompts, steps, cfg_scale, seed * SEED_SPACING, batch_size, progress)


def write_videos(videos: Tensor, paths: Sequence[Path], fps: float) -> None:
    """One mp4 per video of (N, 3, T, h, w) at ``fps`` (still images, fps inf: 8)."""
    for path, frames in zip(paths, to_uint8(videos)):
        write_video(path, frames, fps=fps if fps != float("inf") else 8.0)


def video_grid_frames(
    videos: Tensor, columns: Optional[int] = None, scale: int = 2, border: int = 2
) -> list[Image.Image]:
    """(B, 3, T, H, W) in [-1, 1] -> T PIL frames of a grid of the B videos, ``columns`` to a row (default
    min(B, GRID_COLUMNS)), white ``border`` pixels between them, upscaled ``scale`` x (nearest)."""
    b, _, t, h, w = videos.shape
    columns = columns or min(b, GRID_COLUMNS)
    rows = (b + columns - 1) // columns
    frames = to_uint8(videos)  # (B, T, H, W, 3)
    canvas = np.full((t, rows * (h + border) + border, columns * (w + border) + border, 3), 255, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, columns)
        y, x = border + r * (h + border), border + c * (w + border)
        canvas[:, y : y + h, x : x + w] = frames[i]
    images = [Image.fromarray(frame) for frame in canvas]
    return (
        [img.resize((img.width * scale, img.height * scale), Image.NEAREST) for img in images] if scale > 1 else images
    )


def gif_bytes(frames: list[Image.Image], fps: float = 8.0) -> bytes:
    """An endlessly looping GIF of ``frames``."""
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def write_grid(
    path: Path, videos: Tensor, prompts: Optional[Sequence[str]] = None, fps: float = 8.0
) -> tuple[bytes, tuple[int, int]]:
    """The GIF grid of ``videos`` at ``path`` and, given ``prompts``, ``prompts.txt`` beside it (one line per video,
    in grid order). Returns the GIF and its frame size (width, height), e.g. for TensorBoard."""
    frames = video_grid_frames(videos)
    data = gif_bytes(frames, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if prompts is not None:
        (path.parent / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return data, frames[0].size


def grid_legend(prompts: Sequence[str]) -> str:
    """The prompts of a :func:`video_grid_frames` grid in its order (markdown, e.g. a TensorBoard description)."""
    columns = min(len(prompts), GRID_COLUMNS)
    return f"Prompts, left to right and top to bottom ({columns} per row):\n\n" + "\n".join(
        f"{i + 1}. {prompt}" for i, prompt in enumerate(prompts)
    )
