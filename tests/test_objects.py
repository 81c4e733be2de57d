"""The object metrics (metrics/objects.py): where the embedded set's content is, and how much of it D puts back."""

import pytest
import torch

from lit_snapvideo.data.datasets import ClipDataset, load_records
from lit_snapvideo.metrics.objects import background_and_mask, masked_mean, object_scores


def moving_square(frames=6, size=(16, 24), side=4, colour=(0.8, -0.8, -0.8), background=-1.0):
    """(1, 3, T, H, W): a square moving right 2 px a frame on a plain background, and its true mask (1, T, H, W)."""
    video = torch.full((1, 3, frames, *size), background)
    mask = torch.zeros(1, frames, *size, dtype=torch.bool)
    for t in range(frames):
        x0 = 2 + 2 * t
        mask[0, t, 5 : 5 + side, x0 : x0 + side] = True
    for c, value in enumerate(colour):
        video[:, c][mask] = value
    return video, mask


def test_mask_follows_the_object_frame_by_frame():
    video, truth = moving_square()
    background, mask, plain = background_and_mask(video)
    assert plain.tolist() == [True]
    assert torch.allclose(background, torch.tensor([[-1.0, -1.0, -1.0]]))
    assert torch.equal(mask, truth)
    assert [int(mask[0, t].nonzero()[:, 1].min()) for t in range(video.shape[2])] == [2, 4, 6, 8, 10, 12]


def test_clean_clip_recovers_all_and_background_alone_nothing():
    video, _ = moving_square()
    clean = object_scores(video, video)
    assert clean["object_recovered"].item() == pytest.approx(1.0)
    assert clean["object_mse"].item() == 0 and clean["background_mse"].item() == 0
    only_background = object_scores(torch.full_like(video, -1.0), video)
    assert only_background["object_recovered"].item() == pytest.approx(0.0, abs=1e-6)
    assert only_background["background_mse"].item() == 0
    # the object's pixels are off by (1.8, 0.2, 0.2) from the background: mean square (3.24 + 0.04 + 0.04) / 3
    assert only_background["object_mse"].item() == pytest.approx((1.8**2 + 0.2**2 + 0.2**2) / 3, rel=1e-5)


def test_half_the_object_is_a_half_and_noise_off_the_object_is_background_error():
    video, truth = moving_square()
    background = torch.full_like(video, -1.0)
    half = background + 0.5 * (video - background)
    assert object_scores(half, video)["object_recovered"].item() == pytest.approx(0.5)
    speckled = video.clone()
    speckled[:, :, :, 0, 0] += 0.3  # off the object: background error only
    scores = object_scores(speckled, video)
    assert scores["object_recovered"].item() == pytest.approx(1.0) and scores["object_mse"].item() == 0
    assert scores["background_mse"].item() > 0


def test_a_clip_without_a_plain_background_is_skipped():
    video, _ = moving_square()
    checkered = video.clone()
    checkered[:, :, :, ::2, ::2] = 1.0
    checkered[:, :, :, 1::2, 1::2] = 1.0
    both = torch.cat([video, checkered])
    scores = object_scores(both, both)
    assert scores["plain"].tolist() == [True, False]
    assert masked_mean(scores["object_recovered"], scores["plain"]).item() == pytest.approx(1.0)


def test_embedded_clips_decoded_from_mp4_have_plain_backgrounds_and_their_object(shapes_root):
    """Real clips through decord: every plain-background clip has a mask of roughly its object's area."""
    from lit_snapvideo.data.shapes import parse_caption

    train, _ = load_records(shapes_root)
    dataset = ClipDataset([r for r in train if not r.is_image][:8], frames=8, size=(16, 32), pad_to=(16, 32))
    scored = 0
    for i in range(len(dataset)):
        item = dataset[i]
        caption = parse_caption(item["caption"])
        _, mask, plain = background_and_mask(item["video"][None])
        if caption["background"] == "checkered":
            assert not plain.item()
            continue
        assert plain.item(), item["caption"]
        share = mask.float().mean().item()
        assert 0.005 < share < 0.5, (item["caption"], share)
        scored += 1
    assert scored >= 2
