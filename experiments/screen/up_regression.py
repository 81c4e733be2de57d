"""The upsampler's denoiser as a regressor: PSNR of one call of D from pure noise at a high sigma (the network's
estimate of E[video | low-res input], what only the low-res conditioning can give), beside bicubic.

    .venv/bin/python experiments/screen/up_regression.py CKPT [CKPT ...]      (results/upsampler_screen.md)
16 validation clips as upsampler-eval reads them, aug_sigma 0, noise seed 0."""

import sys

import torch

from lit_snapvideo.cascade import validation_pairs
from lit_snapvideo.models.upsampler import bicubic_upsample, psnr
from lit_snapvideo.module_loading import load_module


def regression_psnr(checkpoint: str, sigmas=(80.0, 10.0), num_videos: int = 16) -> dict:
    module = load_module(checkpoint).eval()
    prompts, low, real = validation_pairs(module, num_videos)
    n = len(prompts)
    batch = {
        "caption": prompts,
        "fps": torch.full((n,), float(module.cfg.data.val_fps)),
        "orig_size": torch.tensor([list(module.cfg.logging.sample_orig_size)] * n, dtype=torch.float32),
        "low_res": low,
        "video": real,
        "is_image": torch.zeros(n, dtype=torch.bool),
    }
    cond = module.make_cond(batch, aug_sigma=0.0)
    net = module.conditioned(module.ema_backbone, cond, None)
    shape = module.diffused(batch).shape
    out = {"bicubic": float(psnr(bicubic_upsample(low, real.shape[-2:]).clamp(-1, 1), real).mean())}
    for s in sigmas:
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        sigma = torch.full((n,), s)
        with torch.no_grad():
            d = module.edm.denoise(net, s * eps, sigma)  # x_sigma of a zero signal: the noise alone
        out[f"D@{s:g}"] = float(psnr(module.from_diffused(d, low).clamp(-1, 1), real).mean())
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for path in sys.argv[1:]:
        print(path, {k: round(v, 2) for k, v in regression_psnr(path).items()})
