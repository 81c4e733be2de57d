"""`evaluate` on a real tiny checkpoint: probe metrics offline, FVD with a tiny saved TorchScript detector."""

import json

import pytest
import torch
from torch import nn

from lit_snapvideo.cli import main
from lit_snapvideo.metrics.evaluate import DENOISE_SIGMAS, denoising_check, evaluate_checkpoint


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
    metrics = evaluate_checkpoint(str(tiny_checkpoint), num_videos=3, steps=2, seeds=(0, 1), batch_size=3,
                                  fvd_detector=str(i3d_file), probe_cache=str(tmp_path / "probe"), out=str(out),
                                  progress=False, probe_kwargs={"steps": 3, "batch_size": 4, "max_train": 16})
    saved = json.loads(out.read_text())
    for key in ("probe/prompt_accuracy", "probe/fvd", "probe/temporal_consistency", "probe/val_accuracy",
                "fvd2_8f", "fvd2_8f_std"):  # 2 real validation clips of 8 frames
        assert key in saved, key
    assert 0.0 <= saved["probe/prompt_accuracy"] <= 1.0
    assert saved["probe/fvd"] >= 0 and saved["fvd2_8f"] >= 0
    assert len(saved["fvd2_8f_per_seed"]) == 2 and saved["num_videos"] == 3
    assert "denoise/zero_mse" in saved and "denoise/caption_effect_sigma_80" in saved


def test_denoising_check_error_and_caption_effect(tiny_checkpoint, monkeypatch):
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.module import load_module

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
    monkeypatch.setattr(module, "encode_text", lambda captions: (same[0].expand(len(captions), -1, -1),
                                                                 same[1].expand(len(captions), -1)))
    ignored = denoising_check(module, num_clips=8)
    assert all(ignored[f"denoise/caption_effect_sigma_{s:g}"] == 0 for s in DENOISE_SIGMAS)


def test_denoising_check_noise_leak_of_a_denoiser_that_outputs_c_skip_x_sigma(tiny_checkpoint):
    """With F = 0 the denoiser is D = c_skip x_sigma, x_sigma = x / s + sigma eps (paper Table 1: c_skip =
    s sd^2 / (s sigma^2 + sd^2)), so <D - x, eps> / <eps, eps> = c_skip sigma + (c_skip / s - 1) <x, eps> / <eps, eps>."""
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.module import load_module, seeded_generator

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
