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
best temporal modelling). There are no local (patch self-attention) layers (Table 8: 0 local layers); see :class:`FIT` for the
options a small model may turn on.

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

from .layers import (
    LN_EPS,
    AdaLNModulation,
    ConditioningEmbedding,
    ConvStem,
    TransformerLayer,
    feed_forward,
    modulate,
    sincos_embedding_3d,
)


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


class PatchGridConv(nn.Module):
    """Zero-initialised depthwise 3x3x3 convolution over the whole patch grid, as a residual (RIN's patch conv).

    forward(patches (B*G, n, D), grid layout) -> (B*G, n, D); the identity at initialisation."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, padding=1, groups=dim)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, patches: torch.Tensor, layout: dict) -> torch.Tensor:
        grid = rearrange(patches, f"(b {GROUPS}) ({GROUP}) d -> b d {GRID}", **layout)
        return patches + rearrange(self.conv(grid), f"b d {GRID} -> (b {GROUPS}) ({GROUP}) d", **layout)


# einops axes of the patch grid: groups (nt nh nw) of (gt gh gw) patches each
GROUPS, GROUP, GRID = "nt nh nw", "gt gh gw", "(nt gt) (nh gh) (nw gw)"


class FITBlock(nn.Module):
    """One Snap Video FIT block: cond-read, group-wise read, global latent compute, group-wise write.

    forward(patches (B*G, n, Dp), latents (B, N, Dl), cond (B, M, Dc), cond_mask (B, M), layout,
            modulation (B*G, 4, Dp) or None) -> (patches (B*G, n, Dp), latents (B, N, Dl))

    The small-scale options of :class:`FIT` (all off in the paper's Table 8): ``local_layers`` patch
    self-attention layers within each group before the read (pix2seq, GenAU), ``patch_conv`` after the write
    (RIN), ``read_first`` (pix2seq's order: read, then cond-read), ``cond_read_zero_init``, ``cross_heads``.
    """

    def __init__(
        self,
        patch_dim: int,
        latent_dim: int,
        cond_dim: int,
        global_layers: int,
        patch_heads: int,
        latent_heads: int,
        mlp_ratio: float,
        dropout: float,
        cond_read_ffn: bool,
        local_layers: int = 0,
        patch_conv: bool = False,
        read_first: bool = False,
        cond_read_zero_init: bool = False,
        cross_heads: int | None = None,
    ):
        super().__init__()
        cross_dim = min(patch_dim, latent_dim)
        cross_heads = cross_heads or min(patch_heads, latent_heads)
        layer = dict(mlp_ratio=mlp_ratio, dropout=dropout)
        self.read_first = read_first
        self.local = nn.ModuleList(
            [TransformerLayer(patch_dim, heads=patch_heads, **layer) for _ in range(local_layers)]
        )
        self.cond_read = TransformerLayer(
            latent_dim, cond_dim, latent_dim, latent_heads, ffn=cond_read_ffn, zero_init=cond_read_zero_init, **layer
        )
        self.read = TransformerLayer(latent_dim, patch_dim, cross_dim, cross_heads, **layer)
        self.compute = nn.ModuleList(
            [TransformerLayer(latent_dim, heads=latent_heads, **layer) for _ in range(global_layers)]
        )
        self.write = TransformerLayer(patch_dim, latent_dim, cross_dim, cross_heads, **layer)
        self.patch_conv = PatchGridConv(patch_dim) if patch_conv else None

    def forward(self, patches, latents, cond, cond_mask, layout: dict, modulation=None):
        groups = layout["nt"] * layout["nh"] * layout["nw"]
        for layer in self.local:
            patches = layer(patches)
        if not self.read_first:
            latents = self.cond_read(latents, cond, cond_mask)
        grouped = rearrange(latents, "b (g m) d -> (b g) m d", g=groups)
        grouped = self.read(grouped, patches)
        latents = rearrange(grouped, "(b g) m d -> b (g m) d", g=groups)
        if self.read_first:
            latents = self.cond_read(latents, cond, cond_mask)
        for layer in self.compute:
            latents = layer(latents)
        grouped = rearrange(latents, "b (g m) d -> (b g) m d", g=groups)
        patches = self.write(patches, grouped, modulation=modulation)
        if self.patch_conv is not None:
            patches = self.patch_conv(patches, layout)
        return patches, latents


class FIT(nn.Module):
    """Snap Video FIT backbone; see the module docstring. forward(x, c_noise, cond, self_cond) -> (F, latents).

    x: (B, C, T, H, W); c_noise: (B,); cond: {"text" (B,L,text_dim), "text_mask" (B,L) bool, "fps" (B,)
    (inf for images), "orig_size" (B,2)}; self_cond: (B, num_latents, latent_dim) or None.

    Options for small scale. Each default is the paper's Table 8, so the paper presets are unchanged; what they
    did at CPU scale is measured in results/fit_cpu_screen.md.
    * ``local_layers``: patch self-attention layers within each group at the start of every block (pix2seq's
      FIT); ``final_local_layers``: a local-only block after the last block (snap-research/GenAU's FIT).
    * ``patch_conv``: a zero-initialised depthwise 3x3x3 convolution over the whole patch grid after every write
      (lucidrains' RIN); the identity at initialisation.
    * ``pos_kind``: ``"learned"`` table, or ``"sincos"``: a fixed 3D sin-cos table at unit RMS (MAE, DiT) plus the
      learned one; ``pos_init_std``: the learned table's init std (the LayerNormed patch content has RMS 1).
    * ``latent_init_std``: init std of the learned latents.
    * ``read_first``: read the patches before the cond-read (pix2seq's order); ``cond_read_zero_init``: the
      cond-read's attention and FFN outputs start at zero (the identity at initialisation).
    * ``sigma_modulation``: adaLN (DiT, HDiT, RIN): a zero-initialised projection of the conditioning vector
      (sigma, fps, size) shifts and scales the patch side's norms (stem, every write, output); a no-op at init.
    * ``pooled_text``: the masked mean text token joins the modulation's conditioning vector (Imagen's pooled
      text, as the CPU U-Net has; DiT modulates with its class label the same way); needs ``sigma_modulation``.
    * ``cross_heads``: heads of the read and the write (default min(patch heads, latent heads)).
    * ``conv_stem``: channels of full-resolution 3x3x3 convolution features concatenated with the pixels before
      the patch embedding (layers.ConvStem: each patch token sees its neighbourhood); the output is unchanged.
    A smaller patch (``patch_size=(1, 2, 2)``, DiT / U-ViT) needs no option, only a ``group_size`` to match.
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
        # options for small scale; the defaults are the paper's Table 8 (see the class docstring)
        local_layers: int = 0,
        final_local_layers: int = 0,
        patch_conv: bool = False,
        pos_kind: str = "learned",
        pos_init_std: float = 0.02,
        latent_init_std: float = 0.02,
        read_first: bool = False,
        cond_read_zero_init: bool = False,
        sigma_modulation: bool = False,
        cross_heads: int | None = None,
        pooled_text: bool = False,
        conv_stem: int = 0,
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

        if pos_kind not in ("learned", "sincos"):
            raise ValueError(f"FIT: pos_kind must be 'learned' or 'sincos', got {pos_kind!r}")
        patch_heads, latent_heads = patch_dim // patch_head_dim, latent_dim // latent_head_dim
        if cross_heads is not None and min(patch_dim, latent_dim) % cross_heads:
            raise ValueError(
                f"FIT: cross_heads {cross_heads} does not divide the read/write width {min(patch_dim, latent_dim)}"
            )

        patch_volume = in_channels * math.prod(self.patch_size)
        self.stem = ConvStem(in_channels, conv_stem) if conv_stem else None
        embedded = (in_channels + conv_stem) * math.prod(self.patch_size)
        self.patch_embed = nn.Sequential(nn.Linear(embedded, patch_dim), nn.LayerNorm(patch_dim, eps=LN_EPS))
        self.pos_kind = pos_kind
        self.pos_embed = nn.Parameter(torch.randn(*grid, patch_dim) * pos_init_std)  # (Tp, Hp, Wp, Dp)
        self.latent_embed = nn.Parameter(torch.randn(num_latents, latent_dim) * latent_init_std)  # (N, Dl)
        self.self_cond = LatentSelfConditioning(latent_dim, mlp_ratio, dropout)
        if pooled_text and not sigma_modulation:
            raise ValueError("FIT: pooled_text enters through the adaLN modulation; set sigma_modulation too")
        self.cond_embed = ConditioningEmbedding(cond_dim, text_dim, pooled_text=pooled_text)
        block = dict(
            local_layers=local_layers,
            patch_conv=patch_conv,
            read_first=read_first,
            cond_read_zero_init=cond_read_zero_init,
            cross_heads=cross_heads,
        )
        self.blocks = nn.ModuleList(
            [
                FITBlock(
                    patch_dim,
                    latent_dim,
                    cond_dim,
                    global_layers,
                    patch_heads,
                    latent_heads,
                    mlp_ratio,
                    dropout,
                    cond_read_ffn,
                    **block,
                )
                for _ in range(num_blocks)
            ]
        )
        self.final_local = nn.ModuleList(
            [
                TransformerLayer(patch_dim, heads=patch_heads, mlp_ratio=mlp_ratio, dropout=dropout)
                for _ in range(final_local_layers)
            ]
        )
        # (shift, scale) pairs: the stem norm, the output norm, and per block the write's two norms
        self.modulation = AdaLNModulation(cond_dim, patch_dim, 4 + 4 * num_blocks) if sigma_modulation else None
        self.out_norm = nn.LayerNorm(patch_dim, eps=LN_EPS)
        self.out_proj = nn.Linear(patch_dim, patch_volume)
        nn.init.zeros_(self.out_proj.weight)  # F == 0 at init
        nn.init.zeros_(self.out_proj.bias)

    def layout(self, t: int, h: int, w: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(T, H, W) pixels -> (patch grid (Tp, Hp, Wp), group grid (nt, nh, nw)); ValueError naming the sizes."""
        size = (t, h, w)
        if any(s % p for s, p in zip(size, self.patch_size)):
            raise ValueError(f"FIT: input size (T,H,W)={size} is not divisible by patch size {self.patch_size}")
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
        """(Tp, Hp, Wp, Dp) for this grid; trilinear resize of the learned table for other input sizes, plus the
        fixed sin-cos table of the grid with ``pos_kind="sincos"``."""
        table = self.pos_embed
        if grid != tuple(table.shape[:3]):
            table = rearrange(table, "t h w d -> 1 d t h w")
            table = F.interpolate(table, size=grid, mode="trilinear", align_corners=False)
            table = rearrange(table, "1 d t h w -> t h w d")
        if self.pos_kind == "sincos":
            table = table + sincos_embedding_3d(grid, table.shape[-1]).to(table)
        return table

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict, self_cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"FIT: expected x of shape (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        batch = x.shape[0]
        grid, (nt, nh, nw) = self.layout(*x.shape[2:])
        groups = nt * nh * nw
        (pt, ph, pw), (gt, gh, gw) = self.patch_size, self.group_size
        layout = dict(nt=nt, nh=nh, nw=nw, gt=gt, gh=gh, gw=gw)

        if self.stem is not None:
            x = self.stem(x)
        patches = rearrange(
            x,
            "b c (nt gt pt) (nh gh ph) (nw gw pw) -> b (nt nh nw) (gt gh gw) (pt ph pw c)",
            pt=pt,
            ph=ph,
            pw=pw,
            **layout,
        )
        pos = rearrange(self._positional_embedding(grid), f"{GRID} d -> ({GROUPS}) ({GROUP}) d", **layout)
        cond_tokens, cond_mask, cond_vector = self.cond_embed(c_noise, cond)
        modulation = None
        if self.modulation is not None:  # (B*G, 2 + 2 + 4 * blocks, Dp): one conditioning vector per video
            modulation = self.modulation(cond_vector).repeat_interleave(groups, dim=0)
        patches = rearrange(self.patch_embed(patches), "b g n d -> (b g) n d")
        if modulation is not None:
            patches = modulate(patches, modulation[:, 0], modulation[:, 1])
        patches = patches + pos.repeat(batch, 1, 1)  # (B*G, n, Dp), groups of one video together

        latents = self.latent_embed.expand(batch, -1, -1)
        if self_cond is None:  # zero previous latents: one row suffices, every row gives the same update
            self_cond = latents.new_zeros(1, 1, self.latent_dim)
        elif self_cond.shape[1:] != (self.num_latents, self.latent_dim):
            raise ValueError(
                f"FIT: self_cond must have shape (B, {self.num_latents}, {self.latent_dim}), got {tuple(self_cond.shape)}"
            )
        latents = latents + self.self_cond(self_cond)

        for i, block in enumerate(self.blocks):
            block_mod = None if modulation is None else modulation[:, 4 + 4 * i : 8 + 4 * i]
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                patches, latents = checkpoint(
                    block, patches, latents, cond_tokens, cond_mask, layout, block_mod, use_reentrant=False
                )
            else:
                patches, latents = block(patches, latents, cond_tokens, cond_mask, layout, block_mod)
        for layer in self.final_local:
            patches = layer(patches)

        patches = self.out_norm(patches)
        if modulation is not None:
            patches = modulate(patches, modulation[:, 2], modulation[:, 3])
        pixels = self.out_proj(patches)
        out = rearrange(
            pixels,
            "(b nt nh nw) (gt gh gw) (pt ph pw c) -> b c (nt gt pt) (nh gh ph) (nw gw pw)",
            b=batch,
            pt=pt,
            ph=ph,
            pw=pw,
            **layout,
        )
        return out, latents
