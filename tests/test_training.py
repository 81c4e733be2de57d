"""Training end to end at tiny sizes: the real config loader, DataModule (real mp4 files), Lightning Trainer."""

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_overrides
from lit_snapvideo import paper
from lit_snapvideo.config import load_config
from lit_snapvideo.models.presets import forward_flops, preset_kwargs
from lit_snapvideo.module import FITModule, NonFiniteLossError, UNetModule, module_for
from lit_snapvideo.module_loading import load_module
from lit_snapvideo.train import fit

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "ablation"


@pytest.mark.parametrize("name,preset,cls", [("fit", "fit_tiny", FITModule), ("unet", "unet_tiny", UNetModule)])
def test_fast_dev_run_through_real_config(shapes_root, tmp_path, name, preset, cls):
    cfg = load_config(EXPERIMENTS / f"{name}.yaml", tiny_overrides(shapes_root, tmp_path, preset))
    assert module_for(cfg) is cls
    fit(cfg, enable_progress_bar=False, fast_dev_run=2)


def test_ablation_pair_is_built_for_the_ablation_clip():
    """Both ablation configs share the clip; FIT-mini learns its positional table at exactly that clip, the
    U-Net divides into its 4 levels, sigma_in follows the paper's rule s * sqrt(T) (s = width / 64), and the
    pair's forward costs stay within 2x of each other."""
    fit_cfg, unet_cfg = (load_config(EXPERIMENTS / f"{name}.yaml") for name in ("fit", "unet"))
    clip = (fit_cfg.data.frames, *fit_cfg.data.pad_to)
    assert clip == (unet_cfg.data.frames, *unet_cfg.data.pad_to)
    assert fit_cfg.diffusion.sigma_in == unet_cfg.diffusion.sigma_in
    assert fit_cfg.diffusion.sigma_in == pytest.approx(clip[2] / 64 * math.sqrt(clip[0]), abs=0.005)
    assert tuple(preset_kwargs(fit_cfg.model.preset)[1]["input_size"]) == clip
    flops = [forward_flops(cfg.model.preset, clip[0], clip[1:], text_dim=256) for cfg in (fit_cfg, unet_cfg)]
    assert max(flops) / min(flops) < 2.0


