"""The one generation path (prompts -> videos -> crop -> uint8 -> mp4 files and a GIF grid) and its seeds."""

import numpy as np
import torch

from lit_snapvideo.data.video import to_uint8
from lit_snapvideo.generation import (
    SEED_SPACING,
    evaluation_videos,
    generate_videos,
    gif_bytes,
    grid_legend,
    video_grid_frames,
    write_grid,
)
from lit_snapvideo.module_loading import load_module

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving down"]


def test_chunks_sample_with_their_own_seeds_and_lose_the_padding(tiny_checkpoint):
    """The call from prompt i on samples with seed + i; evaluation sets start SEED_SPACING apart per seed."""
    module = load_module(str(tiny_checkpoint))
    steps = []
    videos = generate_videos(module, PROMPTS, 2, 2.0, seed=7, batch_size=2, progress=steps.append)
    assert videos.shape == (3, 3, module.cfg.data.frames, *module.cfg.data.size) and videos.device.type == "cpu"
    assert steps == [2, 2, 1, 1]  # per sampler step, the prompts of that call
    second_call = module.generate(PROMPTS[2:], steps=2, cfg_scale=2.0, seed=7 + 2)
    assert torch.equal(videos[2:], second_call)  # fit_tiny's clip has no padding to crop here
    assert torch.equal(
        evaluation_videos(module, PROMPTS[:2], 2, 2.0, seed=1, batch_size=2),
        generate_videos(module, PROMPTS[:2], 2, 2.0, seed=SEED_SPACING, batch_size=2),
    )


def test_grid_places_each_video_and_names_its_prompts(tmp_path):
    """Rows of 4 videos with a 2-px white border, upscaled 2x; prompts.txt and the legend in the same order."""
    videos = torch.linspace(-1, 1, 5).view(5, 1, 1, 1, 1).expand(5, 3, 2, 4, 6)  # video i: one grey level
    frames = video_grid_frames(videos)
    assert len(frames) == 2 and frames[0].size == (2 * (4 * (6 + 2) + 2), 2 * (2 * (4 + 2) + 2))
    grid = np.asarray(frames[0])[::2, ::2]  # undo the nearest-neighbour upscale
    levels = to_uint8(videos)[:, 0, 0, 0]  # (5, 3): each video's pixel
    for i, level in enumerate(levels):
        row, col = divmod(i, 4)
        assert (grid[2 + row * 6 : 2 + row * 6 + 4, 2 + col * 8 : 2 + col * 8 + 6] == level).all()
    assert (grid[:2] == 255).all() and (grid[8:, 10:] == 255).all()  # border, and the empty cells of row 2
    data, size = write_grid(tmp_path / "out" / "grid.gif", videos, [f"prompt {i}" for i in range(5)], fps=4)
    assert data == gif_bytes(frames, fps=4) and size == frames[0].size
    assert (tmp_path / "out" / "grid.gif").read_bytes() == data and data[:6] == b"GIF89a"
    assert (tmp_path / "out" / "prompts.txt").read_text().splitlines() == [f"prompt {i}" for i in range(5)]
    legend = grid_legend([f"prompt {i}" for i in range(5)])
    assert "(4 per row)" in legend and "\n1. prompt 0\n" in legend and legend.endswith("5. prompt 4")
