"""Metrics: Fréchet distance against closed forms; FVD/FID/CLIPSIM plumbing with tiny detectors saved by the tests;
the embedded data set's probe metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lit_snapvideo.metrics import FID, FVD, CLIPSim, clipsim, feature_stats, frechet_distance
from lit_snapvideo.metrics.fvd import I3D_KWARGS, to_uint8


# ----------------------------------------------------------------------------------------------- Fréchet distance


def test_frechet_diagonal_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(float(expected), rel=1e-10)


def test_frechet_commuting_non_diagonal_closed_form():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute, so tr((S1 S2)^1/2) = sum sqrt(a b)
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    a, b = torch.rand(5, generator=g, dtype=torch.float64) * 3, torch.rand(5, generator=g, dtype=torch.float64) * 3
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu = torch.zeros(5, dtype=torch.float64)
    expected = float((a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(mu, s1, mu + 1, s2) == pytest.approx(expected + 5, rel=1e-9)


def test_frechet_general_matches_definition_and_is_zero_on_itself():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(400, 8, generator=g), torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g)
    sx, sy = feature_stats(x), feature_stats(y)
    # reference: eigenvalues of S1 S2 are real and >= 0; tr sqrt = sum of their square roots
    evals = torch.linalg.eigvals(sx.sigma @ sy.sigma).real.clamp(min=0)
    ref = (sx.mu - sy.mu).square().sum() + sx.sigma.trace() + sy.sigma.trace() - 2 * evals.sqrt().sum()
    assert frechet_distance(sx.mu, sx.sigma, sy.mu, sy.sigma) == pytest.approx(float(ref), rel=1e-8)
    assert abs(frechet_distance(sx.mu, sx.sigma, sx.mu, sx.sigma)) < 1e-9
    # singular covariances (fewer samples than dims) stay finite and non-negative
    few = feature_stats(torch.randn(3, 8, generator=g))
    assert 0 <= frechet_distance(few.mu, few.sigma, sx.mu, sx.sigma) < math.inf


def test_feature_stats_matches_stylegan_v_estimator():
    x = torch.randn(50, 4, dtype=torch.float64)
    stats = feature_stats(x)
    assert stats.sigma.dtype == torch.float64 and stats.num == 50
    torch.testing.assert_close(stats.sigma, torch.cov(x.T, correction=0))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        feature_stats(torch.randn(4))


# ----------------------------------------------------------------------------------------- tiny saved detectors


class TinyI3D(torch.nn.Module):
    """Same call signature as stylegan-v's i3d_torchscript.pt; refuses inputs the real protocol never sends."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if x.dtype != torch.uint8:
            raise ValueError("expected uint8 videos")
        if x.shape[2] != 16:
            raise ValueError("expected 16 frames")
        y = x.float()
        if rescale:
            y = y / 127.5 - 1
        if resize:
            y = F.interpolate(y, size=(y.shape[2], 224, 224), mode="trilinear", align_corners=False)
        if y.shape[-1] != 224 or y.shape[-2] != 224:
            raise ValueError("expected 224x224 frames")
        feats = F.adaptive_avg_pool3d(y, (4, 2, 2)).flatten(1)  # (B, 48): colour x time x coarse space
        return feats if return_features else feats.softmax(dim=-1)


class TinyInception(torch.nn.Module):
    """stylegan2-ada Inception call signature: uint8 (N, 3, H, W), return_features -> (N, D)."""

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.dtype != torch.uint8:
            raise ValueError("expected uint8 images")
        y = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
        feats = F.adaptive_avg_pool2d(y, 2).flatten(1)  # (N, 12)
        return feats if return_features else feats.softmax(dim=-1)


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("detectors") / "tiny_i3d.pt"
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("detectors") / "tiny_inception.pt"
    torch.jit.save(torch.jit.script(TinyInception()), str(path))
    return path


