"""Snap Video FIT: Far-reaching Interleaved Transformer adapted to video (paper §3.1-§3.2, Table 8, Fig. 3b).

Data flow (B videos, T frames, H x W pixels; defaults of FIT-500M in brackets)::

    x (B, 3, T, H, W)                                  [16 x 40 x 64, already times c_in]
      -> patchify 1x4x4, Linear + LayerNorm           patches (B*G, n, D_patch)  [G = 8 groups, n = 320]
         + learned positional embedding of the full patch grid (T x H/4 x W/4)
      latents: learned (N, D_latent), split into G groups of N/G   [N = 512 -> 64 per group]
         + LN_zero(FFN(self_cond))                     latent self-conditioning (pix2seq / RIN)
      6 x FIT block:
         1. cond-read   latents (all)  <- xattn  conditioning tokens [sigma, fps, size, text...]  + FFN
         2. read        latents (group g) <- xattn  patches (group g)                            + FFN
         3. compute     4 x [self-attention + FFN] over all N latents jointly (joint space-time)
         4. write       patches (group g) <- xattn  latents (group g)                            + FFN
      -> LayerNorm, Linear (zero-init) -> unpatchify -> F (B, 3, T, H, W);  state = latents (B, N, D_latent)

Groups are spatial tiles that span the whole clip: group size (T x H x W) counted in patches, 16x5x4 by
default, i.e. a 20x16-px tile over all 16 frames (paper §3.2: one group per tile across all frames gave the
best temporal modelling). There are no local (patch self-attention) layers (Table 8: 0 local layers).

Choices where the paper is silent (§9) and why:
* Block order follows Snap §3.4 (cond-read, read, compute, write); pix2seq reads patches before the cond.
* Every cross-attention is followed by an FFN, the cond-read included: Table 8 ticks "cross-attention
  feed-forward", and only with an FFN after the cond-read do the parameter counts reach 500M / 3.9B.
* Cross-attention widths follow pix2seq: read/write use inner width min(D_latent, D_patch) and
  min(latent heads, patch heads) heads; the cond-read uses the latent width and latent heads.
  Layers are pre-LN (eps 1e-6), GELU FFNs with ratio 4, dropout inside every FFN, attention via SDPA.
* Positional embeddings are learned for the *full* patch grid (T x H/4 x W/4), not per group position
  shared across groups as in pix2seq: with shared embeddings a patch token could not tell which spatial tile
  it belongs to. For an input grid other than ``input_size`` the table is trilinearly interpolated (a
  zero-shot approximation, as in ViT fine-tuning; train at a size by setting ``input_size`` to it).
* The latent count is the total over all groups (pix2seq's ``latent_slots``). At another resolution the
  same N latents are split over the new number of groups (as the paper's upsampler does: 768 latents over
  32 groups), so the self-conditioning state always has shape (B, N, D_latent).
* Self-conditioning: ``latents += LN_{gamma=0,beta=0}(h)``, ``h = s + FFN(LN(s))`` on the previous latents
  ``s`` (pix2seq). ``self_cond=None`` means zero previous latents; both are a no-op at initialisation.
* The output projection is zero-initialised, so F == 0 at initialisation (D = c_skip * x_sigma).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import LN_EPS, ConditioningEmbedding, TransformerLayer, feed_forward


class LatentSelfConditioning(nn.Module):
    """Previous latents (B, N, D) -> additive update (B, N, D) = LN_zero(s + FFN(LN(s))); zero at init."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = feed_forward(dim, mlp_ratio, dropout)
        self.out_norm = nn.LayerNorm(dim, eps=LN_EPS)
        nn.init.zeros_(self.out_norm.weight)  # gamma = 0: self-conditioning starts as a no-op
        nn.init.zeros_(self.out_norm.bias)

    def forward(self, prev: torch.Tensor) -> torch.Tensor:
        return self.out_norm(prev + self.ffn(self.norm(prev)))


