"""Snap-EDM against the paper's closed forms (the paper's §1.1, §2.4, Table 1)."""

import math

import pytest
import torch

from lit_snapvideo.edm import SnapEDM

SIGMAS = [0.002, 0.1, 1.0, 10.0, 80.0]
PAIRS = [(1.0, 4.0), (0.5, 4.0), (1.0, 32.0), (1.0, 1.0)]  # (sigma_data, sigma_in)


def closed_forms(sigma: float, sd: float, s: float) -> dict:
    """Table 1, Snap Video column, written out independently of the implementation."""
    return {
        "c_in": 1 / math.sqrt(sd**2 / s**2 + sigma**2),
        "c_skip": s * sd**2 / (s * sigma**2 + sd**2),
        "c_out": -s * sigma * sd * math.sqrt(sigma**2 + sd**2) / (sd**2 + s * sigma**2),
        "c_nrm": 1 / (sd * math.sqrt(sigma**2 + sd**2)),
        "lambda": 1 / sd**2 + 1 / sigma**2,
        "w": (sigma**2 + sd**2) ** 2 / (sigma**2 + sd**2 / s) ** 2,
        "c_noise": math.log(sigma) / 4,
    }


@pytest.mark.parametrize("sd,s", PAIRS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_scalings_match_table1(sigma, sd, s):
    edm = SnapEDM(sigma_data=sd, sigma_in=s, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.scalings(torch.tensor(sigma, dtype=torch.float64))
    ref = closed_forms(sigma, sd, s)
    got = {
        "c_skip": c_skip,
        "c_out": c_out,
        "c_in": c_in,
        "c_noise": c_noise,
        "c_nrm": edm.c_nrm(sigma),
        "lambda": edm.loss_weight(sigma),
        "w": edm.f_weight(sigma),
    }
    for name, value in got.items():
        assert float(value) == pytest.approx(ref[name], rel=1e-12), name


def test_final_model_numbers():
    """§2.4 'concrete final-model formulas' for sigma_d = 1, sigma_in = 4 at sigma = 0.5."""
    edm = SnapEDM(1.0, 4.0, dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm.scalings(0.5)
    assert float(c_in) == pytest.approx(1 / math.sqrt(1 / 16 + 0.25))
    assert float(c_skip) == pytest.approx(4 / (4 * 0.25 + 1))  # = 2
    assert float(c_out) == pytest.approx(-4 * 0.5 * math.sqrt(1.25) / 2)
    assert float(edm.f_weight(0.5)) == pytest.approx(1.25**2 / 0.5**2)


@pytest.mark.parametrize("sd", [1.0, 0.5])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_sigma_in_one_reduces_to_edm(sigma, sd):
    """At sigma_in = 1 the Snap scalings equal EDM's c_skip and c_in, and c_out up to sign (design constraint (d))."""
    snap = SnapEDM(sd, 1.0, "snap", dtype=torch.float64)
    edm = SnapEDM(sd, 1.0, "edm", dtype=torch.float64)
    s_skip, s_out, s_in, _ = snap.scalings(sigma)
    e_skip, e_out, e_in, _ = edm.scalings(sigma)
    assert float(s_skip) == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
    assert float(e_skip) == pytest.approx(float(s_skip), rel=1e-12)
    assert float(e_in) == pytest.approx(float(s_in), rel=1e-12)
    assert float(e_out) == pytest.approx(-float(s_out), rel=1e-12)
    assert float(e_out) == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert float(edm.f_weight(sigma)) == pytest.approx(1.0, rel=1e-12)  # EDM's effective weight is 1


def _data(shape=(4, 3, 2, 5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("framework", ["snap", "edm"])
@pytest.mark.parametrize("sd,s", PAIRS)
def test_ideal_network_recovers_x(framework, sd, s):
    """With F equal to its target (c_nrm * v for Snap), denoise returns x (relative error < 1e-5)."""
    edm = SnapEDM(sd, s, framework, dtype=torch.float32)
    x, eps = _data()
    sigma = torch.tensor([0.002, 0.1, 10.0, 80.0], dtype=torch.float64)
    x_sigma = edm.noise(x, sigma, eps)
    target = edm.target(x, sigma, eps)
    x_hat = edm.denoise(lambda x_in, c_noise: target, x_sigma, sigma)
    assert x_hat.dtype == torch.float32
    assert torch.allclose(x_hat.double(), x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_snap_target_is_v():
    """Snap's regression target is +c_nrm * v with v = sd^2 eps - sigma x (Table 1; the sign pitfall of §9)."""
    edm = SnapEDM(1.0, 4.0, dtype=torch.float64)
    x, eps = _data()
    sigma = torch.tensor([0.3, 1.0, 2.0, 5.0], dtype=torch.float64)
    v = eps - sigma.view(-1, 1, 1, 1, 1) * x
    expected = v / torch.sqrt(sigma**2 + 1).view(-1, 1, 1, 1, 1)
    assert torch.allclose(edm.target(x, sigma, eps), expected)


@pytest.mark.parametrize("framework", ["snap", "edm"])
@pytest.mark.parametrize("sd,s", PAIRS)
def test_f_space_loss_equals_d_space_loss(framework, sd, s):
    """lambda * ||D - x||^2 == w * ||F - target||^2 for an arbitrary F."""
    edm = SnapEDM(sd, s, framework, dtype=torch.float64)
    x, eps = _data()
    F = torch.randn_like(x)
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    loss, info = edm.loss(lambda x_in, c_noise: F, x, sigma=sigma, eps=eps)
    assert torch.equal(info["sigma"], sigma)
    D = edm.denoise(lambda x_in, c_noise: F, edm.noise(x, sigma, eps), sigma)
    lam = edm.loss_weight(sigma).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(loss, lam * (D - x) ** 2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sd,s", [(1.0, 4.0), (0.5, 4.0), (1.0, 32.0)])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_unit_variance_input_and_target(sigma, sd, s):
    """Var(c_in x_sigma) ~ 1 and Var(c_nrm v) ~ 1 for data of variance sd^2 (Monte Carlo, 200k elements, 3%)."""
    edm = SnapEDM(sd, s, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = sd * torch.randn(200_000, generator=g, dtype=torch.float64)
    eps = torch.randn(200_000, generator=g, dtype=torch.float64)
    _, _, c_in, _ = edm.scalings(sigma)
    assert float((c_in * edm.noise(x, sigma, eps)).var()) == pytest.approx(1.0, rel=0.03)
    assert float(edm.target(x, sigma, eps).var()) == pytest.approx(1.0, rel=0.03)


def test_naive_edm_target_matches_table1():
    """EDM coefficients with sigma_in != 1 give Table 1's 'naive' target c_nrm (sigma x - sd^2 eps + sd^2 (s-1)/(s sigma) x)."""
    sd, s = 1.0, 4.0
    edm = SnapEDM(sd, s, "edm", dtype=torch.float64)
    x, eps = _data()
    sigma = torch.tensor([0.01, 0.5, 2.0, 30.0], dtype=torch.float64).view(-1, 1, 1, 1, 1)
    expected = (sigma * x - sd**2 * eps + sd**2 * (s - 1) / (s * sigma) * x) / (sd * torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(edm.target(x, sigma.flatten(), eps), expected)


def test_sigma_sampling_is_lognormal():
    edm = SnapEDM(p_mean=-1.2, p_std=1.2)
    log_sigma = torch.log(edm.sample_sigma(200_000, generator=torch.Generator().manual_seed(0)))
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)


def test_boundary_dtype_is_fp32_even_for_bf16_network():
    """The network may run in bf16; preconditioning and the loss stay in the framework's dtype."""
    edm = SnapEDM()
    x, eps = (t.float() for t in _data())
    seen = {}

    def net(x_in, c_noise):
        seen["in"] = x_in.dtype
        return torch.zeros_like(x_in, dtype=torch.bfloat16)

    loss, _ = edm.loss(net, x, eps=eps)
    assert seen["in"] == torch.float32 and loss.dtype == torch.float32
    assert SnapEDM(dtype=torch.float64).loss(net, x, eps=eps)[0].dtype == torch.float64


def test_per_sample_sigma_in():
    """Table 3 row (iv): per-sample sigma_in (images vs videos) equals running each sample on its own."""
    edm = SnapEDM(1.0, 4.0, dtype=torch.float64)
    x, eps = _data()
    sigma = torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=torch.float64)
    s_in = torch.tensor([1.0, 4.0, 1.0, 4.0], dtype=torch.float64)
    F = torch.randn_like(x)
    loss, _ = edm.loss(lambda a, b: F, x, sigma=sigma, eps=eps, sigma_in=s_in)
    for i in range(4):
        one = SnapEDM(1.0, float(s_in[i]), dtype=torch.float64)
        ref, _ = one.loss(lambda a, b: F[i : i + 1], x[i : i + 1], sigma=sigma[i : i + 1], eps=eps[i : i + 1])
        torch.testing.assert_close(loss[i : i + 1], ref)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="sigma_in"):
        SnapEDM(sigma_in=0)
    with pytest.raises(ValueError, match="framework"):
        SnapEDM(framework="ddpm")
