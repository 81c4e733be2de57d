"""The backbone registry: a new kind is one class and one entry, and trains through the real command line."""

import json

import pytest
from conftest import tiny_overrides
from torch import nn

from lit_snapvideo.cli import main
from lit_snapvideo.config import load_config
from lit_snapvideo.models import presets, registry
from lit_snapvideo.module import EDMVideoModule, module_for


class ToyBackbone(nn.Module):
    """The smallest backbone the interface allows: a per-pixel MLP shifted by the noise level and the mean text
    token. ``forward(x (B, 3, T, H, W), c_noise (B,), cond, self_cond=None) -> (F (B, 3, T, H, W), None)``."""

    def __init__(self, text_dim: int, width: int = 8, grad_checkpointing: bool = False):
        super().__init__()
        self.text_dim = text_dim
        self.text = nn.Linear(text_dim, width)
        self.inp = nn.Conv3d(3, width, 1)
        self.out = nn.Conv3d(width, 3, 1)

    def forward(self, x, c_noise, cond, self_cond=None):
        mask = cond["text_mask"].unsqueeze(-1).to(x.dtype)
        text = (cond["text"] * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, text_dim)
        shift = self.text(text) + c_noise.unsqueeze(1)  # (B, width)
        h = self.inp(x) + shift.view(*shift.shape, 1, 1, 1)
        return self.out(nn.functional.silu(h)), None


TOY = registry.Backbone(ToyBackbone, {"name": "adamw", "lr": 1e-3, "betas": (0.9, 0.999)})


def test_a_registered_toy_backbone_trains_through_the_cli(shapes_root, tmp_path, monkeypatch, capsys):
    experiment = tmp_path / "toy.yaml"
    experiment.write_text("trainer:\n  max_steps: 2\n")
    overrides = tiny_overrides(
        shapes_root,
        tmp_path / "runs",
        "toy",
        **{
            "model.overrides.width": 4,
            "data.size": "[16,32]",
            "data.pad_to": "[16,32]",
            "logging.sample_every_n_steps": 0,
        },
    )
    with monkeypatch.context() as patch:
        patch.setitem(registry.BACKBONES, "toy", TOY)
        assert main(["fit", str(experiment), *overrides, "--no-progress"]) == 0
        run_dir = tmp_path / "runs" / "toy" / "version_0"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["kind"], summary["steps"], summary["optimizer"]) == ("toy", 2, "adamw")
        assert summary["parameters"] == sum(p.numel() for p in ToyBackbone(256, width=4).parameters())
        assert (run_dir / "samples" / "step_000002.gif").is_file()  # sampled at the end of training
        cfg = load_config(str(experiment), overrides)
        assert module_for(cfg) is EDMVideoModule and presets.forward_flops(ToyBackbone(8), frames=2, size=(4, 4)) > 0
    assert "toy" not in registry.BACKBONES
    # the entry gone, its checkpoint is refused with the kinds there are
    capsys.readouterr()
    assert main(["sample", str(run_dir / "checkpoints" / "last.ckpt"), "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert "or a backbone kind at its defaults: fit, fit_upsampler, dit, unet" in capsys.readouterr().err


def test_a_preset_of_an_unregistered_kind_names_the_known_kinds(monkeypatch, shapes_root, tmp_path):
    cfg = load_config(None, tiny_overrides(shapes_root, tmp_path, "unet_tiny"))
    monkeypatch.setitem(presets.PRESETS, "ghost_tiny", {"kind": "ghost"})
    cfg.model.preset = "ghost_tiny"
    with pytest.raises(ValueError, match="unknown backbone kind 'ghost'; known kinds: fit, fit_upsampler, dit, unet"):
        module_for(cfg)


def test_registry_entries_carry_what_differs_between_the_paper_kinds():
    fit, unet = registry.backbone("fit"), registry.backbone("unet")
    assert fit.self_conditioning and not unet.self_conditioning
    assert (fit.train_flops(1.0), unet.train_flops(1.0), fit.train_flops(1.0, self_cond_prob=0.0)) == (4.0, 3.0, 3.0)
    assert registry.kind_of(presets.build_backbone("fit_tiny", 8, device="meta")) == "fit"
    _, arguments = presets.preset_kwargs("fit_500m")
    assert fit.size_multiple(arguments) == (20, 16)  # why the paper pads 36 -> 40
    assert fit.clip_overrides(arguments, 8, (72, 128)) == {"input_size": (8, 72, 128), "group_size": (8, 5, 4)}
    assert unet.size_multiple(presets.preset_kwargs("unet_284m")[1]) == (8, 8)
    assert unet.clip_overrides({}, 8, (72, 128)) == {}
    with pytest.raises(ValueError, match="unknown backbone kind 'toy'; known kinds: fit, fit_upsampler, dit, unet"):
        registry.backbone("toy")
