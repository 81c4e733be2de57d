"""The EMA update against EDM's, computed by hand from the live weights after each real optimiser step."""

import lightning as L
import torch

from conftest import tiny_overrides
from lit_snapvideo.config import load_config
from lit_snapvideo.data.datamodule import EDMDataModule
from lit_snapvideo.module import UNetModule
from lit_snapvideo.train import build_trainer

HALFLIFE, RAMPUP, BATCH, STEPS = 3.0, 1.0, 2, 3


class Recorder(L.Callback):
    """The EMA weights before training and, after each step, the live and EMA weights (float64 copies)."""

    def __init__(self):
        self.ema_start, self.live, self.ema = None, [], []

    @staticmethod
    def _copy(net: torch.nn.Module) -> dict:
        return {k: v.detach().double().clone() for k, v in net.state_dict().items()}

    def on_train_start(self, trainer, module):
        self.ema_start = self._copy(module.ema_backbone)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # after optimizer_step's EMA update
        self.live.append(self._copy(module.backbone))
        self.ema.append(self._copy(module.ema_backbone))


def test_ema_follows_the_edm_update_with_rampup(shapes_root, tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            shapes_root,
            tmp_path,
            "unet_tiny",
            **{
                "trainer.max_steps": STEPS,
                "data.batch_size": BATCH,
                "logging.sample_every_n_steps": 0,
                "optim.ema_halflife_videos": HALFLIFE,
                "optim.ema_rampup_ratio": RAMPUP,
                "optim.warmup_steps": 0,
                "optim.lr": 1e-2,
            },
        ),
    )  # steps large enough that the EMA, the live weights and the start all differ
    module = UNetModule(cfg)
    recorder = Recorder()
    trainer, _ = build_trainer(
        cfg,
        tmp_path / "ema_run",
        module,
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[recorder],
        val_check_interval=None,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=EDMDataModule(cfg))
    assert len(recorder.live) == STEPS and float(module.videos_seen) == STEPS * BATCH

    parameters = {name for name, _ in module.backbone.named_parameters()}
    expected = recorder.ema_start
    betas = []
    for step, live in enumerate(recorder.live, 1):
        # EDM: the half-life (in videos) ramps up with the videos seen, then beta = 0.5 ** (batch / half-life)
        halflife = min(HALFLIFE, step * BATCH * RAMPUP)
        beta = 0.5 ** (BATCH / halflife)
        betas.append(beta)
        expected = {k: beta * expected[k] + (1 - beta) * live[k] if k in parameters else live[k] for k in live}
        for key, value in recorder.ema[step - 1].items():
            assert torch.allclose(value, expected[key], rtol=0, atol=1e-6), (step, key)
    assert betas == [0.5, 0.5 ** (2 / 3), 0.5 ** (2 / 3)]  # the ramp-up, then the cap
    # the check has teeth: the EMA is neither the live weights nor the start
    final_live, final_ema = recorder.live[-1], recorder.ema[-1]
    assert max((final_ema[k] - final_live[k]).abs().max().item() for k in parameters) > 1e-3
    assert max((final_ema[k] - recorder.ema_start[k]).abs().max().item() for k in parameters) > 1e-3
