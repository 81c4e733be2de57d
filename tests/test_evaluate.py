"""`evaluate` on a real tiny checkpoint: probe metrics offline, FVD with a tiny saved TorchScript detector."""

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_snapvideo.cli import main
from lit_snapvideo.data.video import write_video
from lit_snapvideo.evaluate import DENOISE_SIGMAS, denoising_check, evaluate_checkpoint
from lit_snapvideo.generation import validation_prompts


class TinyI3D(nn.Module):
    """Stands in for stylegan-v's TorchScript I3D: same call signature, (B, 3, T, H, W) uint8-range in."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = True):
        x = x.float() / 255.0
        pooled = x.mean(dim=(2, 3, 4))  # (B, 3)
        return torch.cat([self.proj(pooled), x.std(dim=(1, 2, 3, 4), keepdim=False)[:, None]], dim=1)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    return path


def test_evaluate_writes_probe_and_fvd_metrics(tiny_checkpoint, tmp_path, i3d_file):
    out = tmp_path / "metrics.json"
    metrics = evaluate_checkpoint(
        str(tiny_checkpoint),
        num_videos=3,
        steps=2,
        seeds=(0, 1),
        batch_size=3,
        fvd_detector=str(i3d_file),
        probe_cache=str(tmp_path / "probe"),
        out=str(out),
        progress=False,
        probe_kwargs={"steps": 3, "batch_size": 4, "max_train": 16},
    )
    saved = json.loads(out.read_text())
    assert metrics["probe/fvd"] == saved["probe/fvd"]  # what it returns is what it wrote
    for key in (
        "probe/prompt_accuracy",
        "probe/fvd",
        "probe/temporal_consistency",
        "probe/val_accuracy",
        "fvd2_8f",
        "fvd2_8f_std",
    ):  # 2 real validation clips of 8 frames
        assert key in saved, key
    assert 0.0 <= saved["probe/prompt_accuracy"] <= 1.0
    assert saved["probe/fvd"] >= 0 and saved["fvd2_8f"] >= 0
    assert len(saved["fvd2_8f_per_seed"]) == 2 and saved["num_videos"] == 3
    assert "denoise/zero_mse" in saved and "denoise/caption_effect_sigma_80" in saved


def test_denoising_check_error_and_caption_effect(tiny_checkpoint, monkeypatch):
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.module_loading import load_module

    module = load_module(str(tiny_checkpoint))
    torch.nn.init.normal_(module.ema_backbone.out_proj.weight, std=0.5)  # F depends on the input and the caption
    result = denoising_check(module, num_clips=8)
    dm = EDMDataModule(module.cfg)
    dm.setup("validate")
    clips = torch.cat([b["video"] for b in dm.val_dataloader()])[:8]  # the tiny set has 2 validation clips
    assert result["denoise/zero_mse"] == pytest.approx(clips.pow(2).mean().item(), rel=1e-5)
    for s in DENOISE_SIGMAS:
        assert result[f"denoise/mse_sigma_{s:g}"] > 0 and result[f"denoise/caption_effect_sigma_{s:g}"] > 1e-4
    # every caption encoded alike (the null caption too): the caption cannot move D
    same = module.encode_text(["a red circle moving left on a black background"])
    monkeypatch.setattr(
        module,
        "encode_text",
        lambda captions: (same[0].expand(len(captions), -1, -1), same[1].expand(len(captions), -1)),
    )
    ignored = denoising_check(module, num_clips=8)
    assert all(ignored[f"denoise/caption_effect_sigma_{s:g}"] == 0 for s in DENOISE_SIGMAS)


def test_denoising_check_noise_leak_of_a_denoiser_that_outputs_c_skip_x_sigma(tiny_checkpoint):
    """With F = 0 the denoiser is D = c_skip x_sigma, x_sigma = x / s + sigma eps (paper Table 1: c_skip =
    s sd^2 / (s sigma^2 + sd^2)), so <D - x, eps> / <eps, eps> = c_skip sigma + (c_skip / s - 1) <x, eps> / <eps, eps>."""
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.module_loading import load_module
    from lit_snapvideo.seeding import seeded_generator

    module = load_module(str(tiny_checkpoint))
    torch.nn.init.zeros_(module.ema_backbone.out_proj.weight)
    torch.nn.init.zeros_(module.ema_backbone.out_proj.bias)
    result = denoising_check(module, num_clips=8)
    dm = EDMDataModule(module.cfg)
    dm.setup("validate")
    x = next(iter(dm.val_dataloader()))["video"].double()  # the tiny set's 2 validation clips, one batch
    eps = torch.randn(x.shape, generator=seeded_generator(0, 0)).double()
    s, sd = module.cfg.diffusion.sigma_in, module.cfg.diffusion.sigma_data
    for sigma in DENOISE_SIGMAS:
        c_skip = s * sd**2 / (s * sigma**2 + sd**2)
        per_clip = c_skip * sigma + (c_skip / s - 1) * (x * eps).sum((1, 2, 3, 4)) / eps.pow(2).sum((1, 2, 3, 4))
        assert result[f"denoise/noise_leak_sigma_{sigma:g}"] == pytest.approx(per_clip.mean().item(), abs=1e-5)


def test_evaluate_cli_errors(tiny_checkpoint, tmp_path, capsys):
    assert main(["evaluate", str(tiny_checkpoint), "--fvd-detector", str(tmp_path / "missing.pt")]) == 2
    assert "--fvd-detector" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none.ckpt")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_checkpoint), "--clip-model", "ViT-B-32"]) == 2
    assert "--clip-checkpoint" in capsys.readouterr().err


# ---- evaluate on a user's own data: FVD, FID and CLIPSIM with the user's detector files; no probe ------------------

USER_CAPTIONS = [
    "a dog runs on the beach",
    "waves roll in at sunset",
    "a cat jumps onto a table",
    "rain on a window at night",
    "a train passes a station",
    "leaves fall in a park",
]


class TinyInception(nn.Module):
    """stylegan2-ada's Inception call signature: uint8 (N, 3, H, W), return_features -> (N, D)."""

    def forward(self, x: torch.Tensor, return_features: bool = False):
        y = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
        return F.adaptive_avg_pool2d(y, 2).flatten(1)


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A user's own folder: real mp4 clips with plain captions (a manifest with a split column: 2 validation clips)."""
    root = tmp_path_factory.mktemp("my_videos")
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(USER_CAPTIONS):
        still = rng.integers(0, 200, (1, 32, 48, 3))
        frames = (still + 4 * np.arange(12)[:, None, None, None]).astype(np.uint8)  # 12 frames that brighten
        write_video(root / f"clip{i}.mp4", frames, fps=8)
        rows.append(f"clip{i}.mp4,{caption},,{'val' if i >= 4 else 'train'}\n")
    (root / "manifest.csv").write_text("path,caption,fps,split\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def user_checkpoint(tiny_checkpoint, user_data, tmp_path_factory):
    """The tiny run's checkpoint with its config pointing at the user's data (same clip shape)."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["cfg"]["data"]["root"] = str(user_data)
    path = tmp_path_factory.mktemp("user_run") / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """Tiny stand-ins for the user's detector files: I3D and Inception TorchScript, an open_clip config + weights."""
    import open_clip

    root = tmp_path_factory.mktemp("user_detectors")
    torch.jit.script(TinyI3D()).save(str(root / "i3d.pt"))
    torch.jit.script(TinyInception()).save(str(root / "inception.pt"))
    tiny_clip = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (root / "tiny-clip-eval-test.json").write_text(json.dumps(tiny_clip))
    open_clip.add_model_config(root / "tiny-clip-eval-test.json")  # registers the name "tiny-clip-eval-test"
    torch.save(open_clip.model.CLIP(**tiny_clip).state_dict(), root / "clip.pt")
    return {"fvd": root / "i3d.pt", "fid": root / "inception.pt", "clip": root / "clip.pt"}


def test_validation_prompts_are_the_validation_captions_on_user_data(user_data, shapes_root):
    assert validation_prompts(str(user_data), None, 3) == [USER_CAPTIONS[4], USER_CAPTIONS[5], USER_CAPTIONS[4]]
    shapes = validation_prompts(str(shapes_root), None, 2)  # the embedded set: one-object video captions
    assert all(" moving " in p and " and a " not in p for p in shapes)


def test_evaluate_on_user_data_scores_fvd_fid_clipsim_and_skips_the_probe(
    user_checkpoint, detectors, tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the FVD statistics cache (.cache/fvd) lands here
    out = tmp_path / "metrics.json"
    argv = [
        "evaluate",
        str(user_checkpoint),
        "--num-videos",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--fvd-detector",
        str(detectors["fvd"]),
        "--fid-detector",
        str(detectors["fid"]),
        "--clip-model",
        "tiny-clip-eval-test",
        "--clip-checkpoint",
        str(detectors["clip"]),
        "--out",
        str(out),
    ]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0, capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["fvd2_8f"] >= 0 and saved["fid"] >= 0 and -1 <= saved["clipsim"] <= 1
    assert "denoise/zero_mse" in saved and not [k for k in saved if k.startswith("probe/")]
    skipped = [r.getMessage() for r in caplog.records if "probe metrics skipped" in r.getMessage()]
    assert len(skipped) == 1 and "is not the moving-shapes set" in skipped[0], skipped


def test_fvd_real_statistics_are_cached_per_clip_shape_and_frame_rate(user_checkpoint, detectors, tmp_path):
    from lit_snapvideo.module_loading import load_module

    module = load_module(str(user_checkpoint))
    cache = tmp_path / "fvd"

    def evaluate() -> set:
        evaluate_checkpoint(
            str(user_checkpoint),
            num_videos=2,
            steps=2,
            batch_size=2,
            fvd_detector=str(detectors["fvd"]),
            fvd_cache=str(cache),
            out=str(tmp_path / "metrics.json"),
            progress=False,
            module=module,
        )
        return {p.name for p in cache.glob("*.pt")}

    first = evaluate()
    assert len(first) == 1 and "-8x16x32-8fps-" in next(iter(first))
    assert evaluate() == first  # the same data, shape and rate: read from the cache
    module.cfg.data.val_fps = 6.0
    assert len(evaluate() - first) == 1  # another frame rate: new statistics
    module.cfg.data.size = [12, 32]
    assert len(evaluate()) == 3  # another clip size too


# ---- a detector that gives no usable features: one line naming the file, before any linear algebra -----------------


class NaNI3D(nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = True):
        return torch.full((x.shape[0], 8), float("nan"))


class WrongShapeI3D(nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = True):
        return torch.zeros(x.shape[0], 4, 2)


class NaNInception(nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False):
        return torch.full((x.shape[0], 12), float("inf"))


class WrongShapeInception(nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False):
        return torch.zeros(1, 12)


BAD_DETECTORS = [
    ("fvd_nan", "--fvd-detector", NaNI3D, "the detector gave NaN or inf features for 2 of 2 inputs"),
    (
        "fvd_shape",
        "--fvd-detector",
        WrongShapeI3D,
        "expected features of shape (2, D) from the detector, got (2, 4, 2)",
    ),
    ("fid_nan", "--fid-detector", NaNInception, "the detector gave NaN or inf features for 1 of 1 inputs"),
    ("fid_shape", "--fid-detector", WrongShapeInception, "expected features of shape (16, D) from the detector, got"),
]


@pytest.mark.parametrize("name,flag,cls,fragment", BAD_DETECTORS, ids=[row[0] for row in BAD_DETECTORS])
def test_a_detector_without_usable_features_is_one_line(
    user_checkpoint, tmp_path, capsys, monkeypatch, name, flag, cls, fragment
):
    """Before: NaN features made oneMKL fail in FID (a segfault on some builds) and FVD end in a LinAlgError
    traceback; a detector of the wrong output shape gave a RuntimeError traceback."""
    monkeypatch.chdir(tmp_path)
    detector = tmp_path / f"{name}.pt"
    torch.jit.script(cls()).save(str(detector))
    argv = ["evaluate", str(user_checkpoint), "--num-videos", "2", "--steps", "1", flag, str(detector)]
    assert main([*argv, "--out", str(tmp_path / "metrics.json")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"{detector}: " in lines[0] and fragment in lines[0], lines[0]
    assert not (tmp_path / "metrics.json").exists()


def test_a_detector_of_the_wrong_shape_in_sweep_is_one_line(user_checkpoint, tmp_path, capsys, monkeypatch):
    """The evaluate rows above, through sweep (before: a RuntimeError traceback)."""
    monkeypatch.chdir(tmp_path)  # the FVD statistics cache, .cache/fvd
    detector = tmp_path / "fvd_shape.pt"
    torch.jit.script(WrongShapeI3D()).save(str(detector))
    argv = ["sweep", "cfg", str(user_checkpoint), "--values", "1", "--num-videos", "2", "--steps", "1"]
    assert main([*argv, "--fvd-detector", str(detector), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"{detector}: expected features of shape (2, D) from the detector, got (2, 4, 2)" in lines[0], lines[0]
    assert not (tmp_path / "out" / "sweep_cfg.csv").exists()