class FITBlock(nn.Module):
    """One Snap Video FIT block: cond-read, group-wise read, global latent compute, group-wise write.

    forward(patches (B*G, n, Dp), latents (B, N, Dl), cond (B, M, Dc), cond_mask (B, M), groups=G)
        -> (patches (B*G, n, Dp), latents (B, N, Dl))
    """

    def __init__(self, patch_dim: int, latent_dim: int, cond_dim: int, global_layers: int, patch_heads: int,
                 latent_heads: int, mlp_ratio: float, dropout: float, cond_read_ffn: bool):
        super().__init__()
        cross_dim = min(patch_dim, latent_dim)
        cross_heads = min(patch_heads, latent_heads)
        layer = dict(mlp_ratio=mlp_ratio, dropout=dropout)
        self.cond_read = TransformerLayer(latent_dim, cond_dim, latent_dim, latent_heads, ffn=cond_read_ffn, **layer)
        self.read = TransformerLayer(latent_dim, patch_dim, cross_dim, cross_heads, **layer)
        self.compute = nn.ModuleList(
            [TransformerLayer(latent_dim, heads=latent_heads, **layer) for _ in range(global_layers)]
        )
        self.write = TransformerLayer(patch_dim, latent_dim, cross_dim, cross_heads, **layer)

    def forward(self, patches, latents, cond, cond_mask, groups: int):
        latents = self.cond_read(latents, cond, cond_mask)
        grouped = rearrange(latents, "b (g m) d -> (b g) m d", g=groups)
        grouped = self.read(grouped, patches)
        latents = rearrange(grouped, "(b g) m d -> b (g m) d", g=groups)
        for layer in self.compute:
            latents = layer(latents)
        grouped = rearrange(latents, "b (g m) d -> (b g) m d", g=groups)
        patches = self.write(patches, grouped)
        return patches, latents


