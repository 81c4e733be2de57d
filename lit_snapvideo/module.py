"""EDMVideoModule: one LightningModule trains either backbone under Snap-EDM (README: "The math").

    batch -> text encoder (frozen, cached) -> label dropout -> sigma ~ log-normal, eps ~ N(0, I)
          -> x_sigma = x / sigma_in + sigma eps -> edm (c_in, c_noise) -> backbone -> F -> w (F - c_nrm v)^2

The backbone's kind (``models/registry.py``) sets what differs between backbones: the paper's optimiser (Tab. 9:
AdamW, lr 1e-4, betas (0.9, 0.999) for the U-Net; timm's LAMB, lr 5e-3, betas (0.9, 0.99) for FIT; weight decay 0.01)
and latent self-conditioning (FIT, p = 0.9): a first forward pass without gradient gives latents, zeroed for 10% of
the batch, that the trained second pass receives (pix2seq's ``self_cond_by_masking``). ``optim.*`` in the config
overrides the optimiser. :class:`UNetModule` and :class:`FITModule` name the two paper kinds' modules;
``module_for(cfg)`` picks the module of the configured preset (any registered kind).

Determinism: a training example's random draws (sigma, eps, label dropout, self-conditioning mask) come from a
generator seeded by (seed, the example's ``key``: its draw seed in the data stream), dropout inside the backbone from
(seed, global step, rank). So a resumed run repeats an uninterrupted one exactly, and an example's loss does not
depend on the rank or batch it lands in: DDP at per-rank batch B follows one process at batch B x world size.
DDP: the global batch is ``data.batch_size`` x world size (Lightning averages the gradients); the EMA counts the videos
of all ranks; ``train/loss`` and the validation losses are averaged over ranks; a non-finite loss on any rank skips
the step on every rank.
FSDP (``trainer.strategy=fsdp``, sharding.py): the same, with the weights, gradients, optimiser state and the EMA
sharded over the ranks; the module clips the gradients through FSDP (:meth:`configure_gradient_clipping`), and
sampling and validation run on every rank (each forward pass gathers the weights), rank 0 alone writing files.
EMA: EDM-style, half-life counted in videos (``optim.ema_halflife_videos``) with EDM's ramp-up; the EMA backbone is
a submodule, so checkpoints carry it, and sampling and validation use it.
Sampling (``generate``) is :class:`~.module_sampling.SamplingMixin`'s.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Callable, Mapping, Optional

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from .edm import SnapEDM
from .models import registry
from .models.presets import build_backbone, preset_kwargs
from .models.text import NULL_CAPTION, TextEncoder
from .models.upsampler import bicubic_upsample
from .module_objects import ObjectScoresMixin
from .module_sampling import SamplingMixin
from .safe_load import CheckpointError
from .seeding import mix_seed, seeded_generator
from .sharding import fsdp_root

log = logging.getLogger(__name__)

# fixed grid for the validation loss: comparable across runs and architectures (same sigmas, same noise); it
# reaches diffusion.sigma_max, where the sampler starts (val/loss averages the grid; val/loss_low its sigmas <= 3)
VAL_SIGMAS = (0.02, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
LOW_VAL_SIGMA = 3.0
# the frozen text tower is rebuilt from cfg.text (seeded init or the user's file), so checkpoints do not store it:
# the one exception to strict loading
UNSTORED_PREFIX = "text_encoder."


class NonFiniteLossError(RuntimeError):
    """Raised after ``optim.max_nonfinite_steps`` consecutive non-finite losses."""


Generators = torch.Generator | list[torch.Generator]


def draw(generator: Generators, n: int, make: Callable[[int, torch.Generator], Tensor]) -> Tensor:
    """``make(n, generator)`` from one generator for the batch, or ``make(1, g)`` stacked over a list of ``n``
    per-example generators."""
    if isinstance(generator, torch.Generator):
        return make(n, generator)
    assert len(generator) == n, (len(generator), n)
    return torch.cat([make(1, g) for g in generator])


class EDMVideoModule(SamplingMixin, ObjectScoresMixin, L.LightningModule):
    """Trains ``backbone(x, c_noise, cond, self_cond) -> (F, state)`` with the Snap-EDM loss.

    Args:
        cfg: the experiment config (``config.ExperimentConfig``), stored in the checkpoint's hyperparameters.
        backbone: an already-built backbone (tests, benchmarks); default builds ``cfg.model.preset``.
        text_encoder: an already-built text encoder; default builds ``cfg.text``.
    """

    kind: Optional[str] = None  # a backbone kind of models/registry.py; None: the configured preset's

    def __init__(
        self, cfg: DictConfig | dict, backbone: Optional[nn.Module] = None, text_encoder: Optional[TextEncoder] = None
    ) -> None:
        super().__init__()
        cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        kind = backbone_kind(cfg)
        if self.kind not in (None, kind):
            raise ValueError(
                f"{type(self).__name__} trains '{self.kind}' backbones; model.preset={cfg.model.preset} is a '{kind}'"
            )
        self.kind = kind
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.cfg = cfg
        self.edm = SnapEDM.from_config(cfg.diffusion)
        self.text_encoder = text_encoder or TextEncoder(
            cfg.text.encoder,
            checkpoint=cfg.text.checkpoint,
            max_length=cfg.text.max_length,
            cache_dir=cfg.text.cache_dir,
        )
        self.text_encoder.requires_grad_(False)
        self.backbone = backbone or build_backbone(
            cfg.model.preset,
            text_dim=self.text_encoder.dim,
            overrides=OmegaConf.to_container(cfg.model.overrides, resolve=True),
            grad_checkpointing=cfg.model.grad_checkpointing,
        )
        self.ema_backbone = copy.deepcopy(self.backbone).requires_grad_(False).eval()
        self.register_buffer("videos_seen", torch.zeros((), dtype=torch.float64))
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.unaveraged_videos = 0  # videos of this rank trained on since the last EMA update
        # torch.compile wraps the backbone only, kept outside the module tree so state_dict keys stay clean
        self.__dict__["_compiled"] = torch.compile(self.backbone) if cfg.model.compile else None

    @property
    def _train_forward(self) -> Callable:
        """The backbone as training calls it: compiled (``model.compile``) or not. Under FSDP ``self.backbone`` is
        the FSDP unit that replaced the built module, and that unit must be called."""
        return self.__dict__["_compiled"] if self.__dict__["_compiled"] is not None else self.backbone

    @property
    def sharded(self) -> bool:
        """Training under FSDP: every forward pass (also sampling) must run on every rank."""
        return fsdp_root(self) is not None

    @property
    def spec(self) -> registry.Backbone:
        """The registry entry of this module's backbone kind."""
        return registry.backbone(self.kind)

    @property
    def uses_self_conditioning(self) -> bool:
        return self.spec.self_conditioning

    # ---- conditioning ---------------------------------------------------------------------

    def encode_text(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        emb, mask = self.text_encoder.encode(list(captions))
        return emb.to(self.device), mask.to(self.device)

    def make_cond(
        self,
        batch: dict,
        drop_generator: Optional[Generators] = None,
        noise_generator: Optional[Generators] = None,
        aug_sigma: Optional[float] = None,
    ) -> dict:
        """Backbone conditioning from a batch; with ``drop_generator``, label dropout replaces captions by the null
        caption with probability ``text.label_dropout`` (classifier-free guidance training).

        An upsampler also gets ``low_res`` (``batch["low_res"]`` plus Gaussian noise) and its level ``aug_sigma``:
        noise conditioning augmentation, the level drawn per example from U[0, upsampler.aug_sigma_max] in training
        (``drop_generator`` given), else ``aug_sigma`` (default ``upsampler.aug_sigma``); the noise comes from
        ``noise_generator`` (else ``drop_generator``, else a fixed seed)."""
        cond = self._text_cond(batch, drop_generator)
        if self.spec.upsampler:
            cond.update(self.augmented_low_res(batch, drop_generator, noise_generator, aug_sigma))
        return cond

    def augmented_low_res(
        self,
        batch: dict,
        level_generator: Optional[Generators] = None,
        noise_generator: Optional[Generators] = None,
        aug_sigma: Optional[float] = None,
    ) -> dict:
        """{"low_res": (B, 3, T, h, w) batch["low_res"] + aug_sigma * eps, "aug_sigma": (B,)}; see :meth:`make_cond`."""
        if "low_res" not in batch:
            raise ValueError(
                f"model.preset={self.cfg.model.preset} is an upsampler: the batch needs 'low_res' (set data.low_res_size)"
            )
        low = batch["low_res"].to(self.device, torch.float32)
        b = low.shape[0]
        if level_generator is not None:
            top = self.cfg.upsampler.aug_sigma_max
            level = draw(level_generator, b, lambda n, g: torch.rand(n, generator=g)) * top
        else:
            level = torch.full((b,), float(self.cfg.upsampler.aug_sigma if aug_sigma is None else aug_sigma))
        generator = noise_generator or level_generator or seeded_generator(54321)
        eps = draw(generator, b, lambda n, g: torch.randn((n, *low.shape[1:]), generator=g))
        level = level.to(self.device)
        return {"low_res": low + level.view(-1, 1, 1, 1, 1) * eps.to(self.device), "aug_sigma": level}

    def _text_cond(self, batch: dict, drop_generator: Optional[Generators] = None) -> dict:
        captions = list(batch["caption"])
        if drop_generator is not None and self.cfg.text.label_dropout > 0:
            drop = (
                draw(drop_generator, len(captions), lambda n, g: torch.rand(n, generator=g))
                < self.cfg.text.label_dropout
            )
            captions = [NULL_CAPTION if d else c for c, d in zip(captions, drop.tolist())]
        text, mask = self.encode_text(captions)
        fps = batch["fps"].to(self.device, torch.float32)
        if not self.cfg.data.images_as_videos:  # Table 3 row (iv): stills get an ordinary frame rate, not infinity
            fps = torch.where(torch.isinf(fps), torch.full_like(fps, self.cfg.data.val_fps), fps)
        return {
            "text": text,
            "text_mask": mask,
            "fps": fps,
            "orig_size": batch["orig_size"].to(self.device, torch.float32),
        }

    # ---- what the diffusion runs on: the video, or an upsampler's residual over bicubic ------

    @property
    def residual_scale(self) -> float:
        """An upsampler's ``upsampler.residual_scale`` (0: it diffuses the video itself); 0 for other backbones."""
        # .get: checkpoints written before the setting existed diffuse the video
        return float(self.cfg.upsampler.get("residual_scale", 0.0)) if self.spec.upsampler else 0.0

    def diffused(self, batch: dict) -> Tensor:
        """(B, 3, T, H, W): what the diffusion denoises, the batch's video, or with ``upsampler.residual_scale`` > 0
        (video - bicubic(batch["low_res"])) x residual_scale; the clean low-res, not the augmented one, because
        sampling adds back the bicubic upsampling of the clean input (:meth:`from_diffused`)."""
        video = batch["video"].to(self.device, torch.float32)
        if not self.residual_scale:
            return video
        base = bicubic_upsample(batch["low_res"].to(self.device, torch.float32), tuple(video.shape[-2:]))
        return (video - base) * self.residual_scale

    def from_diffused(self, x: Tensor, low_res: Optional[Tensor]) -> Tensor:
        """The inverse of :meth:`diffused`: x (B, 3, T, H, W) sampled -> the video (unclamped)."""
        if not self.residual_scale:
            return x
        return bicubic_upsample(low_res.to(x.device, x.dtype), tuple(x.shape[-2:])) + x / self.residual_scale

    def sigma_in_for(self, batch: dict) -> Tensor | float:
        """Per-sample sigma_in: Table 3 row (iv) gives still images their own ``diffusion.image_sigma_in``."""
        d = self.cfg.diffusion
        if d.image_sigma_in is None:
            return d.sigma_in
        is_image = batch["is_image"].to(self.device)
        return torch.where(is_image, torch.tensor(d.image_sigma_in), torch.tensor(d.sigma_in)).to(self.device)

    # ---- the loss ---------------------------------------------------------------------------

    @staticmethod
    def conditioned(backbone: Callable, cond: dict, self_cond: Optional[Tensor] = None) -> Callable:
        """``backbone`` with its conditioning bound: ``net(x_in (B,3,T,H,W), c_noise (B,)) -> (F, state)``, the
        network that ``SnapEDM.denoise`` / ``.loss`` call; ``self_cond``: the latents of the previous call, or None."""
        return lambda x_in, c_noise: backbone(x_in, c_noise, cond, self_cond=self_cond)

    def diffusion_loss(
        self,
        batch: dict,
        generator: Generators,
        backbone: Optional[Callable] = None,
        sigma: Optional[Tensor] = None,
        train: bool = True,
        self_cond_prob: Optional[float] = None,
    ) -> tuple[Tensor, dict]:
        """Per-sample loss (B,) (mean over elements of w (F - target)^2) and info (sigma, x_hat inputs).

        Draws sigma (unless given), eps, label dropout (``train``) and the self-conditioning mask from ``generator``:
        one for the batch, or a list with one per example.
        """
        backbone = (
            self._train_forward if backbone is None else backbone
        )  # not `or`: a compiled module has no truth value
        video = self.diffused(batch)
        b = video.shape[0]
        cond = self.make_cond(batch, drop_generator=generator if train else None, noise_generator=generator)
        if sigma is None:
            sigma = draw(generator, b, lambda n, g: self.edm.sample_sigma(n, generator=g)).to(self.device)
        eps = draw(generator, b, lambda n, g: torch.randn((n, *video.shape[1:]), generator=g, dtype=torch.float32)).to(
            self.device
        )
        sigma_in = self.sigma_in_for(batch)
        p = self.cfg.optim.self_cond_prob if self_cond_prob is None else self_cond_prob
        self_cond = None
        if self.uses_self_conditioning and p > 0:
            keep = (draw(generator, b, lambda n, g: torch.rand(n, generator=g)) < p).to(self.device)
            with torch.no_grad():  # first pass: latents only, no gradient (pix2seq / RIN)
                x_sigma = self.edm.noise(video, sigma, eps, sigma_in)
                _, state = self.edm.network_output(self.conditioned(backbone, cond, None), x_sigma, sigma, sigma_in)
            if state is not None:
                self_cond = state.detach() * keep.view(-1, *([1] * (state.ndim - 1))).to(state.dtype)
        loss, info = self.edm.loss(
            self.conditioned(backbone, cond, self_cond), video, sigma=sigma, eps=eps, sigma_in=sigma_in
        )
        return loss.flatten(1).mean(1), info

    def _example_generators(self, batch: dict) -> Generators:
        """One generator per example, seeded by its key; a batch without keys: one for the step and rank."""
        if "key" not in batch:
            return seeded_generator(self.cfg.trainer.seed, self.global_step, self.global_rank)
        return [seeded_generator(self.cfg.trainer.seed, key) for key in batch["key"].tolist()]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout inside the backbone draws from the global RNG: make it a function of the step too
        torch.manual_seed(mix_seed(self.cfg.trainer.seed, self.global_step, self.global_rank, 7))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        per_sample, info = self.diffusion_loss(batch, self._example_generators(batch))
        loss = per_sample.mean()
        # agreed over ranks: every rank skips when any has a non-finite loss (a rank skipping alone would hang DDP)
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            return self._skip_nonfinite(loss)
        self.nonfinite_streak = 0
        b = per_sample.shape[0]
        self.unaveraged_videos += b
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)  # the global batch's mean
        self._log_sigma_buckets(per_sample.detach(), info["sigma"].detach(), b)
        return loss

    def _skip_nonfinite(self, loss: Tensor) -> Tensor:
        """Count a skipped step (on every rank at once) and return its stand-in loss: zero, with a zero gradient for
        every trained weight, so DDP's gradient all-reduce runs as in any step (Lightning refuses a ``None`` from
        ``training_step`` under DDP). :meth:`on_before_optimizer_step` drops the zero gradients: no weight moves."""
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_total))
        limit = self.cfg.optim.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"loss was non-finite ({loss.item()} here) for {limit} steps in a row (step {self.global_step}); "
                "try a lower optim.lr, a longer optim.warmup_steps, optim.grad_clip=1.0, trainer.precision=32-true, "
                "or check the data"
            )
        if self.sharded:  # FSDP: the loss's own graph runs every unit's backward and gradient reduce-scatter
            return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0
        return sum(p.sum() for p in self.backbone.parameters() if p.requires_grad) * 0.0

    def _log_sigma_buckets(self, per_sample: Tensor, sigma: Tensor, batch_size: int) -> None:
        """Loss per quartile of the training sigma distribution (ln sigma quartiles of N(P_mean, P_std^2)), of rank 0's
        examples (not synced: a quartile may be empty on some ranks, and a sync that some ranks skip hangs)."""
        z = (torch.log(sigma.float()) - self.edm.p_mean) / self.edm.p_std
        bucket = torch.bucketize(z, torch.tensor([-0.6745, 0.0, 0.6745], device=z.device))
        for q in range(4):
            chosen = per_sample[bucket == q]
            if chosen.numel():
                self.log(f"train/loss_sigma_q{q + 1}", chosen.mean(), batch_size=int(chosen.numel()))

    # ---- EMA ----------------------------------------------------------------------------------

    def ema_beta(self, batch_videos: float) -> float:
        """EDM: beta = 0.5^(batch / halflife), halflife capped at ramp-up ratio * videos seen."""
        halflife = self.cfg.optim.ema_halflife_videos
        ratio = self.cfg.optim.ema_rampup_ratio
        if ratio is not None:
            halflife = min(halflife, float(self.videos_seen) * ratio)
        return 0.5 ** (batch_videos / max(halflife, 1e-8))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: a checkpoint callback's on_train_batch_end runs before the module's
        self.update_ema()

    def update_ema(self) -> None:
        """Move the EMA towards the live weights by the videos trained on since the last update (none: skipped)."""
        if self.unaveraged_videos == 0:  # every batch since the last update was skipped (non-finite loss)
            return
        batch_videos = self.unaveraged_videos * self.trainer.world_size
        self.unaveraged_videos = 0
        self.videos_seen += batch_videos
        beta = self.ema_beta(batch_videos)
        with torch.no_grad():
            for ema, live in zip(self.ema_backbone.parameters(), self.backbone.parameters()):
                ema.lerp_(live.detach().to(ema.dtype), 1 - beta)
            for ema, live in zip(self.ema_backbone.buffers(), self.backbone.buffers()):
                ema.copy_(live)

    # ---- validation: fixed sigma grid, fixed noise, EMA weights ---------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        b = batch["video"].shape[0]
        losses = []
        grid = [s for s in VAL_SIGMAS if s < self.cfg.diffusion.sigma_max] + [self.cfg.diffusion.sigma_max]
        for i, s in enumerate(grid):
            g = seeded_generator(12345, batch_idx, i)
            sigma = torch.full((b,), s, dtype=torch.float32, device=self.device)
            per_sample, info = self.diffusion_loss(
                batch, g, backbone=self.ema_backbone, sigma=sigma, train=False, self_cond_prob=1.0
            )
            self.log(f"val/loss_sigma_{s:g}", per_sample.mean(), batch_size=b, sync_dist=True)
            losses.append(per_sample.mean())
            if self.scores_objects:
                self._add_object_scores(batch, info, sigma, f"{s:g}", first=i == 0)
        low = [loss for s, loss in zip(grid, losses) if s <= LOW_VAL_SIGMA]
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=b, sync_dist=True)
        self.log("val/loss_low", torch.stack(low).mean(), batch_size=b, sync_dist=True)

    # ---- optimisers ---------------------------------------------------------------------------

    def optimizer_settings(self) -> dict:
        """name, lr, betas after applying the paper default of this face to unset config values."""
        o, paper = self.cfg.optim, self.spec.optimizer
        return {
            "name": paper["name"] if o.name == "auto" else o.name,
            "lr": paper["lr"] if o.lr is None else float(o.lr),
            "betas": tuple(paper["betas"] if o.betas is None else o.betas),
        }

    def configure_optimizers(self) -> dict:
        o = self.cfg.optim
        s = self.optimizer_settings()
        decay = [p for p in self.backbone.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.backbone.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if s["name"] == "lamb":
            from timm.optim import Lamb

            opt = Lamb(groups, lr=s["lr"], betas=s["betas"], eps=o.eps)
        elif s["name"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=s["lr"], betas=s["betas"], eps=o.eps, fused=o.fused)
        else:
            if o.weight_decay > 0:
                log.warning(
                    "optim.name=adam with weight_decay=%g is L2 decay inside Adam: weights with small gradients "
                    "shrink by ~lr per step (it switched off the U-Net's text attention in the CPU ablation); "
                    "optim.name=adamw decays decoupled",
                    o.weight_decay,
                )
            opt = torch.optim.Adam(groups, lr=s["lr"], betas=s["betas"], eps=o.eps, fused=o.fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``optim.warmup_steps``, then cosine (or constant) down to ``min_lr_ratio``."""
        o, total = self.cfg.optim, self.cfg.trainer.max_steps
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.unaveraged_videos == 0:  # every batch of this step was skipped: the optimiser leaves gradless weights
            optimizer.zero_grad(set_to_none=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"])
        if self.sharded:  # a rank holds a shard of each gradient: the norm comes from configure_gradient_clipping
            return
        grads = [p.grad for p in self.backbone.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            self.log("train/grad_norm", norm)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """Lightning's clipping, except under FSDP, whose precision plugin refuses norm clipping: there the root FSDP
        module clips by the global norm over all shards (``clip_grad_norm_``, a collective: every rank calls it) and
        that norm is logged as ``train/grad_norm``."""
        root = fsdp_root(self)
        if root is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(f"FSDP: gradient_clip_algorithm={gradient_clip_algorithm!r}; only 'norm' is supported")
        norm = root.clip_grad_norm_(gradient_clip_val or math.inf)  # inf: the norm only, nothing clipped
        self.log("train/grad_norm", norm.float())

    # ---- checkpoints --------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if fsdp_root(self) is not None and not getattr(self, "_tower_hook", None):
            # FSDP saves and restores the state dict itself (distributed checkpoint): leave the frozen text tower
            # out of it, as on_save_checkpoint does for a checkpoint file. The restore then misses the tower's keys,
            # so it loads non-strictly; fit's check_resume has checked every other key and shape before.
            self._tower_hook = self.register_state_dict_post_hook(drop_text_tower)
            self.strict_loading = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(UNSTORED_PREFIX)]:  # the frozen text tower
            del state[key]
        checkpoint["nonfinite_total"] = self.nonfinite_total
        checkpoint["nonfinite_streak"] = self.nonfinite_streak

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_total = checkpoint.get("nonfinite_total", 0)
        self.nonfinite_streak = checkpoint.get("nonfinite_streak", 0)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Strict (also on Lightning's resume) with one exception: the frozen text tower's keys may be absent."""
        if strict:
            problem = state_dict_mismatch(self, state_dict)
            if problem:
                raise CheckpointError(f"checkpoint state_dict: {problem}")
        return super().load_state_dict(state_dict, strict=False, assign=assign)  # checked above, tower aside


class UNetModule(EDMVideoModule):
    """The 3D U-Net baseline: AdamW (lr 1e-4, betas 0.9/0.999, decoupled wd 0.01) by default."""

    kind = "unet"


class FITModule(EDMVideoModule):
    """Snap Video FIT: LAMB (lr 5e-3, betas 0.9/0.99, wd 0.01) and latent self-conditioning by default."""

    kind = "fit"


def drop_text_tower(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """State-dict post hook: remove the frozen text tower's keys (see :data:`UNSTORED_PREFIX`)."""
    for key in [k for k in state_dict if k.startswith(prefix + UNSTORED_PREFIX)]:
        del state_dict[key]


def backbone_kind(cfg: DictConfig) -> str:
    """The registered kind of the configured preset; ValueError for an unknown preset or kind."""
    kind, _ = preset_kwargs(cfg.model.preset, OmegaConf.to_container(cfg.model.overrides, resolve=True))
    registry.backbone(kind)  # a preset of an unregistered kind: the error names the known ones
    return kind


def module_for(cfg: DictConfig) -> type[EDMVideoModule]:
    """The module class for the configured backbone preset: a paper kind's named class, else EDMVideoModule."""
    kind = backbone_kind(cfg)
    return next((face for face in (FITModule, UNetModule) if face.kind == kind), EDMVideoModule)


def state_dict_mismatch(module: nn.Module, state_dict: Mapping[str, Any], show: int = 3) -> Optional[str]:
    """What keeps ``state_dict`` from loading strictly into ``module`` (missing text-tower keys aside), e.g.
    "319 keys missing (backbone.patch_embed.0.weight, ...), 2 unexpected (...)"; None when it fits."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.startswith(UNSTORED_PREFIX)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__} != {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected
        and isinstance(expected[k], Tensor)
        and (not isinstance(v, Tensor) or v.shape != expected[k].shape)
    ]

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")

    parts = [
        f"{len(keys)} {'key' if len(keys) == 1 else 'keys'} {what} ({first(keys)})"
        for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of the wrong shape"))
        if keys
    ]
    return ", ".join(parts) or None