@pytest.mark.parametrize("preset", ["fit_tiny", "unet_tiny"])
def test_diffusion_loss_falls_on_a_fixed_batch(shapes_root, tmp_path, preset):
    """The real Snap-EDM path (label dropout off, self-conditioning on for FIT, sigma_in of the config): 30 AdamW
    steps on one batch with one fixed draw of sigma and noise lower its loss by more than a third."""
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.seeding import seeded_generator

    cfg = load_config(
        EXPERIMENTS / f"{preset.split('_')[0]}.yaml",
        tiny_overrides(shapes_root, tmp_path, preset, **{"text.label_dropout": 0.0}),
    )
    cfg.model.overrides = {}  # the preset's own backbone: fit.yaml's conv stem starts slower over 30 steps
    module = module_for(cfg)(cfg)
    dm = EDMDataModule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(module.backbone.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = module.diffusion_loss(batch, seeded_generator(0))[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.65 * losses[0], losses


def test_paper_optimiser_defaults(shapes_root, tmp_path):
    fit_cfg = load_config(None, tiny_overrides(shapes_root, tmp_path, "fit_tiny"))
    unet_cfg = load_config(None, tiny_overrides(shapes_root, tmp_path, "unet_tiny"))
    fit_opt = FITModule(fit_cfg).configure_optimizers()["optimizer"]
    unet_opt = UNetModule(unet_cfg).configure_optimizers()["optimizer"]
    fit_paper, unet_paper = paper.TABLE9["fit"], paper.TABLE9["unet"]
    assert type(fit_opt).__name__ == "Lamb" and fit_opt.defaults["lr"] == fit_paper["lr"]
    assert fit_opt.defaults["betas"] == fit_paper["betas"]
    assert type(unet_opt) is torch.optim.AdamW and unet_opt.defaults["lr"] == unet_paper["lr"]  # decoupled decay
    assert unet_opt.defaults["betas"] == unet_paper["betas"]
    # no decay on norms and biases
    assert {g["weight_decay"] for g in unet_opt.param_groups} == {unet_paper["weight_decay"], 0.0}


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_optimiser_makes_the_same_update_as_the_loop(shapes_root, tmp_path, name):
    """optim.fused (the default) is one kernel over all tensors; its weights follow torch's per-tensor loop."""
    weights = {}
    for fused in (False, True):
        torch.manual_seed(0)
        overrides = {"optim.name": name, "optim.fused": fused}
        module = UNetModule(load_config(None, tiny_overrides(shapes_root, tmp_path, "unet_tiny", **overrides)))
        opt = module.configure_optimizers()["optimizer"]
        assert opt.defaults["fused"] is fused
        params = [p for p in module.backbone.parameters() if p.requires_grad]
        start = torch.cat([p.detach().flatten() for p in params])
        generator = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            opt.step()
        weights[fused] = torch.cat([p.detach().flatten() for p in params])
    update = (weights[False] - start).abs().max()  # 20 Adam steps of about lr each
    assert update > 1e-4 and (weights[False] - weights[True]).abs().max() < 1e-3 * update


def test_lr_schedule_warmup_then_cosine(shapes_root, tmp_path):
    cfg = load_config(
        None, tiny_overrides(shapes_root, tmp_path, "unet_tiny", **{"optim.warmup_steps": 10, "trainer.max_steps": 110})
    )
    m = UNetModule(cfg)
    assert m.lr_factor(0) == pytest.approx(0.1) and m.lr_factor(9) == pytest.approx(1.0)
    assert m.lr_factor(60) == pytest.approx(0.5) and m.lr_factor(110) == pytest.approx(0.0, abs=1e-12)


def test_tensorboard_events_hold_curves_and_sample_gif(shapes_root, tmp_path, monkeypatch):
    from lit_snapvideo.metrics import probe

    # the real probe class, trained for a few steps only (the default recipe takes minutes)
    tiny_probe = probe.train_probe(
        shapes_root,
        frames=8,
        size=(16, 16),
        steps=3,
        batch_size=4,
        max_train=16,
        num_workers=0,
        work_dir=tmp_path / "probe",
    )
    monkeypatch.setattr(probe, "probe_for", lambda cfg, *a, **k: tiny_probe)
    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root,
            tmp_path,
            "fit_tiny",
            **{
                "trainer.max_steps": 4,
                "trainer.val_every_n_steps": 2,
                "logging.sample_every_n_steps": 2,
                "logging.experiment": "tb",
                "data.limit_val_clips": 4,  # the first two have checkered backgrounds: no object metrics
                "logging.quality_every_n_steps": 2,
                "logging.quality_num_videos": 2,
                "logging.quality_steps": 2,
                "trainer.profiler": "simple",
            },
        ),
    )
    run_dir = fit(cfg, enable_progress_bar=False)
    profile_report = (run_dir / "fit-profile.txt").read_text()  # trainer.profiler: seconds per hook
    assert "training_step" in profile_report and "train_dataloader_next" in profile_report
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "val/loss",
        "perf/ms_per_video",
        "perf/videos_per_s",
        "perf/peak_memory_gib",
        "perf/mfu",  # against the matmul probe measured at the start (no peak given)
        "data/skipped_files",
        "quality/prompt_accuracy",
        "quality/color_accuracy",
        "quality/shape_accuracy",
        "quality/probe_fvd",
        "val/object_recovered_sigma_1",
        "val/object_mse_sigma_1",
        "val/background_mse_sigma_3",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    assert any(t.startswith("train/loss_sigma_q") for t in scalars)
    images = events.Images("samples/grid")
    assert images and images[-1].encoded_image_string[:6] in (b"GIF87a", b"GIF89a")
    legend = events.SummaryMetadata("samples/grid").summary_description  # the grid names its prompts
    assert "1. a red circle moving left on a black background" in legend
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_val_loss"] > 0 and summary["train_ms_per_video"] > 0
    recovered = events.Scalars("val/object_recovered_sigma_1")[-1].value
    assert summary["final_object_recovered"]["1"] == pytest.approx(recovered, abs=1e-6)
    assert summary["clip"] == [cfg.data.frames, *cfg.data.pad_to]
    assert summary["mfu_reference_tflops"] > 0 and 0 < summary["train_mfu"] < 5  # a moment's probe, not a bound
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run_dir / "samples").glob("*.gif")) == ["step_000002.gif", "step_000004.gif"]
    from lit_snapvideo.report import plot_curves

    assert plot_curves([run_dir], tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _final_state(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt


@pytest.mark.parametrize("preset", ["fit_tiny", "unet_tiny"])
def test_resume_equals_uninterrupted(shapes_root, tmp_path, preset):
    """2N steps in one run == N steps, resume, N steps: weights, EMA, optimiser state, within 1e-6."""
    n = 3
    common = {"logging.sample_every_n_steps": 0, "trainer.val_every_n_steps": 100, "optim.warmup_steps": 2}
    one = load_config(
        None,
        tiny_overrides(
            shapes_root, tmp_path, preset, **common, **{"trainer.max_steps": 2 * n, "logging.experiment": "straight"}
        ),
    )
    straight = _final_state(fit(one, enable_progress_bar=False))

    half = load_config(
        None,
        tiny_overrides(
            shapes_root, tmp_path, preset, **common, **{"trainer.max_steps": 2 * n, "logging.experiment": "resumed"}
        ),
    )
    fit(half, enable_progress_bar=False, max_steps=n)  # stop half way (same schedule length)
    again = load_config(
        None,
        tiny_overrides(
            shapes_root, tmp_path, preset, **common, **{"trainer.max_steps": 2 * n, "logging.experiment": "resumed"}
        ),
    )
    resumed = _final_state(fit(again, enable_progress_bar=False))

    assert straight["global_step"] == resumed["global_step"] == 2 * n
    a, b = straight["state_dict"], resumed["state_dict"]
    assert set(a) == set(b) and any(k.startswith("ema_backbone.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(a["videos_seen"], torch.zeros((), dtype=torch.float64))
    for sa, sb in zip(
        straight["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()
    ):
        for k in sa:
            if torch.is_tensor(sa[k]):
                torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)


class NaNAfter(torch.nn.Module):
    """Wraps a backbone; its output turns NaN from call ``start`` on (a forced fault)."""

    def __init__(self, inner, start):
        super().__init__()
        self.inner, self.start, self.calls = inner, start, 0
        self.snapshot = None  # the weights when the first NaN came out

    def forward(self, x, c_noise, cond, self_cond=None):
        self.calls += 1
        if self.calls == self.start:
            self.snapshot = {k: v.detach().clone() for k, v in self.inner.state_dict().items()}
        F, state = self.inner(x, c_noise, cond, self_cond)
        return (F * float("nan") if self.calls >= self.start else F), state


def test_nonfinite_loss_skips_then_stops(shapes_root, tmp_path):
    from lit_snapvideo.train import build_trainer
    from lit_snapvideo.data.datamodule import EDMDataModule

    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root,
            tmp_path,
            "unet_tiny",
            **{"optim.max_nonfinite_steps": 3, "trainer.max_steps": 20, "logging.sample_every_n_steps": 0},
        ),
    )
    module = UNetModule(cfg)
    module.backbone = NaNAfter(module.backbone, start=3)
    module.__dict__["_train_forward"] = module.backbone
    trainer, _ = build_trainer(
        cfg,
        tmp_path / "nan_run",
        module,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[],
    )
    with pytest.raises(NonFiniteLossError, match="3 steps in a row.*optim.lr"):
        trainer.fit(module, datamodule=EDMDataModule(cfg))
    assert module.nonfinite_total == 3 and module.backbone.calls == 2 + 3
    for key, value in module.backbone.inner.state_dict().items():  # the NaN steps changed no weight
        assert torch.equal(value, module.backbone.snapshot[key]), key


def test_checkpoint_loads_back_and_has_clean_keys(shapes_root, tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root, tmp_path, "fit_tiny", **{"trainer.max_steps": 2, "logging.sample_every_n_steps": 0}
        ),
    )
    run_dir = fit(cfg, enable_progress_bar=False)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].keys()
    assert not any("_orig_mod" in k or k.startswith("text_encoder.") for k in keys)
    module = load_module(str(ckpt))
    assert isinstance(module, FITModule)
    video = module.generate(["a red circle moving left on a black background"], steps=2, cfg_scale=1.0)
    assert video.shape == (1, 3, 8, 16, 16) and torch.isfinite(video).all()