class FIT(nn.Module):
    """Snap Video FIT backbone; see the module docstring. forward(x, c_noise, cond, self_cond) -> (F, latents).

    x: (B, C, T, H, W); c_noise: (B,); cond: {"text" (B,L,text_dim), "text_mask" (B,L) bool, "fps" (B,)
    (inf for images), "orig_size" (B,2)}; self_cond: (B, num_latents, latent_dim) or None.
    """

    def __init__(
        self,
        text_dim: int,
        input_size: Sequence[int] = (16, 40, 64),  # (T, H, W) the positional embeddings are learned for
        in_channels: int = 3,
        patch_size: Sequence[int] = (1, 4, 4),  # (T, H, W) pixels per patch
        group_size: Sequence[int] = (16, 5, 4),  # (T, H, W) patches per group
        patch_dim: int = 768,
        latent_dim: int = 1024,
        num_latents: int = 512,  # total over all groups
        cond_dim: int = 768,
        num_blocks: int = 6,
        global_layers: int = 4,
        patch_head_dim: int = 48,
        latent_head_dim: int = 64,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        cond_read_ffn: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = tuple(int(p) for p in patch_size)
        self.group_size = tuple(int(g) for g in group_size)
        self.input_size = tuple(int(s) for s in input_size)
        self.num_latents, self.latent_dim = num_latents, latent_dim
        self.grad_checkpointing = grad_checkpointing
        for name, dim, head_dim in (("patch", patch_dim, patch_head_dim), ("latent", latent_dim, latent_head_dim)):
            if dim % head_dim:
                raise ValueError(f"FIT: {name}_dim {dim} is not divisible by {name}_head_dim {head_dim}")
        grid, _ = self.layout(*self.input_size)  # validates input_size against patches, groups and latents

        patch_volume = in_channels * math.prod(self.patch_size)
        self.patch_embed = nn.Sequential(nn.Linear(patch_volume, patch_dim), nn.LayerNorm(patch_dim, eps=LN_EPS))
        self.pos_embed = nn.Parameter(torch.randn(*grid, patch_dim) * 0.02)  # (Tp, Hp, Wp, Dp)
        self.latent_embed = nn.Parameter(torch.randn(num_latents, latent_dim) * 0.02)  # (N, Dl)
        self.self_cond = LatentSelfConditioning(latent_dim, mlp_ratio, dropout)
        self.cond_embed = ConditioningEmbedding(cond_dim, text_dim)
        self.blocks = nn.ModuleList(
            [
                FITBlock(patch_dim, latent_dim, cond_dim, global_layers, patch_dim // patch_head_dim,
                         latent_dim // latent_head_dim, mlp_ratio, dropout, cond_read_ffn)
                for _ in range(num_blocks)
            ]
        )
        self.out_norm = nn.LayerNorm(patch_dim, eps=LN_EPS)
        self.out_proj = nn.Linear(patch_dim, patch_volume)
        nn.init.zeros_(self.out_proj.weight)  # F == 0 at init
        nn.init.zeros_(self.out_proj.bias)

    def layout(self, t: int, h: int, w: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(T, H, W) pixels -> (patch grid (Tp, Hp, Wp), group grid (nt, nh, nw)); ValueError naming the sizes."""
        size = (t, h, w)
        if any(s % p for s, p in zip(size, self.patch_size)):
            raise ValueError(
                f"FIT: input size (T,H,W)={size} is not divisible by patch size {self.patch_size}"
            )
        grid = tuple(s // p for s, p in zip(size, self.patch_size))
        if any(g % n for g, n in zip(grid, self.group_size)):
            raise ValueError(
                f"FIT: patch grid (T,H,W)={grid} (input {size}, patch {self.patch_size}) is not divisible by "
                f"group size {self.group_size} patches"
            )
        groups = tuple(g // n for g, n in zip(grid, self.group_size))
        if self.num_latents % math.prod(groups):
            raise ValueError(
                f"FIT: {self.num_latents} latents cannot be split evenly over {math.prod(groups)} groups "
                f"(input {size}, group grid {groups})"
            )
        return grid, groups

    def _positional_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(Tp, Hp, Wp, Dp) for this grid; trilinear resize of the learned table for other input sizes."""
        if grid == tuple(self.pos_embed.shape[:3]):
            return self.pos_embed
        table = rearrange(self.pos_embed, "t h w d -> 1 d t h w")
        table = F.interpolate(table, size=grid, mode="trilinear", align_corners=False)
        return rearrange(table, "1 d t h w -> t h w d")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict,
                self_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"FIT: expected x of shape (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        batch = x.shape[0]
        grid, (nt, nh, nw) = self.layout(*x.shape[2:])
        groups = nt * nh * nw
        (pt, ph, pw), (gt, gh, gw) = self.patch_size, self.group_size
        to_groups = "(nt gt) (nh gh) (nw gw) d -> (nt nh nw) (gt gh gw) d"

        patches = rearrange(
            x, "b c (nt gt pt) (nh gh ph) (nw gw pw) -> b (nt nh nw) (gt gh gw) (pt ph pw c)",
            nt=nt, nh=nh, nw=nw, gt=gt, gh=gh, gw=gw, pt=pt, ph=ph, pw=pw,
        )
        pos = rearrange(self._positional_embedding(grid), to_groups, nt=nt, nh=nh, nw=nw)
        patches = rearrange(self.patch_embed(patches) + pos, "b g n d -> (b g) n d")

        latents = self.latent_embed.expand(batch, -1, -1)
        if self_cond is None:  # zero previous latents: one row suffices, every row gives the same update
            self_cond = latents.new_zeros(1, 1, self.latent_dim)
        elif self_cond.shape[1:] != (self.num_latents, self.latent_dim):
            raise ValueError(
                f"FIT: self_cond must have shape (B, {self.num_latents}, {self.latent_dim}), got {tuple(self_cond.shape)}"
            )
        latents = latents + self.self_cond(self_cond)

        cond_tokens, cond_mask, _ = self.cond_embed(c_noise, cond)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                patches, latents = checkpoint(block, patches, latents, cond_tokens, cond_mask, groups,
                                              use_reentrant=False)
            else:
                patches, latents = block(patches, latents, cond_tokens, cond_mask, groups)

        pixels = self.out_proj(self.out_norm(patches))
        out = rearrange(
            pixels, "(b nt nh nw) (gt gh gw) (pt ph pw c) -> b c (nt gt pt) (nh gh ph) (nw gw pw)",
            b=batch, nt=nt, nh=nh, nw=nw, gt=gt, gh=gh, gw=gw, pt=pt, ph=ph, pw=pw,
        )
        return out, latents
