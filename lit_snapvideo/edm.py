"""Snap-EDM: the diffusion framework of Snap Video (paper §2, Table 1), and EDM's original for comparison.

Every sigma-dependent coefficient lives here and nowhere else (NVlabs/edm's habit). Pure torch, no Lightning.

Forward process (both frameworks):   x_sigma = x / sigma_in + sigma * eps,   eps ~ N(0, I)
Denoiser:                            D(x_sigma) = c_skip * x_sigma + c_out * F(c_in * x_sigma; c_noise)
Training objective, F-space:         L = w(sigma) * (F - target)^2, per element (the caller reduces)
which equals lambda(sigma) * (D - x)^2 exactly, for any F.

framework="snap" (Table 1, right column; sd = sigma_data, s = sigma_in):
    target = c_nrm * v,  v = sd^2 eps - sigma x,  c_nrm = 1 / (sd sqrt(sigma^2 + sd^2))
    c_in   = 1 / sqrt(sd^2 / s^2 + sigma^2)
    c_skip = s sd^2 / (s sigma^2 + sd^2)
    c_out  = -s sigma sd sqrt(sigma^2 + sd^2) / (sd^2 + s sigma^2)        (negative: F regresses +c_nrm v)
    w      = (sigma^2 + sd^2)^2 / (sigma^2 + sd^2 / s)^2                 (sd^2/s, not sd^2/s^2)
    lambda = 1/sd^2 + 1/sigma^2
framework="edm" (EDM's own coefficients; with s = 1 this is EDM exactly, with s != 1 Table 1's "naive" column):
    c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
    target = (x - c_skip x_sigma) / c_out, w = lambda c_out^2 (= 1).
Both: c_noise = ln(sigma)/4, ln(sigma) ~ N(p_mean, p_std^2) in training.

Shapes: x, eps, x_sigma, F are (B, C, T, H, W) (any trailing dims work); sigma and a per-sample sigma_in are (B,)
or scalars. Coefficients are computed in ``dtype`` (float32 by default, float64 when asked) whatever the network's
precision: the network output is cast to ``dtype`` before it is combined with them.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

# net(c_in * x_sigma, c_noise, **cond) -> F, or (F, state) for backbones with a state (FIT latents)
Network = Callable[..., Any]


class SnapEDM:
    """The Snap Video EDM variant (``framework="snap"``) or EDM's original (``framework="edm"``).

    >>> edm = SnapEDM(sigma_data=1.0, sigma_in=4.0)
    >>> c_skip, c_out, c_in, c_noise = edm.scalings(torch.tensor([1.0]))
    """

    def __init__(
        self,
        sigma_data: float = 1.0,
        sigma_in: float = 4.0,
        framework: str = "snap",
        p_mean: float = -1.2,
        p_std: float = 1.2,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if framework not in ("snap", "edm"):
            raise ValueError(f"framework must be 'snap' or 'edm', got {framework!r}")
        if sigma_data <= 0 or sigma_in <= 0:
            raise ValueError(f"sigma_data and sigma_in must be > 0, got {sigma_data} and {sigma_in}")
        self.sigma_data = float(sigma_data)
        self.sigma_in = float(sigma_in)
        self.framework = framework
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)
        self.dtype = dtype

    @classmethod
    def from_config(cls, diffusion_cfg: Any, dtype: torch.dtype = torch.float32) -> "SnapEDM":
        d = diffusion_cfg
        return cls(d.sigma_data, d.sigma_in, d.framework, d.p_mean, d.p_std, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"SnapEDM(framework={self.framework!r}, sigma_data={self.sigma_data}, sigma_in={self.sigma_in}, "
            f"P_mean={self.p_mean}, P_std={self.p_std})"
        )

    # ---- helpers ---------------------------------------------------------------------------

    def _as(self, value: Tensor | float, like: Optional[Tensor] = None) -> Tensor:
        device = like.device if like is not None else None
        return torch.as_tensor(value, dtype=self.dtype, device=device)

    def _per_sample(self, value: Tensor | float, x: Tensor) -> Tensor:
        """Scalar or (B,) -> (B, 1, ..., 1) to broadcast against x (B, ...)."""
        value = self._as(value, x)
        if value.ndim == 0:
            return value
        return value.reshape(-1, *([1] * (x.ndim - 1)))

    def _sigma_in(self, sigma_in: Tensor | float | None, like: Tensor) -> Tensor:
        return self._as(self.sigma_in if sigma_in is None else sigma_in, like)

    # ---- coefficients (all broadcast over sigma's shape) ------------------------------------

    def c_noise(self, sigma: Tensor | float) -> Tensor:
        return torch.log(self._as(sigma)) / 4

    def c_nrm(self, sigma: Tensor | float) -> Tensor:
        """Target normalisation: makes c_nrm * v unit-variance for unit-variance data (both frameworks)."""
        sigma, sd = self._as(sigma), self.sigma_data
        return 1 / (sd * torch.sqrt(sigma**2 + sd**2))

    def scalings(
        self, sigma: Tensor | float, sigma_in: Tensor | float | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise), each shaped like ``sigma``."""
        sigma = self._as(sigma)
        s, sd = self._sigma_in(sigma_in, sigma), self.sigma_data
        if self.framework == "snap":
            c_skip = s * sd**2 / (s * sigma**2 + sd**2)
            c_out = -s * sigma * sd * torch.sqrt(sigma**2 + sd**2) / (sd**2 + s * sigma**2)
            c_in = 1 / torch.sqrt(sd**2 / s**2 + sigma**2)
        else:
            c_skip = sd**2 / (sigma**2 + sd**2) * torch.ones_like(s)
            c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2) * torch.ones_like(s)
            c_in = 1 / torch.sqrt(sigma**2 + sd**2) * torch.ones_like(s)
        return c_skip, c_out, c_in, self.c_noise(sigma)

    def loss_weight(self, sigma: Tensor | float) -> Tensor:
        """lambda(sigma) = 1/sigma_data^2 + 1/sigma^2, the D-space weight (unchanged from EDM)."""
        sigma = self._as(sigma)
        return 1 / self.sigma_data**2 + 1 / sigma**2

    def f_weight(self, sigma: Tensor | float, sigma_in: Tensor | float | None = None) -> Tensor:
        """w(sigma), the F-space weight: lambda * c_out^2."""
        sigma = self._as(sigma)
        s, sd = self._sigma_in(sigma_in, sigma), self.sigma_data
        if self.framework == "snap":
            return (sigma**2 + sd**2) ** 2 / (sigma**2 + sd**2 / s) ** 2
        _, c_out, _, _ = self.scalings(sigma, s)
        return self.loss_weight(sigma) * c_out**2

    # ---- forward process, target, denoiser, loss -------------------------------------------

    def sample_sigma(self, n: int, generator: Optional[torch.Generator] = None, device: Any = None) -> Tensor:
        """ln(sigma) ~ N(p_mean, p_std^2); returns (n,) in ``dtype``."""
        z = torch.randn(n, generator=generator, device=device, dtype=self.dtype)
        return torch.exp(z * self.p_std + self.p_mean)

    def noise(self, x: Tensor, sigma: Tensor | float, eps: Tensor, sigma_in: Tensor | float | None = None) -> Tensor:
        """x_sigma = x / sigma_in + sigma * eps."""
        x, eps = x.to(self.dtype), eps.to(self.dtype)
        s = self._per_sample(self._sigma_in(sigma_in, x), x)
        return x / s + self._per_sample(sigma, x) * eps

    def target(self, x: Tensor, sigma: Tensor | float, eps: Tensor, sigma_in: Tensor | float | None = None) -> Tensor:
        """The network's regression target in F-space."""
        x, eps = x.to(self.dtype), eps.to(self.dtype)
        sig = self._per_sample(sigma, x)
        if self.framework == "snap":
            v = self.sigma_data**2 * eps - sig * x
            return self.c_nrm(sig) * v
        c_skip, c_out, _, _ = (self._per_sample(c, x) for c in self.scalings(sigma, sigma_in))
        return (x - c_skip * self.noise(x, sigma, eps, sigma_in)) / c_out

    def denoise(
        self,
        net: Network,
        x_sigma: Tensor,
        sigma: Tensor | float,
        sigma_in: Tensor | float | None = None,
        return_state: bool = False,
        **cond: Any,
    ) -> Tensor | tuple[Tensor, Any]:
        """x_hat = D(x_sigma; sigma), an estimate of the clean data x (data scale, not divided by sigma_in).

        ``net(c_in * x_sigma, c_noise, **cond)`` returns F or (F, state); ``return_state`` returns (x_hat, state)."""
        F, state = self.network_output(net, x_sigma, sigma, sigma_in, **cond)
        x_hat = self.combine(x_sigma, F, sigma, sigma_in)
        return (x_hat, state) if return_state else x_hat

    def network_output(
        self, net: Network, x_sigma: Tensor, sigma: Tensor | float, sigma_in: Tensor | float | None = None, **cond: Any
    ) -> tuple[Tensor, Any]:
        """(F in ``dtype``, state): one network call on the preconditioned input."""
        x_sigma = x_sigma.to(self.dtype)
        sigma = self._as(sigma, x_sigma)
        if sigma.ndim == 0:
            sigma = sigma.expand(x_sigma.shape[0])
        _, _, c_in, c_noise = self.scalings(sigma, sigma_in)
        out = net(self._per_sample(c_in, x_sigma) * x_sigma, c_noise, **cond)
        F, state = out if isinstance(out, tuple) else (out, None)
        return F.to(self.dtype), state

    def combine(
        self, x_sigma: Tensor, F: Tensor, sigma: Tensor | float, sigma_in: Tensor | float | None = None
    ) -> Tensor:
        """D = c_skip * x_sigma + c_out * F."""
        x_sigma = x_sigma.to(self.dtype)
        c_skip, c_out, _, _ = self.scalings(self._as(sigma, x_sigma), sigma_in)
        return self._per_sample(c_skip, x_sigma) * x_sigma + self._per_sample(c_out, x_sigma) * F.to(self.dtype)

    def loss(
        self,
        net: Network,
        x: Tensor,
        sigma: Optional[Tensor] = None,
        eps: Optional[Tensor] = None,
        sigma_in: Tensor | float | None = None,
        generator: Optional[torch.Generator] = None,
        **cond: Any,
    ) -> tuple[Tensor, dict]:
        """Per-element F-space loss w * (F - target)^2, shape of x; the caller reduces it.

        Returns (loss, info) with info = {"sigma": (B,), "state": net state, "F": F, "x_sigma": the noisy input}. sigma and eps are drawn
        (log-normal, Gaussian) when not given."""
        x = x.to(self.dtype)
        if sigma is None:
            sigma = self.sample_sigma(x.shape[0], generator=generator, device=x.device)
        if eps is None:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=self.dtype)
        sigma = self._as(sigma, x)
        x_sigma = self.noise(x, sigma, eps, sigma_in)
        F, state = self.network_output(net, x_sigma, sigma, sigma_in, **cond)
        target = self.target(x, sigma, eps, sigma_in)
        w = self._per_sample(self.f_weight(sigma, sigma_in), x)
        return w * (F - target) ** 2, {"sigma": sigma, "state": state, "F": F, "x_sigma": x_sigma}