class WorseningValidation(FITModule):
    """A forced fault: the validation loss rises at every validation, so best.ckpt stays at the first one."""

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.global_step), batch_size=batch["video"].shape[0])


def test_last_checkpoint_is_the_newest_state(shapes_root, tmp_path):
    """last.ckpt follows every validation (also when val/loss got worse) and the end of training (step 5 is no
    validation step); best.ckpt keeps the lowest val/loss."""
    from lit_snapvideo.data.datamodule import EDMDataModule
    from lit_snapvideo.train import build_trainer

    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root,
            tmp_path,
            "fit_tiny",
            **{"trainer.max_steps": 5, "trainer.val_every_n_steps": 2, "logging.sample_every_n_steps": 0},
        ),
    )
    module = WorseningValidation(cfg)
    steps_at_validation = []
    trainer, parts = build_trainer(cfg, tmp_path / "runs" / "run" / "version_0", module, enable_progress_bar=False)
    saved = parts["checkpoint"]
    on_validation_end = saved.on_validation_end

    def record(trainer, pl_module):
        on_validation_end(trainer, pl_module)
        steps_at_validation.append(torch.load(saved.last_model_path, weights_only=True)["global_step"])

    saved.on_validation_end = record
    trainer.fit(module, datamodule=EDMDataModule(cfg))
    assert steps_at_validation == [2, 4]
    checkpoints = tmp_path / "runs" / "run" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.slow
def test_compiled_backbone_saves_clean_keys(shapes_root, tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root,
            tmp_path,
            "unet_tiny",
            **{"trainer.max_steps": 2, "logging.sample_every_n_steps": 0, "model.compile": True},
        ),
    )
    run_dir = fit(cfg, enable_progress_bar=False)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)
    assert isinstance(load_module(str(ckpt)), UNetModule)
