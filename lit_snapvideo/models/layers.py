"""Building blocks shared by both backbones (FIT and the 3D U-Net).

* :func:`sinusoidal_embedding` / :class:`ScalarEmbedding`: scalar -> vector (pix2seq / ADM style).
* :class:`ConditioningEmbedding`: the paper's conditioning (§3.2): noise level, frame rate (with a learned
  "infinite fps" vector for still images), original resolution and the text tokens, as one token sequence
  (FIT reads it by cross-attention; the U-Net cross-attends to it) and as one summed vector (the U-Net's
  scale-shift embedding).
* :class:`Attention`: multi-head (cross-)attention through ``F.scaled_dot_product_attention`` with a key mask.
* :class:`TransformerLayer`: pre-LN ``x + Attn(LN(x), LN(ctx))`` then ``x + FFN(LN(x))`` (pix2seq's layer).
* :func:`feed_forward`: timm's ``Mlp`` (Linear -> GELU -> Dropout -> Linear).
* :class:`ConvStem`: full-resolution 3x3x3 convolutions concatenated to the input of a patch transformer (FIT, DiT).

The paper leaves the scalar embeddings unspecified (§9 item 1). Choices here:
* sigma: ``c_noise = ln(sigma)/4`` (given by the caller) scaled by 1000 (pix2seq's ScalarEmbedding scaling,
  so ln-sigma in [-6.2, 4.4] spans the mid frequencies), sinusoids, then Linear-SiLU-Linear.
* fps: sinusoids of the frame rate itself (1-60 fps resolves in the mid/low frequencies), MLP; an fps of
  ``inf`` (still image) takes a learned vector instead (paper §2.6: images are infinite-fps videos).
* original size: sinusoids of H and W in pixels, concatenated, MLP.
* text: LayerNorm then Linear from the text encoder's width to the conditioning width (T5-11B's 1024 ->
  768 for FIT-500M); padded tokens are masked out of every attention through ``attn_mask``.
The three scalar tokens are always attendable, so no attention row is ever fully masked (an empty caption
would otherwise give NaNs through SDPA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp
from torch import nn

LN_EPS = 1e-6  # pix2seq's LayerNorm epsilon

COND_KEYS = ("text", "text_mask", "fps", "orig_size")


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) float -> (B, dim): [cos(x*f_i), sin(x*f_i)] with f_i = max_period^(-i/(dim/2))."""
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ScalarEmbedding(nn.Module):
    """(B,) scalar -> (B, dim): sinusoids of ``x * scale`` (``freq_dim`` of them), Linear, SiLU, Linear."""

    def __init__(self, dim: int, freq_dim: int | None = None, scale: float = 1.0):
        super().__init__()
        self.freq_dim = freq_dim or max(dim // 4, 32)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(x * self.scale, self.freq_dim))


def check_cond(cond: dict, batch: int) -> None:
    """Raise a ValueError naming the key when ``cond`` lacks an entry or has the wrong batch size."""
    missing = [k for k in COND_KEYS if k not in cond]
    if missing:
        raise ValueError(f"backbone cond dict lacks {missing}; expected keys {list(COND_KEYS)}")
    for key in COND_KEYS:
        if cond[key].shape[0] != batch:
            raise ValueError(f"backbone cond['{key}'] has batch {cond[key].shape[0]}, x has batch {batch}")
    if cond["text"].shape[:2] != cond["text_mask"].shape:
        raise ValueError(
            f"backbone cond['text_mask'] shape {tuple(cond['text_mask'].shape)} does not match "
            f"cond['text'] (B, L) = {tuple(cond['text'].shape[:2])}"
        )


class ConditioningEmbedding(nn.Module):
    """Noise level, frame rate, original size and text -> conditioning tokens of width ``dim``.

    forward(c_noise (B,), cond) -> (tokens (B, 3+L, dim), mask (B, 3+L) bool True=attend, vector (B, dim))
    where tokens = [sigma, fps, size, text_1..text_L] and vector = sigma + fps + size tokens, plus with
    ``pooled_text`` a linear map of the masked mean of the text tokens (Imagen's pooled text embedding).
    """

    def __init__(self, dim: int, text_dim: int, pooled_text: bool = False):
        super().__init__()
        self.sigma = ScalarEmbedding(dim, scale=1000.0)
        self.fps = ScalarEmbedding(dim)
        self.infinite_fps = nn.Parameter(torch.randn(dim) * 0.02)  # still images (paper §2.6)
        self.size_freq_dim = max(dim // 8, 16)
        self.size = nn.Sequential(nn.Linear(2 * self.size_freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text = nn.Sequential(nn.LayerNorm(text_dim, eps=LN_EPS), nn.Linear(text_dim, dim))
        self.pooled_text = nn.Linear(dim, dim) if pooled_text else None

    def forward(self, c_noise: torch.Tensor, cond: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_cond(cond, c_noise.shape[0])
        fps = cond["fps"].float()
        is_image = torch.isinf(fps)
        # finite placeholder where fps is inf, so no NaN reaches the (unused) MLP branch or its gradient
        fps_token = self.fps(torch.where(is_image, torch.zeros_like(fps), fps))
        fps_token = torch.where(is_image[:, None], self.infinite_fps.to(fps_token.dtype), fps_token)
        h, w = cond["orig_size"].float().unbind(-1)
        size_token = self.size(
            torch.cat([sinusoidal_embedding(h, self.size_freq_dim), sinusoidal_embedding(w, self.size_freq_dim)], -1)
        )
        sigma_token = self.sigma(c_noise)
        scalar_tokens = torch.stack([sigma_token, fps_token, size_token], dim=1)  # (B, 3, dim)
        text_tokens = self.text(cond["text"].to(scalar_tokens.dtype))  # (B, L, dim)
        tokens = torch.cat([scalar_tokens, text_tokens], dim=1)
        mask = torch.cat(
            [scalar_tokens.new_ones(scalar_tokens.shape[:2], dtype=torch.bool), cond["text_mask"].bool()],
            dim=1,
        )
        vector = sigma_token + fps_token + size_token
        if self.pooled_text is not None:
            text_mask = cond["text_mask"].to(text_tokens.dtype)[..., None]  # (B, L, 1)
            mean = (text_tokens * text_mask).sum(1) / text_mask.sum(1).clamp(min=1.0)
            vector = vector + self.pooled_text(mean)
        return tokens, mask, vector


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, N, query_dim) over ``context`` (B, M, context_dim) (self if None).

    Projects to ``inner_dim`` = heads * head_dim, attends with SDPA, projects back to ``query_dim``.
    ``mask``: (B, M) bool, True = key may be attended; or a float additive bias broadcastable to
    (B, heads, N, M) (the U-Net's relative temporal position bias). ``zero_init``: output projection starts at 0.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        inner_dim: int | None = None,
        heads: int = 8,
        zero_init: bool = False,
    ):
        super().__init__()
        context_dim = context_dim or query_dim
        inner_dim = inner_dim or query_dim
        if inner_dim % heads:
            raise ValueError(f"Attention: inner width {inner_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim)
        self.to_kv = nn.Linear(context_dim, 2 * inner_dim)
        self.to_out = nn.Linear(inner_dim, query_dim)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        attn_mask = mask
        if mask is not None and mask.dtype == torch.bool:
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, M): broadcast over heads and queries
        elif mask is not None:
            attn_mask = mask.to(q.dtype)  # SDPA wants a float bias in the query's dtype (autocast)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def feed_forward(dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> nn.Module:
    """Linear(dim, ratio*dim) -> GELU -> Dropout -> Linear(ratio*dim, dim) (pix2seq / ViT FFN)."""
    return Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=(dropout, 0.0))


class TransformerLayer(nn.Module):
    """Pre-LN residual attention (self, or cross over ``context``) followed by a pre-LN residual FFN.

    x (B, N, dim), context (B, M, context_dim) or None, mask (B, M) -> (B, N, dim).
    ``ffn=False`` drops the FFN (the U-Net's ADM-style attention blocks have none).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        inner_dim: int | None = None,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        ffn: bool = True,
        zero_init: bool = False,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.context_norm = nn.LayerNorm(context_dim, eps=LN_EPS) if context_dim is not None else None
        self.attn = Attention(dim, context_dim, inner_dim, heads, zero_init=zero_init)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS) if ffn else None
        self.ffn = feed_forward(dim, mlp_ratio, dropout) if ffn else None
        if ffn and zero_init:
            nn.init.zeros_(self.ffn.fc2.weight)
            nn.init.zeros_(self.ffn.fc2.bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        modulation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``modulation``: optional (B, 4, dim) = (shift, scale) of the attention norm, then of the FFN norm (adaLN)."""
        if context is not None and self.context_norm is not None:
            context = self.context_norm(context)
        h = self.norm(x)
        if modulation is not None:
            h = modulate(h, modulation[:, 0], modulation[:, 1])
        x = x + self.attn(h, context, mask)
        if self.ffn is not None:
            h = self.ffn_norm(x)
            if modulation is not None:
                h = modulate(h, modulation[:, 2], modulation[:, 3])
            x = x + self.ffn(h)
        return x


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN (DiT): x (B, N, D) * (1 + scale (B, D)) + shift (B, D); the identity when both are zero."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNModulation(nn.Module):
    """Conditioning vector (B, cond_dim) -> (B, count, dim) shifts/scales for :func:`modulate` (DiT's adaLN-zero).

    The projection is zero-initialised, so every modulated norm starts as the plain norm."""

    def __init__(self, cond_dim: int, dim: int, count: int):
        super().__init__()
        self.count = count
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, count * dim))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(vector), "b (k d) -> b k d", k=self.count)


