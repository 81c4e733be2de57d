"""Sigma schedules and ODE/SDE solvers for Snap-EDM (paper §2.5; EDM's ``edm_sampler``), plus guidance.

Samplers are plain functions of (denoiser, noise, sigmas), k-diffusion style; schedules are separate functions.

The solver integrates the probability-flow ODE of the *scaled* signal y = x / sigma_in, which follows the standard
VE process y + sigma * eps. So it divides the denoiser's output (data scale) by sigma_in inside, and multiplies the
final sample by sigma_in (paper §2.5: forgetting either gives outputs off by a factor sigma_in).

    sigmas = karras_sigmas(64)                       # float64, ends with 0
    x = sample(denoise_fn, torch.randn(B, 3, 16, 40, 64), sigmas, sigma_in=4.0)
    # denoise_fn(x_sigma, sigma) -> x_hat, with x_sigma (B, ...) and sigma (B,) in the solver's dtype

Guidance wraps a batched conditional+unconditional denoiser into a plain ``denoise_fn``:

    fn = guided_denoiser(denoise_both, guidance_schedule(sigmas, 3.0), threshold_percentile=0.995)
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
# callback(step, num_steps, sigma, x) after each step
StepCallback = Callable[[int, int, float, Tensor], None]


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM's time steps: (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i < n, then 0.

    Returns (n + 1,) from sigma_max down to sigma_min, then a final 0."""
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=dtype, device=device) if n > 1 else torch.zeros(1, dtype=dtype, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sample(
    denoise_fn: Denoiser,
    noise: Tensor,
    sigmas: Tensor,
    sigma_in: float = 1.0,
    solver: str = "heun",
    churn: float = 0.0,
    churn_sigma_min: float = 0.0,
    churn_sigma_max: float = math.inf,
    s_noise: float = 1.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
) -> Tensor:
    """Integrate from ``sigmas[0]`` to ``sigmas[-1]`` (= 0) with EDM's Euler or Heun solver.

    noise: unit Gaussian (B, ...); it is scaled by sigmas[0] here. The work runs in ``sigmas.dtype``
    (float64 by default). ``churn`` > 0 adds EDM's stochastic churn (S_churn, S_min, S_max, S_noise); Snap Video samples
    deterministically (churn = 0). Returns the sample in data scale (multiplied by sigma_in), in sigmas.dtype.
    Heun costs 2N - 1 denoiser calls for N steps (the last step, to sigma = 0, is Euler)."""
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    if sigma_in <= 0:
        raise ValueError(f"sigma_in must be > 0, got {sigma_in}")
    dtype = sigmas.dtype
    n = len(sigmas) - 1
    batch = noise.shape[0]

    def d_dt(x: Tensor, t: Tensor) -> Tensor:
        # dx/dsigma of the scaled signal: (x - D(x)/sigma_in) / sigma
        x_hat = denoise_fn(x, t.expand(batch)).to(dtype)
        return (x - x_hat / sigma_in) / t

    x = noise.to(dtype) * sigmas[0]
    for i in range(n):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n, math.sqrt(2) - 1) if churn > 0 and churn_sigma_min <= t_cur <= churn_sigma_max else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, dtype=dtype, device=x.device)
            x = x + (t_hat**2 - t_cur**2).sqrt() * s_noise * eps
        d = d_dt(x, t_hat)
        x_next = x + (t_next - t_hat) * d
        if solver == "heun" and t_next > 0:
            x_next = x + (t_next - t_hat) * (d + d_dt(x_next, t_next)) / 2
        x = x_next
        if callback is not None:
            callback(i, n, float(t_next), x)
    return x * sigma_in


# ---- guidance ------------------------------------------------------------------------------


def dynamic_threshold(x_hat: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding on a data-scale estimate (B, ...): s = quantile(|x_hat|, p) per sample,
    s >= 1; clip to [-s, s] and divide by s (so values stay in [-1, 1])."""
    if not 0 < percentile <= 1:
        raise ValueError(f"threshold percentile must be in (0, 1], got {percentile}")
    flat = x_hat.reshape(x_hat.shape[0], -1).abs()
    s = torch.quantile(flat.float(), percentile, dim=1).to(x_hat.dtype).clamp(min=1)
    s = s.reshape(-1, *([1] * (x_hat.ndim - 1)))
    return x_hat.clamp(-s, s) / s


def guidance_schedule(
    sigmas: Tensor,
    scale: float,
    oscillate_low: Optional[float] = None,
    warmup_fraction: float = 0.1,
) -> Callable[[float], float]:
    """Guidance scale as a function of the noise level of each step (``sigmas`` from :func:`karras_sigmas`).

    Constant ``scale`` by default. With ``oscillate_low`` (Imagen Video's oscillating guidance), the first
    ``warmup_fraction`` of the steps use ``scale``, then steps alternate between ``scale`` and ``oscillate_low``.
    A denoiser call at sigma uses the scale of the grid step with that sigma (nearest in log space)."""
    steps = len(sigmas) - 1
    scales = [float(scale)] * steps
    if oscillate_low is not None:
        start = int(math.ceil(warmup_fraction * steps))
        for i in range(start, steps):
            scales[i] = float(scale) if (i - start) % 2 == 0 else float(oscillate_low)
    grid = torch.log(sigmas[:-1].double().clamp(min=1e-12))

    def scale_at(sigma: float) -> float:
        i = int(torch.argmin((grid - math.log(max(float(sigma), 1e-12))).abs()))
        return scales[i]

    scale_at.scales = scales  # type: ignore[attr-defined]  (for logging / tests)
    return scale_at


def guided_denoiser(
    denoise_both: Denoiser,
    scale: float | Callable[[float], float],
    threshold_percentile: Optional[float] = None,
) -> Denoiser:
    """Classifier-free guidance with the conditional and unconditional branch in one batched call.

    ``denoise_both(x2, sigma2)`` takes 2B inputs (first B conditional, last B unconditional) and returns 2B
    data-scale estimates. The result is D_u + w (D_c - D_u) (w = 1: conditional only, w = 0: unconditional), then
    dynamic thresholding when ``threshold_percentile`` is given."""
    scale_at = scale if callable(scale) else (lambda _sigma, s=float(scale): s)

    def denoise_fn(x: Tensor, sigma: Tensor) -> Tensor:
        both = denoise_both(torch.cat([x, x]), torch.cat([sigma, sigma]))
        cond, uncond = both.chunk(2)
        w = scale_at(float(sigma.reshape(-1)[0]))
        x_hat = uncond + w * (cond - uncond)
        return dynamic_threshold(x_hat, threshold_percentile) if threshold_percentile else x_hat

    return denoise_fn
