"""Schedules, solvers and guidance (the paper's §1.4, §2.5, §6.3)."""

import math

import pytest
import torch

from lit_snapvideo.sampling import (
    dynamic_threshold,
    guidance_schedule,
    guided_denoiser,
    karras_sigmas,
    sample,
)


def test_karras_sigmas_match_edm_formula():
    sigmas = karras_sigmas(18)
    assert sigmas.dtype == torch.float64 and len(sigmas) == 19
    assert float(sigmas[0]) == pytest.approx(80.0) and float(sigmas[17]) == pytest.approx(0.002)
    assert float(sigmas[-1]) == 0.0
    for i in range(18):  # EDM generate.py: t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho
        t = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert float(sigmas[i]) == pytest.approx(t, rel=1e-12)
    assert bool((sigmas[:-1].diff() < 0).all())


def gaussian_denoiser(mu: float, s: float, sigma_in: float):
    """Ideal D(x_sigma) = E[x | x_sigma] for x ~ N(mu, s^2) under x_sigma = x/sigma_in + sigma eps (derived by hand:
    Cov(x, x_sigma) = s^2/sigma_in, Var(x_sigma) = s^2/sigma_in^2 + sigma^2)."""

    def denoise(x_sigma, sigma):
        sig = sigma.view(-1, *([1] * (x_sigma.ndim - 1)))
        gain = (s**2 / sigma_in) / (s**2 / sigma_in**2 + sig**2)
        return mu + gain * (x_sigma - mu / sigma_in)

    return denoise


@pytest.mark.parametrize("sigma_in", [1.0, 4.0, 32.0])
def test_heun_64_steps_samples_the_gaussian(sigma_in):
    """Heun, 64 steps from sigma_max, 100k noise elements -> mean and std within 2% of mu and s."""
    mu, s = 0.5, 0.3
    noise = torch.randn(10, 10_000, generator=torch.Generator().manual_seed(0))
    x = sample(gaussian_denoiser(mu, s, sigma_in), noise, karras_sigmas(64), sigma_in=sigma_in, solver="heun")
    assert x.dtype == torch.float64
    assert float(x.mean()) == pytest.approx(mu, rel=0.02)
    assert float(x.std()) == pytest.approx(s, rel=0.02)


def test_forgetting_sigma_in_is_visible():
    """Integrating with the wrong sigma_in lands far off: the scaling is not cosmetic (paper §9 pitfall)."""
    mu, s = 0.5, 0.3
    noise = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0))
    x = sample(gaussian_denoiser(mu, s, 4.0), noise, karras_sigmas(32), sigma_in=1.0)
    assert abs(float(x.mean()) - mu) > 0.2


def test_heun_call_count_and_callback():
    calls, steps = [], []
    den = gaussian_denoiser(0.0, 1.0, 1.0)

    def counting(x, sigma):
        calls.append(float(sigma[0]))
        return den(x, sigma)

    sample(counting, torch.randn(2, 8), karras_sigmas(10), solver="heun", callback=lambda i, n, t, x: steps.append(i))
    assert len(calls) == 2 * 10 - 1  # NFE = 2N - 1: the last step to 0 is Euler
    assert steps == list(range(10))
    calls.clear()
    sample(counting, torch.randn(2, 8), karras_sigmas(10), solver="euler")
    assert len(calls) == 10


def test_euler_converges_more_slowly_than_heun():
    mu, s = 0.5, 0.3
    noise = torch.randn(4, 25_000, generator=torch.Generator().manual_seed(0))
    den = gaussian_denoiser(mu, s, 4.0)
    err = {}
    for solver in ("euler", "heun"):
        x = sample(den, noise, karras_sigmas(16), sigma_in=4.0, solver=solver)
        err[solver] = abs(float(x.std()) - s)
    assert err["heun"] < err["euler"]


def test_churn_is_stochastic_and_still_samples_the_gaussian():
    """EDM ImageNet churn settings (S_churn 40, S_min 0.05, S_max 50) with 256 steps, as EDM uses them."""
    mu, s = 0.5, 0.3
    noise = torch.randn(4, 25_000, generator=torch.Generator().manual_seed(0))
    den = gaussian_denoiser(mu, s, 4.0)
    a = sample(
        den,
        noise,
        karras_sigmas(256),
        4.0,
        churn=40,
        churn_sigma_min=0.05,
        churn_sigma_max=50,
        generator=torch.Generator().manual_seed(1),
    )
    b = sample(
        den,
        noise,
        karras_sigmas(256),
        4.0,
        churn=40,
        churn_sigma_min=0.05,
        churn_sigma_max=50,
        generator=torch.Generator().manual_seed(2),
    )
    assert not torch.equal(a, b)
    assert float(a.mean()) == pytest.approx(mu, rel=0.03) and float(a.std()) == pytest.approx(s, rel=0.03)


def test_bad_solver_and_steps():
    with pytest.raises(ValueError, match="solver"):
        sample(lambda x, s: x, torch.randn(1, 2), karras_sigmas(4), solver="rk4")
    with pytest.raises(ValueError, match="steps"):
        karras_sigmas(0)


def test_dynamic_threshold():
    x = torch.tensor([[0.2, -0.5, 0.9, 0.1], [3.0, -4.0, 1.0, 0.0]])
    out = dynamic_threshold(x, percentile=1.0)
    assert torch.equal(out[0], x[0])  # s = max(0.9, 1) = 1: unchanged
    torch.testing.assert_close(out[1], x[1] / 4.0)  # s = 4: clip to [-4, 4] then / 4
    big = torch.randn(2, 10_000) * 5
    assert float(dynamic_threshold(big, 0.995).abs().max()) <= 1.0 + 1e-6


def test_guidance_batches_cond_and_uncond_once():
    calls = []

    def both(x2, sigma2):
        calls.append(x2.shape[0])
        cond, uncond = torch.full_like(x2[:1], 2.0), torch.full_like(x2[:1], 1.0)
        n = x2.shape[0] // 2
        return torch.cat([cond.expand(n, -1), uncond.expand(n, -1)])

    x = torch.zeros(3, 4)
    sigma = torch.full((3,), 1.0)
    assert torch.equal(guided_denoiser(both, 1.0)(x, sigma), torch.full((3, 4), 2.0))  # w = 1: conditional
    assert torch.equal(guided_denoiser(both, 0.0)(x, sigma), torch.full((3, 4), 1.0))  # w = 0: unconditional
    assert torch.equal(guided_denoiser(both, 3.0)(x, sigma), torch.full((3, 4), 4.0))  # 1 + 3 (2 - 1)
    assert calls == [6, 6, 6]


def test_oscillating_guidance_schedule():
    sigmas = karras_sigmas(20)
    sched = guidance_schedule(sigmas, 15.0, oscillate_low=1.0, warmup_fraction=0.1)
    assert sched.scales[:2] == [15.0, 15.0]
    assert sched.scales[2:8] == [15.0, 1.0, 15.0, 1.0, 15.0, 1.0]
    for i, w in enumerate(sched.scales):
        assert sched(float(sigmas[i])) == w
    constant = guidance_schedule(sigmas, 3.0)
    assert set(constant.scales) == {3.0} and math.isclose(constant(0.5), 3.0)