def sincos_embedding_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(T, H, W) grid -> (T, H, W, dim) fixed sin-cos position table (MAE / DiT, one third of the width per axis).

    Scaled to unit RMS per element, the scale of a LayerNorm output, so position is as strong as content."""
    axis_dims = [2 * (dim // 6), 2 * (dim // 6)]
    axis_dims.append(dim - sum(axis_dims))
    if axis_dims[-1] % 2 or min(axis_dims) == 0:
        raise ValueError(f"sincos_embedding_3d: width {dim} must be even and at least 6")
    tables = []
    for axis, (size, width) in enumerate(zip(grid, axis_dims)):
        emb = sinusoidal_embedding(torch.arange(size, dtype=torch.float32), width)  # (size, width)
        shape = [1, 1, 1, width]
        shape[axis] = size
        tables.append(emb.view(shape).expand(*grid, width))
    return torch.cat(tables, dim=-1) * math.sqrt(2.0)


class ConvStem(nn.Module):
    """Full-resolution local features for a patch transformer ("early convolutions", Xiao et al. 2021).

    x (B, C, T, H, W) -> (B, C + channels, T, H, W): the input with two 3x3x3 convolutions of it (SiLU between)
    concatenated, so each patch token is embedded from its neighbourhood, not from its own noisy pixels alone. The
    output stays the transformer's own patch projection: a skip from these features to the output would pass the
    input noise through (docs/decisions.md, issue 27)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv3d(in_channels, channels, 3, padding=1), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.convs(x)], dim=1)
