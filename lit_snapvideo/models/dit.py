"""A plain diffusion transformer over every patch of the clip: the control between the U-Net and FIT.

DiT (Peebles & Xie 2023) adapted to text-to-video the PixArt-alpha way. It separates "a patch transformer" from
"FIT's latent bottleneck": the same patches as FIT, but every patch attends to every other one directly.

Data flow (B videos, T frames, H x W pixels; dit_mini at 8 x 24 x 40 in brackets)::

    x (B, 3, T, H, W)                                   [already times c_in]
      (-> ConvStem: x ++ conv(x), option)
      -> patchify pt x ph x pw, Linear                  tokens (B, N, D)   [N = 8 x 6 x 10 = 480 patches of 1x4x4]
         + learned positional table (T/pt x H/ph x W/pw)
      depth x DiT block:
         adaLN-zero self-attention over all N tokens    (axial RoPE on q, k with pos_kind="rope")
         cross-attention to the conditioning tokens     [sigma, fps, size, text...] (PixArt)
         adaLN-zero FFN
      -> adaLN LayerNorm, Linear (zero-init) -> unpatchify -> F (B, 3, T, H, W); state = None

adaLN-zero: the conditioning vector (sigma + fps + size + pooled text, ``layers.ConditioningEmbedding``) gives each
block a shift, scale and gate for both of its norms from a zero-initialised projection, so every block starts as the
identity (DiT's best conditioning). F == 0 at initialisation (D = c_skip * x_sigma), as in FIT and the U-Net.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import LN_EPS, AdaLNModulation, ConditioningEmbedding, ConvStem, TransformerLayer, feed_forward, modulate

ROPE_BASE = 100.0  # the grids are short (at most tens of patches an axis): lower frequencies than the text 10,000


def axial_rope_angles(grid: tuple[int, int, int], head_dim: int, device=None) -> torch.Tensor:
    """(N = T*H*W, head_dim / 2) rotation angles of axial RoPE on a patch grid (HDiT / Lumina axial RoPE).

    The head's frequency pairs are split over the axes (time gets a quarter, height and width the rest), each
    axis rotating by its integer patch coordinate; attention then depends on relative positions only."""
    half = head_dim // 2
    t_pairs = max(1, half // 4)
    h_pairs = (half - t_pairs) // 2
    pairs = (t_pairs, h_pairs, half - t_pairs - h_pairs)
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij"), -1
    ).reshape(-1, 3)  # (N, 3)
    angles = []
    for axis, n in enumerate(pairs):
        freqs = ROPE_BASE ** (-torch.arange(n, device=device, dtype=torch.float32) / max(n, 1))
        angles.append(coords[:, axis : axis + 1] * freqs[None])
    return torch.cat(angles, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x (B, heads, N, d) rotated pairwise (first half with second half) by angles (N, d / 2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention (SDPA) of x (B, N, dim), with axial RoPE on q and k when ``angles`` is given."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        return self.out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))


class DiTBlock(nn.Module):
    """x (B, N, D), cond tokens (B, M, Dc), mask (B, M), vector (B, Dc), angles -> x (B, N, D)."""

    def __init__(self, dim: int, cond_dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.attn = SelfAttention(dim, heads)
        self.cross = TransformerLayer(dim, cond_dim, dim, heads, ffn=False)  # pre-LN cross-attention residual
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.ffn = feed_forward(dim, mlp_ratio, dropout)
        self.modulation = AdaLNModulation(cond_dim, dim, 6)  # shift, scale, gate of each of the two norms

    def forward(self, x, cond_tokens, cond_mask, vector, angles=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(vector).unbind(1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), angles)
        x = self.cross(x, cond_tokens, cond_mask)
        return x + gate2[:, None] * self.ffn(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Diffusion transformer backbone; see the module docstring. forward(x, c_noise, cond, self_cond) -> (F, None).

    x: (B, C, T, H, W); c_noise: (B,); cond: {"text" (B,L,text_dim), "text_mask" (B,L) bool, "fps" (B,) (inf for
    images), "orig_size" (B,2)}; self_cond is accepted and ignored (a DiT carries no state).

    Options (the levers the FIT screen tries, so the two can be compared): ``pos_kind="rope"`` adds axial RoPE to
    the self-attention (relative positions); ``conv_stem`` channels of full-resolution convolution features join
    the pixels before the patch embedding (layers.ConvStem); a smaller ``patch_size`` needs nothing else.
    """

    def __init__(
        self,
        text_dim: int,
        input_size: Sequence[int] = (8, 24, 40),  # (T, H, W) the positional table is learned for
        in_channels: int = 3,
        patch_size: Sequence[int] = (1, 4, 4),
        dim: int = 64,
        depth: int = 5,
        head_dim: int = 32,
        cond_dim: int = 128,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pos_kind: str = "learned",
        pos_init_std: float = 0.02,
        conv_stem: int = 0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"DiT: dim {dim} is not divisible by head_dim {head_dim}")
        if pos_kind not in ("learned", "rope"):
            raise ValueError(f"DiT: pos_kind must be 'learned' or 'rope', got {pos_kind!r}")
        if pos_kind == "rope" and head_dim % 2:
            raise ValueError(f"DiT: axial RoPE needs an even head_dim, got {head_dim}")
        self.in_channels = in_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.input_size = tuple(int(s) for s in input_size)
        self.head_dim, self.pos_kind = head_dim, pos_kind
        self.grad_checkpointing = grad_checkpointing
        grid = self.grid(*self.input_size)
        self.stem = ConvStem(in_channels, conv_stem) if conv_stem else None
        patch = math.prod(self.patch_size)
        self.patch_embed = nn.Linear((in_channels + conv_stem) * patch, dim)
        self.pos_embed = nn.Parameter(torch.randn(*grid, dim) * pos_init_std)  # (Tp, Hp, Wp, D)
        self.cond_embed = ConditioningEmbedding(cond_dim, text_dim, pooled_text=True)
        self.blocks = nn.ModuleList(
            [DiTBlock(dim, cond_dim, dim // head_dim, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.out_norm = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.out_modulation = AdaLNModulation(cond_dim, dim, 2)
        self.out_proj = nn.Linear(dim, in_channels * patch)
        nn.init.zeros_(self.out_proj.weight)  # F == 0 at init
        nn.init.zeros_(self.out_proj.bias)

    def grid(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """(T, H, W) pixels -> the patch grid; ValueError naming the sizes when a patch does not divide them."""
        size = (t, h, w)
        if any(s % p for s, p in zip(size, self.patch_size)):
            raise ValueError(f"DiT: input size (T,H,W)={size} is not divisible by patch size {self.patch_size}")
        return tuple(s // p for s, p in zip(size, self.patch_size))

    def _positional_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(Tp*Hp*Wp, D): the learned table, trilinearly resized for another grid (as FIT's)."""
        table = self.pos_embed
        if grid != tuple(table.shape[:3]):
            table = rearrange(table, "t h w d -> 1 d t h w")
            table = F.interpolate(table, size=grid, mode="trilinear", align_corners=False)
            table = rearrange(table, "1 d t h w -> t h w d")
        return table.reshape(-1, table.shape[-1])

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict, self_cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"DiT: expected x of shape (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        (tp, hp, wp), (pt, ph, pw) = self.grid(*x.shape[2:]), self.patch_size
        if self.stem is not None:
            x = self.stem(x)
        tokens = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
        tokens = self.patch_embed(tokens) + self._positional_embedding((tp, hp, wp))
        cond_tokens, cond_mask, vector = self.cond_embed(c_noise, cond)
        angles = axial_rope_angles((tp, hp, wp), self.head_dim, x.device) if self.pos_kind == "rope" else None
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, cond_tokens, cond_mask, vector, angles, use_reentrant=False)
            else:
                tokens = block(tokens, cond_tokens, cond_mask, vector, angles)
        shift, scale = self.out_modulation(vector).unbind(1)
        pixels = self.out_proj(modulate(self.out_norm(tokens), shift, scale))
        out = rearrange(
            pixels, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)", t=tp, h=hp, w=wp, pt=pt, ph=ph, pw=pw
        )
        return out, None
