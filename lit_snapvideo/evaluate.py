"""``lit-snapvideo evaluate``: sample a checkpoint on validation captions and score the samples.

Always (offline): the embedded set's probe metrics (prompt accuracy, probe-FVD, temporal consistency), when the
run's data set is the embedded moving-shapes set (its captions carry the ground truth), and the denoising check
(:func:`denoising_check`: the denoiser's error and the caption's effect at fixed noise levels, any data set).
With the detector files a user brings: FVD (stylegan-v protocol, TorchScript I3D), per-frame FID (TorchScript
Inception) and CLIPSIM (open_clip).
FVD is named after the number of videos it used (``fvd{N}_16f``) and reported as mean and std over sampling seeds.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .data.datamodule import EDMDataModule
from .data.shapes import foreign_caption
from .data.video import crop_padding
from .generation import evaluation_videos, validation_prompts
from .metrics.probe import data_fingerprint, probe_for, probe_metrics
from .models.text import NULL_CAPTION
from .module_loading import load_module
from .results import write_json_atomic
from .sampling import karras_sigmas
from .seeding import seeded_generator

log = logging.getLogger(__name__)


DENOISE_SIGMAS = (0.3, 1.0, 3.0, 10.0, 30.0, 80.0)  # from detail (0.3) to where the sampler starts (80)


@torch.no_grad()
def denoising_check(
    module: Any, num_clips: int = 16, sigmas: Sequence[float] = DENOISE_SIGMAS, seed: int = 0, chain_steps: int = 24
) -> dict:
    """How well the EMA denoiser recovers validation clips at fixed noise levels, and how much the caption moves it.

    The first ``num_clips`` validation clips, one fixed noise draw, no self-conditioning state (the sampler's first
    step). Per sigma ``s``: ``denoise/mse_sigma_<s>`` = mean (D(x_s) - x)^2; ``denoise/zero_mse`` = mean x^2, what
    predicting zero scores (an MSE above it: D adds structure the clip does not have, e.g. input noise passed
    through); ``denoise/caption_effect_sigma_<s>`` = mean |D(x_s; caption) - D(x_s; null caption)| (about 0: the
    caption is ignored, so guidance has nothing to amplify); ``denoise/noise_leak_sigma_<s>`` = <D(x_s) - x, eps> /
    <eps, eps>, the share of the input noise eps left in D's estimate. The ideal denoiser (the posterior mean) has
    a small positive share where the clip is uncertain given x_s and none at very high or very low sigma
    (Gaussian data of variance v, sigma_in s: s v sigma / (v + s^2 sigma^2)). A negative share, or a large one at
    high sigma, is noise the network passes through. The sampler's ODE moves along that noise, so what passes
    through at every step adds up in the sample as grain or patch speckle.

    ``denoise/chain_mse_sigma_<s>``: the same error where the self-conditioning state comes from the denoiser's
    previous call along the sampler's Karras schedule (``chain_steps`` sigmas from sigma_max down, one call each,
    the same clip and noise draw), taken at the schedule's sigma nearest ``s`` in log space. That is what FIT sees
    while sampling; training and the validation loss feed the latents of the same sigma instead. For a backbone
    without state it equals ``mse_sigma``.

    Where the object is (metrics/objects.py), over the clips with a plain background (``denoise/object_clips`` of
    them; none on other data, and then no object keys): ``denoise/object_mse_sigma_<s>``,
    ``denoise/background_mse_sigma_<s>`` and ``denoise/object_recovered_sigma_<s>`` (1: D puts the whole object
    back, 0: the background alone). A whole-frame MSE on the embedded set is more than 90% background."""
    from .metrics.objects import object_scores

    d = module.cfg.diffusion
    schedule = karras_sigmas(chain_steps, d.sigma_min, d.sigma_max, d.rho)[:-1].float()  # drop the final 0
    nearest = [int((schedule.log() - math.log(s)).abs().argmin()) for s in sigmas]
    dm = EDMDataModule(module.cfg)
    dm.setup("validate")
    net, sums, count = module.ema_backbone, {}, 0
    object_sums, object_count = {}, 0
    scores_objects = not module.spec.upsampler  # an upsampler's residual has no object to find
    was_training = net.training
    net.eval()
    for i, batch in enumerate(dm.val_dataloader()):
        batch = {k: v[: num_clips - count] for k, v in batch.items()}
        b = len(batch["caption"])
        x = module.diffused(batch)  # an upsampler with a residual: the scaled residual, what D estimates
        cond = module.make_cond(batch)
        null = module.make_cond({**batch, "caption": [NULL_CAPTION] * b})
        sigma_in = module.sigma_in_for(batch)
        eps = torch.randn(x.shape, generator=seeded_generator(seed, i)).to(module.device)
        eps_energy = eps.pow(2).sum((1, 2, 3, 4))  # <eps, eps> per clip, the noise-leak denominator
        terms = {"denoise/zero_mse": x.pow(2).mean((1, 2, 3, 4))}
        for s in sigmas:
            sigma = torch.full((b,), float(s), device=module.device)
            x_sigma = module.edm.noise(x, sigma, eps, sigma_in)
            d_cond = module.edm.denoise(module.conditioned(net, cond, None), x_sigma, sigma, sigma_in)
            d_null = module.edm.denoise(module.conditioned(net, null, None), x_sigma, sigma, sigma_in)
            error = d_cond - x
            terms[f"denoise/mse_sigma_{s:g}"] = error.pow(2).mean((1, 2, 3, 4))
            terms[f"denoise/caption_effect_sigma_{s:g}"] = (d_cond - d_null).abs().mean((1, 2, 3, 4))
            terms[f"denoise/noise_leak_sigma_{s:g}"] = (error * eps).sum((1, 2, 3, 4)) / eps_energy
            if scores_objects:
                scores = object_scores(d_cond, x)
                plain = scores.pop("plain")
                for name, values in scores.items():
                    key = f"denoise/{name}_sigma_{s:g}"
                    object_sums[key] = object_sums.get(key, 0.0) + float(values[plain].sum())
        latents, chain_mse = None, []
        for s in schedule.tolist():
            sigma = torch.full((b,), s, device=module.device)
            x_sigma = module.edm.noise(x, sigma, eps, sigma_in)
            d_chain, latents = module.edm.denoise(
                module.conditioned(net, cond, latents), x_sigma, sigma, sigma_in, return_state=True
            )
            chain_mse.append((d_chain - x).pow(2).mean((1, 2, 3, 4)))
        for s, step in zip(sigmas, nearest):
            terms[f"denoise/chain_mse_sigma_{s:g}"] = chain_mse[step]
        for key, per_clip in terms.items():
            sums[key] = sums.get(key, 0.0) + float(per_clip.sum())
        if scores_objects:
            object_count += int(plain.sum())
        count += b
        if count >= num_clips:
            break
    net.train(was_training)
    result = {key: total / count for key, total in sums.items()}
    result["denoise/object_clips"] = object_count
    if object_count:
        result.update({key: total / object_count for key, total in object_sums.items()})
    elif scores_objects:
        log.info("evaluate: object metrics skipped: none of %d validation clips has a plain background", count)
    return result


def evaluate_checkpoint(
    checkpoint: str,
    num_videos: int = 32,
    steps: int = 32,
    cfg_scale: float = 2.0,
    seeds: Sequence[int] = (0,),
    batch_size: int = 8,
    fvd_detector: Optional[str] = None,
    fid_detector: Optional[str] = None,
    clip_model: Optional[str] = None,
    clip_checkpoint: Optional[str] = None,
    probe_cache: str = ".cache/probe",
    fvd_cache: str = ".cache/fvd",
    out: Optional[str] = None,
    progress: bool = True,
    probe_kwargs: Optional[dict] = None,
    module: Any = None,
) -> dict:
    """Score ``checkpoint``; writes ``metrics.json`` beside the run's summary (or to ``out``) and returns it.

    The probe metrics need the moving-shapes set; on other data they are skipped with one warning, and FVD, FID
    and CLIPSIM (with their detector files) and the denoising check score the run."""
    from tqdm import tqdm

    module = module if module is not None else load_module(checkpoint)  # the CLI has loaded it already
    cfg = module.cfg
    prompts = validation_prompts(cfg.data.root, cfg.data.manifest, num_videos)
    bar = tqdm(total=len(prompts) * len(seeds) * steps, desc="evaluate: sampling", unit="step", disable=not progress)
    sets = [evaluation_videos(module, prompts, steps, cfg_scale, s, batch_size, bar.update) for s in seeds]
    bar.close()
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "num_videos": len(prompts),
        "seeds": list(seeds),
        "steps": steps,
        "cfg_scale": cfg_scale,
        "sigma_max": float(cfg.diffusion.sigma_max),
    }
    metrics.update(denoising_check(module))
    foreign = foreign_caption(cfg.data.root, cfg.data.manifest)
    if foreign is None:
        probe = probe_for(cfg, probe_cache, **(probe_kwargs or {}))
        metrics["probe/val_accuracy"] = probe.meta.get("val_accuracy")
        per_seed = [probe_metrics(probe, videos, prompts) for videos in sets]
        for key in per_seed[0]:
            values = torch.tensor([m[key] for m in per_seed], dtype=torch.float64)
            metrics[key] = float(values.mean())
            if len(per_seed) > 1:
                metrics[f"{key}_std"] = float(values.std())
    else:  # the probe learns from the moving-shapes captions; other data has no such labels
        log.warning(
            "evaluate: probe metrics skipped: %s is not the moving-shapes set (caption %r); FVD, FID and "
            "CLIPSIM score it with detector files",
            cfg.data.root,
            foreign,
        )
    if fvd_detector or fid_detector:
        dm = EDMDataModule(cfg)
        dm.setup("validate")
        real = torch.cat([crop_padding(b["video"], tuple(cfg.data.size)) for b in dm.val_dataloader()])
    if fvd_detector:
        from .metrics.fvd import FVD, real_stats_key

        fvd = FVD(fvd_detector, cache_dir=fvd_cache, num_videos=min(len(prompts), len(real)), frames=cfg.data.frames)
        key = real_stats_key(
            data_fingerprint(cfg.data.root, cfg.data.manifest),
            "val",
            len(real),
            cfg.data.frames,
            cfg.data.size,
            cfg.data.val_fps,
        )
        metrics.update(fvd.score(sets, fvd.real_stats(real, key=key)))
    if fid_detector:
        from .metrics.fid import FID

        fid = FID(fid_detector)
        fid.update_real(real)
        metrics.update(fid.score(sets))
    if clip_model and clip_checkpoint:
        from .metrics.clipsim import CLIPSim, clipsim

        scorer = CLIPSim(clip_model, clip_checkpoint)
        values = [clipsim(scorer, [(videos, prompts)]) for videos in sets]
        metrics["clipsim"] = sum(values) / len(values)
    path = Path(out) if out else Path(checkpoint).resolve().parent.parent / "metrics.json"
    write_json_atomic(path, metrics, nonfinite="null")  # strict JSON; an undefined metric is null, with a warning
    metrics = json.loads(path.read_text())  # what was written, nulls included
    metrics["metrics_file"] = str(path)
    return metrics
