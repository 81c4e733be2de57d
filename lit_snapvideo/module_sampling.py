"""Sampling for :class:`~.module.EDMVideoModule`: text-to-video (or an upsampler's low-res-to-video) generation.

    video = module.generate(["a red circle moving left"], steps=32, cfg_scale=2.0)   # (B, 3, T, H, W) in [-1, 1]

Heun (or Euler) over Karras sigmas with sigma_in (paper §2.5), classifier-free guidance with both branches in one
batch, FIT's latents carried from each denoiser call to the next. A mixin: it reads the module's config, EDM,
backbones, text encoder and conditioning helpers (``make_cond``-side methods, ``from_diffused``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor

from .models.text import NULL_CAPTION
from .sampling import guidance_schedule, guided_denoiser, karras_sigmas, sample
from .seeding import seeded_generator
from .sharding import fsdp_root


class SamplingMixin:
    """``generate`` and its helpers; mixed into :class:`~.module.EDMVideoModule`."""

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        steps: int = 32,
        cfg_scale: float = 2.0,
        seed: int = 0,
        solver: str = "heun",
        threshold_percentile: Optional[float] = None,
        oscillate_low: Optional[float] = None,
        fps: Optional[float] = None,
        orig_size: Optional[tuple[int, int]] = None,
        use_ema: bool = True,
        callback: Optional[Callable] = None,
        low_res: Optional[Tensor] = None,
        aug_sigma: Optional[float] = None,
    ) -> Tensor:
        """Text-to-video: (B, 3, T, H, W) float32 in [-1, 1] at the padded size (crop with data.video.crop_padding).

        Heun (or Euler) over Karras sigmas with sigma_in (§2.5); classifier-free guidance with the conditional and
        null-caption branch batched; FIT's latents carried from each evaluation to the next, per branch.
        An upsampler needs ``low_res`` (B, 3, T, *data.low_res_size) in [-1, 1] (stage 1's cropped samples), noised
        at ``aug_sigma`` (default ``upsampler.aug_sigma``; the same noise for both guidance branches)."""
        if not prompts:
            raise ValueError("no prompts given")
        if self.spec.upsampler != (low_res is not None):
            raise ValueError(
                f"model.preset={self.cfg.model.preset}: "
                + ("an upsampler samples from low_res videos" if low_res is None else "low_res is for upsamplers only")
            )
        if threshold_percentile and self.residual_scale:
            raise ValueError(
                "dynamic thresholding clips a video in [-1, 1]; this upsampler samples a scaled residual "
                f"(upsampler.residual_scale={self.residual_scale:g}): leave threshold_percentile unset"
            )
        with self.sharded_inference():
            return self._generate(
                prompts,
                steps,
                cfg_scale,
                seed,
                solver,
                threshold_percentile,
                oscillate_low,
                fps,
                orig_size,
                use_ema,
                callback,
                low_res,
                aug_sigma,
            )

    def sharded_inference(self) -> contextlib.AbstractContextManager:
        """Under FSDP with bf16/fp16 compute (weights cast inside each unit), the autocast of the training step, for
        forward passes outside it (sampling from callbacks); otherwise nothing."""
        root = fsdp_root(self)
        compute = getattr(getattr(root, "mixed_precision", None), "param_dtype", None)
        if compute is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=compute)

    def _generate(
        self,
        prompts: list[str],
        steps: int,
        cfg_scale: float,
        seed: int,
        solver: str,
        threshold_percentile: Optional[float],
        oscillate_low: Optional[float],
        fps: Optional[float],
        orig_size: Optional[tuple[int, int]],
        use_ema: bool,
        callback: Optional[Callable],
        low_res: Optional[Tensor],
        aug_sigma: Optional[float],
    ) -> Tensor:
        net = self.ema_backbone if use_ema else self.backbone
        was_training = net.training
        net.eval()
        d, data = self.cfg.diffusion, self.cfg.data
        b = len(prompts)
        fps = float(fps if fps is not None else (self.cfg.logging.sample_fps or data.val_fps))
        size = orig_size or tuple(self.cfg.logging.sample_orig_size)
        texts = list(prompts) + [NULL_CAPTION] * b
        text, mask = self.encode_text(texts)
        cond = {
            "text": text,
            "text_mask": mask,
            "fps": torch.full((2 * b,), fps, device=self.device),
            "orig_size": torch.tensor([list(size)] * (2 * b), dtype=torch.float32, device=self.device),
        }
        if low_res is not None:
            expected = (b, 3, data.frames, *data.low_res_size)
            if tuple(low_res.shape) != expected:
                raise ValueError(f"low_res has shape {tuple(low_res.shape)}, expected {expected} (data.low_res_size)")
            aug = self.augmented_low_res(
                {"low_res": low_res}, noise_generator=seeded_generator(seed, 1), aug_sigma=aug_sigma
            )
            cond.update({k: torch.cat([v, v]) for k, v in aug.items()})  # both guidance branches see the same video
        state: dict = {"latents": None}

        def denoise_both(x2: Tensor, sigma2: Tensor) -> Tensor:
            x_hat, latents = self.edm.denoise(
                self.conditioned(net, cond, state["latents"]), x2.float(), sigma2.float(), return_state=True
            )
            state["latents"] = latents
            return x_hat

        sigmas = karras_sigmas(steps, d.sigma_min, d.sigma_max, d.rho, device=self.device)
        denoise_fn = guided_denoiser(
            denoise_both, guidance_schedule(sigmas, cfg_scale, oscillate_low), threshold_percentile
        )
        g = seeded_generator(seed)
        noise = torch.randn((b, 3, data.frames, *data.pad_to), generator=g).to(self.device)
        video = sample(denoise_fn, noise, sigmas, sigma_in=d.sigma_in, solver=solver, callback=callback)
        net.train(was_training)
        return self.from_diffused(video.float(), low_res).clamp(-1, 1)
