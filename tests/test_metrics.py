"""Metrics: Fréchet distance against closed forms; FVD/FID/CLIPSIM plumbing with tiny detectors saved by the tests;
the embedded data set's probe metrics."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import PlantedPayload
from lit_snapvideo.data.datasets import load_records
from lit_snapvideo.data.shapes import generate_shapes
from lit_snapvideo.metrics import (
    FID,
    FVD,
    CLIPSim,
    Probe,
    clipsim,
    feature_stats,
    frechet_distance,
    load_or_train_probe,
    load_probe,
    probe_fvd,
    prompt_accuracy,
    save_probe,
    temporal_consistency,
)
from lit_snapvideo.metrics import probe as probe_lib
from lit_snapvideo.metrics.fvd import I3D_KWARGS, to_uint8
from lit_snapvideo.metrics.probe import ATTRIBUTES, IGNORE, augment


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


def _plant_stats(path, kind):
    good = torch.load(path, weights_only=True)
    if kind == "payload":
        torch.save({**good, "mu": PlantedPayload()}, path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "structure":
        torch.save([good["mu"], good["sigma"]], path)
    elif kind == "shape":
        torch.save({**good, "sigma": good["sigma"][:5, :5]}, path)
    elif kind == "nan":
        good["sigma"][0, 0] = float("nan")
        torch.save(good, path)
    elif kind == "shifted":  # an edited mean: the rest of the file still fits
        torch.save({**good, "mu": good["mu"] + 100}, path)
    elif kind == "copied":  # another data set's statistics under this key's name
        torch.save({**good, "key": "other-val"}, path)


@pytest.mark.parametrize("kind", ["payload", "truncated", "structure", "shape", "nan", "shifted", "copied"])
def test_a_bad_fvd_cache_is_recomputed_with_one_warning(i3d_path, tmp_path, caplog, kind):
    """Before: a planted payload or a truncated file was a torch traceback that named no file, and a NaN, a wrong
    shape or a shifted mean were used silently (FVD 1.4e7)."""
    fvd = FVD(i3d_path, cache_dir=tmp_path, num_videos=4, frames=16)
    real_videos = _videos(4, frames=16)
    first = fvd.real_stats(real_videos, key="tiny-val")
    path = fvd.cache_path("tiny-val")
    _plant_stats(path, kind)
    with caplog.at_level(logging.WARNING):
        again = fvd.real_stats(real_videos, key="tiny-val")
    assert torch.equal(again.mu, first.mu) and torch.equal(again.sigma, first.sigma)
    warned = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"FVD statistics cache {path}: "), warned
    assert warned[0].endswith("computing them again") and "\n" not in warned[0]
    fvd.detector = None  # rewritten: the next call reads the file and runs no detector
    assert torch.equal(fvd.real_stats(real_videos, key="tiny-val").mu, first.mu)


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


# ------------------------------------------------------------------------------------ moving-shapes probe metrics


def _moving_dot(dx: int, dy: int, frames: int = 16) -> torch.Tensor:
    """(3, T, 36, 64) black clip with a white 2x2 dot moving (dx, dy) px per frame (image coordinates, y down)."""
    clip = -torch.ones(3, frames, 36, 64)
    for t in range(frames):
        y, x = 18 + dy * t // 2, 32 + dx * t
        clip[:, t, y : y + 2, x : x + 2] = 1
    return clip


def _motion(clip: torch.Tensor) -> tuple[float, float]:
    """Centroid displacement (dx, dy) from the first to the last frame of a one-dot clip."""
    ys, xs = torch.meshgrid(torch.arange(36.0), torch.arange(64.0), indexing="ij")
    first, last = (clip[0, 0] > 0).float(), (clip[0, -1] > 0).float()
    centre = lambda m: ((xs * m).sum() / m.sum(), (ys * m).sum() / m.sum())
    (x0, y0), (x1, y1) = centre(first), centre(last)
    return float(x1 - x0), float(y1 - y0)


UNIT = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}


def test_augment_labels_follow_the_pixels():
    names = ATTRIBUTES["direction"]
    clips = torch.stack([_moving_dot(*UNIT[d]) for d in names for _ in range(4)])
    direction = torch.tensor([i for i in range(len(names)) for _ in range(4)])
    labels = {
        "direction": direction,
        "bounce": torch.zeros_like(direction),
        "shape": direction * 0,
        "color": direction * 0,
    }
    out, new = augment(clips, labels, torch.Generator().manual_seed(0))
    assert (new["direction"] != direction).any()  # some clips were mirrored or reversed
    for clip, label in zip(out, new["direction"].tolist()):
        dx, dy = _motion(clip)
        assert (math.copysign(1, dx) if abs(dx) > 0.5 else 0, math.copysign(1, dy) if abs(dy) > 0.5 else 0) == UNIT[
            names[label]
        ]
    # bouncing clips are never time-reversed; stills keep IGNORE
    bounce = {**labels, "bounce": torch.ones_like(direction), "direction": torch.full_like(direction, IGNORE)}
    _, new = augment(clips, bounce, torch.Generator().manual_seed(0))
    assert (new["direction"] == IGNORE).all()


class OracleProbe(Probe):
    """A probe that reads its answers from pixel (0, 0) of the first three frames of the (cropped) clip."""

    def forward(self, videos):
        x = self.prepare(videos)
        codes = ((x[:, 0, :3, 0, 0] + 1) * 127.5 / 20).round().long()  # (B, 3): shape, colour, direction
        return {name: F.one_hot(codes[:, i], len(ATTRIBUTES[name])).float() for i, name in enumerate(ATTRIBUTES)}


def _coded_clip(shape: str, color: str, direction: str, pad: bool = True) -> torch.Tensor:
    clip = torch.zeros(3, 16, 40 if pad else 36, 64)
    top = 2 if pad else 0  # pad_video puts half of the 4 padding rows on top
    for t, (name, value) in enumerate(zip(ATTRIBUTES, (shape, color, direction))):
        clip[0, t, top, 0] = ATTRIBUTES[name].index(value) * 20 / 127.5 - 1
    return clip


def test_prompt_accuracy_counts_matches_stills_and_skips_two_objects():
    probe = OracleProbe()
    clips = torch.stack(
        [
            _coded_clip("circle", "red", "left"),  # all right
            _coded_clip("square", "red", "left"),  # wrong shape
            _coded_clip("circle", "blue", "right"),  # wrong direction
            _coded_clip("triangle", "green", "up"),  # a still prompt: direction not scored
            _coded_clip("circle", "red", "left"),  # two-object prompt: skipped
        ]
    )
    prompts = [
        "a small red circle moving left on a black background",
        "a small red circle moving left on a black background",
        "a large blue circle moving left on a white background",
        "a small green triangle on a gray background",
        "a small red circle moving left and a large blue square moving up on a black background",
    ]
    result = prompt_accuracy(probe, clips, prompts)
    assert result["num_scored"] == 4
    assert result["prompt_accuracy"] == pytest.approx(2 / 4)
    assert result["shape_accuracy"] == pytest.approx(3 / 4)
    assert result["color_accuracy"] == pytest.approx(1.0)
    assert result["direction_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not a moving-shapes caption"):
        prompt_accuracy(probe, clips[:1], ["a cat playing the piano"])
    with pytest.raises(ValueError, match="needs at least 16 frames"):
        prompt_accuracy(probe, clips[:1, :, :8], prompts[:1])


def test_probe_fvd_and_temporal_consistency():
    probe = Probe().eval()
    real_clips = _videos(40, frames=16)
    with torch.no_grad():
        real = feature_stats(probe.features(real_clips))
    probe.meta = {"reference": {"mu": real.mu, "sigma": real.sigma, "num": real.num}}
    assert abs(probe_fvd(probe, real_clips)) < 1e-6 * float(real.sigma.trace()) + 1e-9
    shifted = [probe_fvd(probe, _videos(40, frames=16, seed=7, shift=s)) for s in (0.0, 0.3, 0.6)]
    assert shifted[0] < shifted[1] < shifted[2]

    frozen = torch.rand(2, 3, 1, 8, 8).expand(2, 3, 5, 8, 8) * 2 - 1
    assert temporal_consistency(frozen) == pytest.approx(1.0)
    flicker = torch.ones(2, 3, 6, 8, 8)
    flicker[:, :, ::2] = -1
    assert temporal_consistency(flicker) == pytest.approx(0.0)
    assert temporal_consistency(torch.stack([_moving_dot(1, 0)])) == pytest.approx(1 - 4 * 2 / (36 * 64) / 2)


def test_probe_checkpoint_round_trip_and_bad_file(tmp_path):
    probe = Probe()
    probe.meta = {"val_accuracy": {"all": 0.5}}
    save_probe(probe, tmp_path / "p.pt")
    loaded = load_probe(tmp_path / "p.pt")
    assert loaded.meta == probe.meta
    x = _videos(2, frames=16)
    torch.testing.assert_close(loaded.features(x), probe.eval().features(x))
    (tmp_path / "bad.pt").write_text("nope")
    with pytest.raises(ValueError, match="bad.pt: not a probe checkpoint"):
        load_probe(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_probe(tmp_path / "missing.pt")


def test_load_or_train_probe_trains_once_then_reads_the_cache(tmp_path, monkeypatch):
    generate_shapes(tmp_path / "shapes", n_train=40, n_val=12, seed=0, workers=1)
    settings = dict(steps=2, batch_size=8, max_train=16, num_workers=0)
    probe = load_or_train_probe(tmp_path / "shapes", cache_dir=tmp_path / "cache", **settings)
    meta = probe.meta
    assert set(meta["val_accuracy"]) == {"shape", "color", "direction", "all"} and meta["num_train"] == 16
    assert meta["reference"]["sigma"].shape == (64, 64) and 0 < meta["reference"]["temporal_consistency"] < 1
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached probe should have been used")

    monkeypatch.setattr(probe_lib, "train_probe", must_not_train)
    again = load_or_train_probe(tmp_path / "shapes", cache_dir=tmp_path / "cache", **settings)
    assert again.meta["val_accuracy"] == meta["val_accuracy"]
    with pytest.raises(AssertionError, match="cached probe"):  # other settings are another cache entry
        load_or_train_probe(tmp_path / "shapes", cache_dir=tmp_path / "cache", **{**settings, "steps": 3})


def _stand_in_probe(frames, size):
    """An untrained small probe with the reference statistics a trained one carries."""
    probe = Probe(frames=frames, size=size, width=8, feature_dim=8)
    probe.meta = {"reference": {"mu": torch.zeros(8), "sigma": torch.eye(8), "num": 2, "temporal_consistency": 0.9}}
    return probe


@pytest.mark.parametrize("kind", ["clip_shape", "payload", "truncated"])
def test_a_bad_cached_probe_is_trained_again_with_one_warning(shapes_root, tmp_path, monkeypatch, caplog, kind):
    """Before: a cache entry of a probe trained for another clip shape was accepted, and a planted payload or a
    truncated entry stopped every later evaluation."""
    trained = []

    def stand_in_training(root, manifest=None, *, frames, size, **kwargs):
        trained.append((frames, list(size)))
        return _stand_in_probe(frames, size)

    monkeypatch.setattr(probe_lib, "train_probe", stand_in_training)
    settings = dict(frames=8, size=[16, 32], steps=2)
    load_or_train_probe(shapes_root, cache_dir=tmp_path, **settings)
    (entry,) = tmp_path.glob("*.pt")
    if kind == "clip_shape":
        save_probe(_stand_in_probe(16, [36, 64]), entry)
    elif kind == "payload":
        torch.save({"version": probe_lib.PROBE_VERSION, "config": PlantedPayload()}, entry)
    else:
        entry.write_bytes(entry.read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        probe = load_or_train_probe(shapes_root, cache_dir=tmp_path, **settings)
    assert trained == [(8, [16, 32])] * 2 and (probe.frames, probe.size) == (8, (16, 32))
    warned = [r.getMessage() for r in caplog.records if str(entry) in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"probe cache {entry}: "), warned
    assert warned[0].endswith("training the probe again")
    if kind == "clip_shape":
        assert "trained on clips of 16 frames of [36, 64], expected 8 frames of [16, 32]" in warned[0]
    assert load_or_train_probe(shapes_root, cache_dir=tmp_path, **settings).size == (16, 32)  # rewritten
    assert len(trained) == 2


@pytest.mark.slow
def test_probe_learns_the_attributes_and_prompt_accuracy_tracks_the_captions(tmp_path):
    """The default recipe on a 2400+256 clip set: ~14 min with generation on 2 shared CPU cores (measured: all-attribute
    validation accuracy 0.95)."""
    root = tmp_path / "shapes"
    generate_shapes(root, n_train=2400, n_val=256, seed=0)
    probe = load_or_train_probe(root, cache_dir=tmp_path / "cache")
    acc = probe.meta["val_accuracy"]
    assert acc["color"] >= 0.95 and acc["shape"] >= 0.9 and acc["direction"] >= 0.9 and acc["all"] >= 0.85, acc

    _, val = load_records(root)
    val = probe_lib._one_object(val)
    clips, _ = probe_lib._decode(val, 16, (36, 64), [8.0], False, tmp_path / "skip", 0, 0)
    videos, captions = probe_lib._as_float(clips), [r.caption for r in val]
    own = prompt_accuracy(probe, videos, captions)
    assert own["prompt_accuracy"] >= 0.9, own
    shuffled = [captions[i] for i in torch.randperm(len(captions), generator=torch.Generator().manual_seed(0))]
    # chance of matching shape, colour and direction together is ~1/3 * 1/8 * 1/8 (1/24 for stills)
    assert prompt_accuracy(probe, videos, shuffled)["prompt_accuracy"] < 0.1


@pytest.mark.parametrize("which", ["mu1", "sigma2"])
def test_frechet_refuses_nan_before_the_linear_algebra(which):
    args = {"mu1": torch.zeros(3), "sigma1": torch.eye(3), "mu2": torch.zeros(3), "sigma2": torch.eye(3)}
    args[which] = args[which].clone()
    args[which].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"frechet_distance: {which} holds NaN or inf"):
        frechet_distance(**args)