def _videos(n: int, frames: int = 20, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    """Smooth random videos (N, 3, T, 36, 64) in [-1, 1]: per-video colour plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, 1, generator=g) * 1.2 - 0.6
    noise = 0.2 * torch.randn(n, 3, frames, 36, 64, generator=g)
    return (colour + noise + shift).clamp(-1, 1)


def test_to_uint8_matches_stylegan_v_rounding():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5])
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255, 255]


def test_fvd_plumbing_cache_and_shift(i3d_path, tmp_path):
    fvd = FVD(i3d_path, cache_dir=tmp_path / "cache", num_videos=24, frames=16, batch_size=5)
    assert fvd.name == "fvd24_16f"
    assert I3D_KWARGS == dict(rescale=True, resize=True, return_features=True)  # stylegan-v's compute_fvd
    real_videos = _videos(30, frames=20)  # 20 frames: the first 16 are used; 30 videos: the first 24
    feats = fvd.features(real_videos[:3])
    assert feats.shape == (3, 48) and feats.dtype == torch.float64
    real = fvd.real_stats(real_videos, key="tiny-val")
    assert real.num == 24 and fvd.cache_path("tiny-val").is_file()

    # cache hit: a second call must not run the detector at all
    fvd_cached = FVD(i3d_path, cache_dir=tmp_path / "cache", num_videos=24, frames=16)
    fvd_cached.detector = None
    again = fvd_cached.real_stats(real_videos, key="tiny-val")
    torch.testing.assert_close(again.sigma, real.sigma)

    result = fvd.score([real_videos, _videos(24, seed=1, shift=0.1), _videos(24, seed=2, shift=0.1)], real)
    # identical sets: 0 up to the rounding of sqrt at the singular covariance's zero eigenvalues
    assert abs(result["fvd24_16f_per_seed"][0]) < 1e-6 * float(real.sigma.trace())
    assert result["fvd24_16f_num_seeds"] == 3 and result["fvd24_16f_std"] > 0
    grows = [fvd.score([_videos(24, seed=3, shift=s)], real)["fvd24_16f"] for s in (0.0, 0.2, 0.4)]
    assert grows[0] < grows[1] < grows[2]


def test_fvd_rejects_short_clips_too_few_videos_and_bad_files(i3d_path, tmp_path):
    fvd = FVD(i3d_path, cache_dir=tmp_path, num_videos=8)
    with pytest.raises(ValueError, match="16 frames"):
        fvd.features(_videos(2, frames=8))
    with pytest.raises(ValueError, match=r"num_videos=4 .*fvd4_16f"):
        fvd.stats(_videos(4))
    with pytest.raises(FileNotFoundError, match="missing_i3d.pt"):
        FVD(tmp_path / "missing_i3d.pt")
    state_dict_file = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, state_dict_file)
    with pytest.raises(ValueError, match=r"weights.pt: not a TorchScript module"):
        FVD(state_dict_file)


def test_fid_per_frame_with_tiny_inception(inception_path, tmp_path):
    fid = FID(inception_path, batch_size=4)
    assert fid.update_real(_videos(10, frames=4)) == 40  # every frame is an image
    result = fid.score([_videos(10, frames=4), _videos(10, frames=4, seed=5, shift=0.3)])
    assert result["fid_per_seed"][0] == pytest.approx(0.0, abs=1e-6)
    assert result["fid_per_seed"][1] > 1e-3
    text_file = tmp_path / "inception.pt"
    text_file.write_text("not a network")
    with pytest.raises(ValueError, match=r"inception.pt: not a TorchScript module"):
        FID(text_file)


# ---------------------------------------------------------------------------------------------------- CLIPSIM

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    config = root / "tiny-clipsim-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP)
    ckpt = root / "tiny_clip.pt"
    torch.save(model.state_dict(), ckpt)
    return config, ckpt, model


def test_clipsim_matches_direct_cosine(tiny_clip):
    config, ckpt, model = tiny_clip
    scorer = CLIPSim("tiny-clipsim-test", ckpt, model_config=config)
    videos = _videos(2, frames=3)
    prompts = ["a red circle moving left", "a blue square moving up"]
    per_video = scorer(videos, prompts)
    assert per_video.shape == (2,) and ((-1 <= per_video) & (per_video <= 1)).all()
    # reference: the saved model itself, frame by frame
    import open_clip

    text = F.normalize(model.eval().encode_text(open_clip.get_tokenizer("tiny-clipsim-test")(prompts)), dim=-1)
    for b in range(2):
        frames = scorer._preprocess(videos[b].transpose(0, 1))
        image = F.normalize(model.encode_image(frames), dim=-1)
        assert float(per_video[b]) == pytest.approx(float((image @ text[b]).mean()), abs=1e-5)
    assert clipsim(scorer, [(videos, prompts)]) == pytest.approx(float(per_video.mean()), abs=1e-6)


def test_clipsim_bad_files(tiny_clip, tmp_path):
    config, _, _ = tiny_clip
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        CLIPSim("tiny-clipsim-test", tmp_path / "nope.pt", model_config=config)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="junk.pt: could not load"):
        CLIPSim("tiny-clipsim-test", junk, model_config=config)
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        CLIPSim("no-such-model", junk)
