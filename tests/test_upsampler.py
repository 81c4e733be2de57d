"""The cascade's second stage (issue 21): the FIT upsampler, its data, its stage-1 initialisation, two-stage sampling."""

import json

import decord
import pytest
import torch
from torch import nn

from conftest import tiny_overrides
from lit_snapvideo import paper
from lit_snapvideo.cli import main
from lit_snapvideo.config import ConfigError, load_config
from lit_snapvideo.models.presets import build_backbone, count_parameters, example_inputs, forward_flops
from lit_snapvideo.models.registry import kind_of
from lit_snapvideo.models.init_from import init_from_stage1
from lit_snapvideo.models.upsampler import FITUpsampler
from lit_snapvideo.safe_load import CheckpointError

TEXT_DIM = 16


def upsampler_overrides(root, run_root, **extra) -> list[str]:
    """tiny_overrides for fit_up_tiny's pairs: 8 x 16 x 32 low-res clips upsampled x2 to 8 x 32 x 64."""
    sizes = {"data.size": "[32,64]", "data.pad_to": "[32,64]", "data.low_res_size": "[16,32]"}
    return tiny_overrides(root, run_root, "fit_up_tiny", **{**sizes, **extra})


def randomise(model: nn.Module) -> nn.Module:
    """Every zero-initialised output random, so that every input can show in the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return model


def test_paper_upsampler_preset_is_table_8():
    model = build_backbone("fit_3_9b_upsampler", 1024, device="meta")
    assert isinstance(model, FITUpsampler) and kind_of(model) == "fit_upsampler"
    table = paper.TABLE8["fit_3_9b_upsampler"]
    assert (model.group_size, model.num_latents, model.latent_dim, model.scale) == ((16, 18, 16), 768, 3072, 8)
    assert model.blocks[0].compute[0].attn.heads == table["latent_dim"] // table["latent_head_dim"]
    grid, groups = model.layout(16, 288, 512)
    assert grid == (16, 72, 128) and grid[0] * grid[1] * grid[2] == 147_456  # Table 8's patch tokens
    assert groups == (1, 4, 8) and model.low_res_size(288, 512) == (36, 64)  # 32 groups; the first stage's clip
    # the first stage's weights are untouched: same parameter count as ever, the upsampler a little larger
    assert count_parameters("fit_3_9b", 1024) == 4_013_010_992
    assert 0 < count_parameters("fit_3_9b_upsampler", 1024) - count_parameters("fit_3_9b", 1024) < 0.2e9
    assert forward_flops("fit_3_9b_upsampler", 16, (288, 512)) > 3 * forward_flops("fit_3_9b")


@pytest.mark.parametrize("preset,clip", [("fit_up_tiny", (8, 32, 64)), ("fit_up_mini", (8, 48, 80))])
def test_shapes_at_small_sizes(preset, clip):
    model = build_backbone(preset, TEXT_DIM)
    x, c_noise, cond = example_inputs(2, clip[0], clip[1:], text_len=3, text_dim=TEXT_DIM, model=model)
    assert cond["low_res"].shape == (2, 3, clip[0], clip[1] // model.scale, clip[2] // model.scale)
    out, latents = model(x, c_noise, cond)
    assert out.shape == x.shape and latents.shape == (2, model.num_latents, model.latent_dim)
    assert model.patch_embed[0].in_features == 6 * 16 and model.out_proj.out_features == 3 * 16  # 6 in, 3 out


def test_divisibility_and_bad_inputs_are_clear_errors():
    model = build_backbone("fit_up_tiny", TEXT_DIM)
    x, c_noise, cond = example_inputs(1, 8, (32, 64), text_len=2, text_dim=TEXT_DIM, model=model)
    with pytest.raises(ValueError, match=r"cond\['low_res'\] has shape .* expected \(1, 3, 8, 16, 32\)"):
        model(x, c_noise, {**cond, "low_res": cond["low_res"][..., :-1]})
    with pytest.raises(ValueError, match="lacks \\['aug_sigma'\\]"):
        model(x, c_noise, {k: v for k, v in cond.items() if k != "aug_sigma"})
    with pytest.raises(ValueError, match="not divisible by the upsampling scale 2"):
        model.low_res_size(33, 64)
    with pytest.raises(ValueError, match="not divisible by group size"):
        model(torch.zeros(1, 3, 8, 32, 40), c_noise, {**cond, "low_res": torch.zeros(1, 3, 8, 16, 20)})


def test_config_names_the_low_res_setting(shapes_root, tmp_path):
    base = tiny_overrides(shapes_root, tmp_path, "fit_up_tiny", **{"data.size": "[32,64]", "data.pad_to": "[32,64]"})
    with pytest.raises(
        ConfigError, match=r"data.low_res_size.*expected data.low_res_size = data.size / 2 = \[16, 32\]"
    ):
        load_config(None, base)
    with pytest.raises(ConfigError, match="data.low_res_size=\\[8,8\\].*expected"):
        load_config(None, base + ["data.low_res_size=[8,8]"])
    assert list(load_config(None, base + ["data.low_res_size=[16,32]"]).data.low_res_size) == [16, 32]
    with pytest.raises(ConfigError, match="not an upsampler"):
        load_config(None, tiny_overrides(shapes_root, tmp_path, "fit_tiny") + ["data.low_res_size=[8,8]"])
    with pytest.raises(ConfigError, match="model.init_from.*a stage-1 checkpoint file"):
        load_config(None, base + ["data.low_res_size=[16,32]", f"model.init_from={tmp_path / 'none.ckpt'}"])


def test_aug_sigma_reaches_the_network():
    model = randomise(build_backbone("fit_up_tiny", TEXT_DIM)).eval()
    x, c_noise, cond = example_inputs(2, 8, (32, 64), text_len=2, text_dim=TEXT_DIM, model=model)
    out = model(x, c_noise, cond)[0]
    other = model(x, c_noise, {**cond, "aug_sigma": cond["aug_sigma"] + 0.3})[0]
    assert not torch.allclose(out, other, atol=1e-5)  # the level is a conditioning token
    moved = model(x, c_noise, {**cond, "low_res": cond["low_res"] + 0.5})[0]
    assert not torch.allclose(out, moved, atol=1e-5)  # and the low-res video is an input
    # the tokens: [sigma, fps, size, aug, text...]
    tokens, mask, _ = model.cond_embed(c_noise, cond)
    assert tokens.shape[1] == 4 + 2 and mask.all()


def test_module_noise_augmentation(shapes_root, tmp_path):
    from lit_snapvideo.module import EDMVideoModule
    from lit_snapvideo.seeding import seeded_generator

    cfg = load_config(
        None, upsampler_overrides(shapes_root, tmp_path) + ["upsampler.aug_sigma_max=0.8", "upsampler.aug_sigma=0.25"]
    )
    module = EDMVideoModule(cfg)
    low = torch.zeros(64, 3, 8, 16, 32)
    batch = {
        "caption": ["a red circle"] * 64,
        "fps": torch.full((64,), 8.0),
        "orig_size": torch.full((64, 2), 64.0),
        "low_res": low,
    }
    train = module.make_cond(batch, drop_generator=seeded_generator(0))
    levels = train["aug_sigma"]
    assert levels.shape == (64,) and 0 <= levels.min() and levels.max() <= 0.8 and levels.std() > 0.1  # U[0, 0.8]
    measured = train["low_res"].flatten(1).std(1)  # the noise added is of the drawn level
    assert torch.allclose(measured, levels, atol=0.03)
    fixed = module.make_cond(batch)  # validation / sampling: the setting
    assert torch.all(fixed["aug_sigma"] == 0.25) and abs(float(fixed["low_res"].std()) - 0.25) < 0.01
    with pytest.raises(ValueError, match="needs 'low_res'"):
        module.make_cond({k: v for k, v in batch.items() if k != "low_res"})


def test_residual_mode_diffuses_the_scaled_residual_and_adds_bicubic_back(shapes_root, tmp_path, monkeypatch):
    """upsampler.residual_scale: the diffusion runs on (video - bicubic(low_res)) x scale, sampling inverts it."""
    from lit_snapvideo.module import EDMVideoModule
    from lit_snapvideo.models.upsampler import bicubic_upsample
    from lit_snapvideo.seeding import seeded_generator

    cfg = load_config(None, upsampler_overrides(shapes_root, tmp_path) + ["upsampler.residual_scale=8"])
    module = EDMVideoModule(cfg)
    torch.manual_seed(0)
    low = torch.rand(2, 3, 8, 16, 32) * 2 - 1
    video = torch.rand(2, 3, 8, 32, 64) * 2 - 1
    batch = {"caption": ["a red circle"] * 2, "fps": torch.full((2,), 8.0), "orig_size": torch.full((2, 2), 64.0)}
    batch.update(low_res=low, video=video, is_image=torch.zeros(2, dtype=torch.bool))
    residual = module.diffused(batch)
    # independent: the bicubic frame by frame with torch's own interpolate, times the scale
    frame = torch.nn.functional.interpolate(low[:, :, 3], size=(32, 64), mode="bicubic", align_corners=False)
    assert torch.allclose(residual[:, :, 3], (video[:, :, 3] - frame) * 8, atol=1e-5)
    assert torch.allclose(module.from_diffused(residual, low), video, atol=1e-5)  # the inverse
    # the loss regresses the residual: a video that is exactly the bicubic upsampling has residual 0 (loss = pure noise)
    flat = {**batch, "video": bicubic_upsample(low, (32, 64))}
    assert module.diffused(flat).abs().max() < 1e-6
    loss, _ = module.diffusion_loss(flat, seeded_generator(0))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    # sampling returns bicubic + residual / scale: a denoiser that always says "residual 0" gives the bicubic video
    monkeypatch.setattr(module.edm, "denoise", lambda net, x, *a, **k: (torch.zeros_like(x), None))
    out = module.generate(["a red circle"] * 2, steps=3, cfg_scale=1.0, low_res=low, aug_sigma=0.0)
    assert torch.allclose(out, bicubic_upsample(low, (32, 64)).clamp(-1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="residual_scale=8"):
        module.generate(["a red circle"], steps=2, low_res=low[:1], threshold_percentile=0.99)
    off = EDMVideoModule(load_config(None, upsampler_overrides(shapes_root, tmp_path)))
    assert off.residual_scale == 0 and torch.equal(off.diffused(batch), video)  # the default: the video itself


def test_datamodule_serves_high_and_low_res_pairs(shapes_root, tmp_path):
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.models.upsampler import bicubic_upsample

    dm = EDMDataModule(load_config(None, upsampler_overrides(shapes_root, tmp_path)))
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (2, 3, 8, 32, 64) and batch["low_res"].shape == (2, 3, 8, 16, 32)
    # the same clip: the low-res version upsampled is close to the high-res one (not another clip or frame)
    error = (bicubic_upsample(batch["low_res"], (32, 64)) - batch["video"]).abs().mean()
    assert error < 0.1, error


@pytest.fixture(scope="module")
def upsampler_checkpoint(shapes_root, tiny_checkpoint, tmp_path_factory):
    """A 2-step fit_up_tiny run (8 x 16 x 32 -> 8 x 32 x 64) initialised from the tiny stage-1 checkpoint."""
    from lit_snapvideo.train import fit

    run_root = tmp_path_factory.mktemp("up_runs")
    cfg = load_config(
        None,
        upsampler_overrides(
            shapes_root,
            run_root,
            **{
                "trainer.max_steps": 2,
                "logging.sample_every_n_steps": 0,
                "logging.experiment": "up",
                "model.init_from": str(tiny_checkpoint),
            },
        ),
    )
    return fit(cfg, enable_progress_bar=False) / "checkpoints" / "last.ckpt"


def test_init_from_stage1_loads_every_compatible_weight_and_reports_the_rest(tiny_checkpoint, upsampler_checkpoint):
    from lit_snapvideo.module_loading import load_module

    model = build_backbone("fit_up_tiny", 256)
    report = init_from_stage1(model, tiny_checkpoint)
    assert report["resized"] == ["pos_embed", "patch_embed.0.weight"]
    assert report["new"] == [f"cond_embed.aug.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    assert report["dropped"] == []
    stage1 = load_module(str(tiny_checkpoint)).ema_backbone.state_dict()
    state = model.state_dict()
    assert set(report["loaded"]) == set(state) - set(report["resized"]) - set(report["new"])
    assert "latent_embed" in report["loaded"]
    for key in report["loaded"]:
        assert torch.equal(state[key], stage1[key]), key
    assert state["pos_embed"].shape == (8, 8, 16, 32) and stage1["pos_embed"].shape == (
        8,
        4,
        4,
        32,
    )  # fit_tiny learns 8x16x16
    weight = state["patch_embed.0.weight"].view(32, 16, 6)
    assert torch.equal(weight[..., :3], stage1["patch_embed.0.weight"].view(32, 16, 3)) and not weight[..., 3:].any()
    # the training run logged the same report and started from those weights
    saved = json.loads((upsampler_checkpoint.parent.parent / "init_report.json").read_text())
    assert saved["resized"] == report["resized"] and saved["new"] == report["new"]


def test_init_from_refuses_other_checkpoints(tmp_path, shapes_root, tiny_checkpoint):
    from lit_snapvideo.train import fit

    overrides = {"trainer.max_steps": 1, "logging.sample_every_n_steps": 0, "data.size": "[16,32]"}
    cfg = load_config(
        None, tiny_overrides(shapes_root, tmp_path, "unet_tiny", **overrides, **{"data.pad_to": "[16,32]"})
    )
    unet = fit(cfg, enable_progress_bar=False) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="a 'unet' checkpoint.*stage-1 FIT"):
        init_from_stage1(build_backbone("fit_up_tiny", 256), unet)
    with pytest.raises(CheckpointError, match="do not fit this model.*widths"):  # fit_tiny weights, fit_mini widths
        init_from_stage1(build_backbone("fit_up_mini", 256), tiny_checkpoint)
    notes = tmp_path / "notes.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, notes)
    with pytest.raises(CheckpointError, match="not a lit-snapvideo checkpoint"):
        init_from_stage1(build_backbone("fit_up_tiny", 256), notes)


def test_two_stage_sampling_writes_both_resolutions(tiny_checkpoint, upsampler_checkpoint, tmp_path):
    out = tmp_path / "cascade"
    args = ["sample", str(tiny_checkpoint), "--upsampler", str(upsampler_checkpoint), "--out", str(out)]
    rc = main(
        [
            *args,
            "--prompt",
            "a red circle moving left",
            "--prompt",
            "a blue square",
            "--steps",
            "2",
            "--upsampler-steps",
            "2",
            "--aug-sigma",
            "0.05",
        ]
    )
    assert rc == 0
    for name, hw in (("000.mp4", (32, 64)), ("000_lowres.mp4", (16, 32)), ("001.mp4", (32, 64))):
        reader = decord.VideoReader(str(out / name))
        assert len(reader) == 8 and reader[0].shape == (*hw, 3), name
    assert (out / "grid.gif").is_file() and (out / "grid_lowres.gif").is_file()


def test_two_stage_sampling_errors(tiny_checkpoint, upsampler_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["sample", str(tiny_checkpoint), "--prompt", "x", "--aug-sigma", "0.1", "--out", out]) == 2
    assert "--aug-sigma is the upsampler's setting" in capsys.readouterr().err
    assert main(["sample", str(upsampler_checkpoint), "--prompt", "x", "--out", out]) == 2
    assert "is an upsampler" in capsys.readouterr().err
    assert (
        main(["sample", str(tiny_checkpoint), "--upsampler", str(tiny_checkpoint), "--prompt", "x", "--out", out]) == 2
    )
    assert "is not an upsampler" in capsys.readouterr().err


def test_upsampler_eval_writes_png_and_psnr(upsampler_checkpoint, tmp_path, capsys):
    png, md = tmp_path / "up.png", tmp_path / "up.md"
    rc = main(
        [
            "upsampler-eval",
            str(upsampler_checkpoint),
            "--num-videos",
            "2",
            "--steps",
            "1",
            "2",
            "--png",
            str(png),
            "--out",
            str(md),
            "--aug-sigma",
            "0",
            "0.1",
        ]
    )
    assert rc == 0
    result = json.loads(md.with_suffix(".json").read_text())
    assert result["num_videos"] == 2 and set(result["upsampler_psnr"]) == {"1", "2"}
    assert all(set(levels) == {"0.0", "0.1"} for levels in result["upsampler_psnr"].values())
    assert "| upsampler, 1 step, aug_sigma 0.1 |" in md.read_text()
    assert 5 < result["bicubic_psnr"] < 60
    assert png.read_bytes()[:4] == b"\x89PNG" and "bicubic" in capsys.readouterr().out
