"""Fréchet distance between two Gaussians fitted to feature sets (FID, FVD, probe-FVD all reduce to it).

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})

Everything runs in float64. The trace of the matrix square root is computed without ``scipy.linalg.sqrtm``:
(S1 S2)^{1/2} is similar to the symmetric PSD matrix S1^{1/2} S2 S1^{1/2}, so its trace is the sum of the
square roots of that matrix's eigenvalues. Both steps use ``eigh`` on symmetric matrices, which is exact and
stable; eigenvalues that round to slightly below zero are clamped (the symmetric form has no imaginary part
to discard, unlike ``sqrtm`` of the non-symmetric product).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class GaussianStats(NamedTuple):
    """Mean ``(D,)`` and covariance ``(D, D)`` of ``num`` feature vectors, float64 on the CPU."""

    mu: torch.Tensor
    sigma: torch.Tensor
    num: int


def feature_stats(feats: torch.Tensor) -> GaussianStats:
    """Mean and covariance of ``feats`` ``(N, D)``.

    The covariance divides by N (the maximum-likelihood estimate), as stylegan-v's ``FeatureStats`` does;
    torchmetrics' FID divides by N-1. With N = 2048 the two differ by 0.05 %."""
    if feats.ndim != 2:
        raise ValueError(f"feature_stats: expected features of shape (N, D), got {tuple(feats.shape)}")
    if feats.shape[0] < 2:
        raise ValueError(f"feature_stats: need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    x = feats.detach().to("cpu", torch.float64)
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / x.shape[0]
    return GaussianStats(mu, sigma, x.shape[0])


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    evals, evecs = torch.linalg.eigh(matrix)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (tensors or arrays, any float dtype).

    ``mu*`` are ``(D,)``, ``sigma*`` are ``(D, D)`` symmetric PSD. Returns a Python float (>= 0 up to rounding)."""
    mu1, mu2, sigma1, sigma2 = (
        torch.as_tensor(a, dtype=torch.float64, device="cpu") for a in (mu1, mu2, sigma1, sigma2)
    )
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(
            f"frechet_distance: means must be two (D,) vectors, got {tuple(mu1.shape)} and {tuple(mu2.shape)}"
        )
    dim = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (dim, dim):
            raise ValueError(f"frechet_distance: {name} must be ({dim}, {dim}), got {tuple(s.shape)}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not bool(a.isfinite().all()):  # eigh of a NaN matrix is an oneMKL error, or a crash
            raise ValueError(f"frechet_distance: {name} holds NaN or inf")
    sigma1 = (sigma1 + sigma1.T) / 2  # remove asymmetric rounding noise before eigh
    sigma2 = (sigma2 + sigma2.T) / 2
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    dist = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(dist)


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """:func:`frechet_distance` of two :class:`GaussianStats`."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
