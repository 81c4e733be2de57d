"""ADM-style U-Net with interleaved temporal attention: the paper's baseline (§4, Table 7).

The ADM U-Net of Dhariwal & Nichol ("Diffusion models beat GANs") adapted to video the way the paper
describes it: spatial operations run per frame and temporal attention is interleaved with them.

Layout (B videos, T frames; the working tensor is (B*T, C, H, W), frames folded into the batch)::

    x (B, 3, T, H, W) -> conv3x3 per frame -> [encoder levels] -> middle -> [decoder levels] -> GN, SiLU,
    conv3x3 (zero-init) -> F (B, 3, T, H, W); state = None
    level l (channels base * mult[l], downsample factor 2^l):
        encoder: num_res_blocks x [ResBlock, (attention block if attention level)], then a downsampling ResBlock
        decoder: (num_res_blocks + 1) x [ResBlock on concat(skip), (attention block)], then an upsampling ResBlock
    middle: ResBlock, attention block, ResBlock
    ResBlock: GN, SiLU, conv3x3, GN * (1 + scale) + shift (use_scale_shift_norm from the conditioning
        embedding), SiLU, dropout, conv3x3 (zero-init), plus a 1x1-conv skip when widths differ.
    attention block: spatial self-attention (per frame, over H*W), temporal self-attention (per pixel, over T,
        with a learned relative-position bias), text cross-attention (per frame, over the conditioning tokens);
        each pre-LayerNorm, residual, zero-initialised output projection, head channels 64.

Attention resolutions. ADM writes them as feature-map sizes for its 64-px training images, so Table 7's
[32, 16, 8] means "attend where the map is downsampled by 64/32 = 2, 64/16 = 4 and 64/8 = 8". On the 40x64
(H x W) inputs these are the levels at 20x32, 10x16 and 5x8 (``reference_size=64``: the factor is
``reference_size // resolution``); with 4 levels (mult [1, 2, 2, 3]) that is every level but the full-size
one, plus the middle block.

Where the paper is silent (§4 lists it as unknown) and what this module does:
* Temporal attention sits inside every attention block, right after the spatial self-attention (the
  interleaving of Video Diffusion Models / Make-A-Video); no temporal convolutions. Its head channels are 64
  like the spatial ones. Frame order comes from a learned relative-position bias per head (Video Diffusion
  Models uses relative position embeddings), so any T up to ``max_frames`` works.
* Text enters by cross-attention in the attention blocks (the Imagen / LDM way) over the same conditioning
  tokens FIT reads: [sigma, fps, size, text...] at ``cond_dim`` (768) channels, padded text masked out.
  sigma, fps and original size are also summed into one 768-channel embedding that drives every ResBlock's
  scale-shift norm (ADM's timestep embedding; Table 7's "conditioning channels 768"). ``pooled_text=True``
  (off in the paper presets, on in the CPU ablation's unet_mini) adds the mean text token to that embedding too,
  Imagen's pooled text path: a direct route for the caption's global content (background, colour).
* Convolutions are 2D, applied per frame on (B*T, C, H, W); GroupNorm statistics are per frame. Down- and
  upsampling are spatial only (T stays whole, as the paper's 16-frame clips are short), inside residual blocks
  (2x2 average pooling / nearest-neighbour x2; ADM's ``resblock_updown=True``, its ImageNet-64 setting). With
  plain resampling convs instead, U-Net-85M/284M would count 79.6M/262.4M parameters; with resampling
  ResBlocks they land on the paper's sizes (see presets.py).
* No FFN in the attention blocks (ADM has none); dropout sits in the ResBlocks (ADM's place) at 0.1.
* Output conv, the second conv of each ResBlock and every attention output projection are zero-initialised
  (ADM), so F == 0 at initialisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import ConditioningEmbedding, TransformerLayer


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block with scale-shift norm, optionally resampling (BigGAN-style, ADM's resblock_updown).

    h (B*T, Cin, H, W), emb (B*T, E) -> (B*T, Cout, H', W'); H' = H/2 for "down", 2H for "up", else H.
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norm_groups: int, resample: str | None = None
    ):
        super().__init__()
        self.in_norm = nn.Sequential(nn.GroupNorm(norm_groups, in_ch), nn.SiLU())
        self.resample = {None: nn.Identity(), "down": nn.AvgPool2d(2), "up": nn.Upsample(scale_factor=2.0)}[resample]
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.out_norm = nn.GroupNorm(norm_groups, out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, h, emb, context, context_mask, frames):
        out = self.in_conv(self.resample(self.in_norm(h)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        out = self.out_norm(out) * (1 + scale) + shift
        return self.skip(self.resample(h)) + self.out_layers(out)


class SpatioTemporalAttention(nn.Module):
    """Spatial self-attention, temporal self-attention, text cross-attention. (B*T, C, H, W) -> same shape."""

    def __init__(self, channels: int, cond_dim: int, head_channels: int, max_frames: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"UNet3D: {channels} channels are not divisible by head_channels {head_channels}")
        heads = channels // head_channels
        self.max_frames = max_frames
        self.spatial = TransformerLayer(channels, heads=heads, ffn=False, zero_init=True)
        self.temporal = TransformerLayer(channels, heads=heads, ffn=False, zero_init=True)
        self.relative_bias = nn.Parameter(torch.zeros(heads, 2 * max_frames - 1))  # bias[h, (j - i) + T_max - 1]
        self.cross = TransformerLayer(channels, cond_dim, heads=heads, ffn=False, zero_init=True)

    def _temporal_bias(self, frames: int) -> torch.Tensor:
        """(heads, T, T) additive attention bias from the learned relative-position table."""
        if frames > self.max_frames:
            raise ValueError(f"UNet3D: {frames} frames exceed max_frames={self.max_frames} of the temporal attention")
        index = torch.arange(frames, device=self.relative_bias.device)
        return self.relative_bias[:, index[None, :] - index[:, None] + self.max_frames - 1]

    def forward(self, h, emb, context, context_mask, frames):
        height, width = h.shape[-2:]
        tokens = rearrange(h, "bt c h w -> bt (h w) c")
        tokens = self.spatial(tokens)
        tokens = rearrange(tokens, "(b t) n c -> (b n) t c", t=frames)
        tokens = self.temporal(tokens, mask=self._temporal_bias(frames))
        tokens = rearrange(tokens, "(b n) t c -> (b t) n c", n=height * width)
        tokens = self.cross(tokens, context, context_mask)
        return rearrange(tokens, "bt (h w) c -> bt c h w", h=height, w=width)


class UNet3D(nn.Module):
    """ADM U-Net for video; see the module docstring. forward(x, c_noise, cond, self_cond=None) -> (F, None).

    x: (B, C, T, H, W) with H and W divisible by 2^(levels-1); c_noise: (B,); cond: {"text" (B,L,text_dim),
    "text_mask" (B,L) bool, "fps" (B,) (inf for images), "orig_size" (B,2)}. self_cond is accepted and ignored.
    """

    def __init__(
        self,
        text_dim: int,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 3),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (32, 16, 8),  # ADM feature-map sizes on a reference_size input
        reference_size: int = 64,
        head_channels: int = 64,
        cond_dim: int = 768,
        dropout: float = 0.1,
        norm_groups: int = 32,
        max_frames: int = 64,
        pooled_text: bool = False,  # also add the mean text token to the ResBlocks' scale-shift embedding
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.levels = len(channel_mult)
        self.grad_checkpointing = grad_checkpointing
        attention_factors = {reference_size // r for r in attention_resolutions}
        self.cond_embed = ConditioningEmbedding(cond_dim, text_dim, pooled_text)

        def res(cin, cout, resample=None):
            return ResBlock(cin, cout, cond_dim, dropout, norm_groups, resample)

        def attn(ch):
            return SpatioTemporalAttention(ch, cond_dim, head_channels, max_frames)

        ch = base_channels * channel_mult[0]
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_channels = [ch]
        self.encoder = nn.ModuleList()  # each entry: the layers between two skip outputs
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if 2**level in attention_factors:
                    layers.append(attn(ch))
                self.encoder.append(nn.ModuleList(layers))
                skip_channels.append(ch)
            if level != self.levels - 1:
                self.encoder.append(nn.ModuleList([res(ch, ch, "down")]))
                skip_channels.append(ch)
        self.middle = nn.ModuleList([res(ch, ch), attn(ch), res(ch, ch)])
        self.decoder = nn.ModuleList()  # each entry consumes one skip output
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), base_channels * mult)]
                ch = base_channels * mult
                if 2**level in attention_factors:
                    layers.append(attn(ch))
                if level != 0 and i == num_res_blocks:
                    layers.append(res(ch, ch, "up"))
                self.decoder.append(nn.ModuleList(layers))
        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def _run_layers(self, layers: nn.ModuleList, h, *args):
        for layer in layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, *args, use_reentrant=False)
            else:
                h = layer(h, *args)
        return h

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict, self_cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D: expected x of shape (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        batch, _, frames, height, width = x.shape
        factor = 2 ** (self.levels - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"UNet3D: input size (H,W)=({height},{width}) must be divisible by {factor} "
                f"(2^(levels-1) for {self.levels} levels)"
            )
        tokens, mask, vector = self.cond_embed(c_noise, cond)
        # per-frame copies so every (B*T) row sees its video's conditioning
        args = (
            vector.repeat_interleave(frames, 0),
            tokens.repeat_interleave(frames, 0),
            mask.repeat_interleave(frames, 0),
            frames,
        )

        # channels-last: oneDNN convolutions and GroupNorm run about 2x faster on CPU in this layout
        h = self.input_conv(rearrange(x, "b c t h w -> (b t) c h w").contiguous(memory_format=torch.channels_last))
        skips = [h]
        for layers in self.encoder:
            h = self._run_layers(layers, h, *args)
            skips.append(h)
        h = self._run_layers(self.middle, h, *args)
        for layers in self.decoder:
            h = self._run_layers(layers, torch.cat([h, skips.pop()], dim=1), *args)
        out = self.out(h)
        return rearrange(out, "(b t) c h w -> b c t h w", b=batch), None
