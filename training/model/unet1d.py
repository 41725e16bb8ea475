"""The 1D U-Net shared by both Moûsai models.

Structure (the reference a-unet's, written flat so it reads top to bottom):

    sigma -> learned Fourier features -> Linear -> GELU -> [shared Linear -> GELU] x N  = time features f
    x -> [patch conv] -> level 0 down -> level 1 down -> ... -> deepest level -> ... -> level 0 up -> [patch deconv]

A level: down-sample conv (kernel = stride = factor) -> items -> (inner levels) -> items -> nearest up-sample + conv3,
then merged with the level's input by a modulated skip: skip + scale(f) * x.
An item: resnet block -> modulation (scale/shift from f) [-> inject latent] [-> self-attention] [-> cross-attention].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import UNetConfig


class FourierTime(nn.Module):
    """sigma -> [sigma, sin(2 pi w sigma), cos(2 pi w sigma)] with learned w -> Linear."""

    def __init__(self, dim: int, features: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))
        self.to_out = nn.Linear(dim + 1, features)

    def forward(self, sigma: Tensor) -> Tensor:
        x = sigma.reshape(-1, 1).to(self.weights.dtype)
        freqs = x * self.weights[None, :] * (2 * math.pi)
        return self.to_out(torch.cat([x, freqs.sin(), freqs.cos()], dim=-1))


class ResnetBlock(nn.Module):
    """Two (GroupNorm -> SiLU -> Conv3) blocks plus the identity."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + x


class Modulation(nn.Module):
    """Normalisation without affine, scaled and shifted by the time features.

    norm "layer" (a-unet): LayerNorm over the channels of each time step. norm "group": one GroupNorm group, i.e.
    statistics over channels and time of each example, which keeps how loud one frame is relative to the next (a
    per-frame norm makes the path blind to the level of quiet and loud passages alike).
    """

    def __init__(self, channels: int, features: int, norm: str = "layer"):
        super().__init__()
        if norm not in ("layer", "group"):
            raise ValueError(f"modulation norm must be 'layer' or 'group', got {norm!r}")
        self.norm = norm
        # a module, not F.group_norm: what replaces or inspects GroupNorm layers (the receptive-field test) sees it
        self.group_norm = nn.GroupNorm(1, channels, eps=1e-6, affine=False) if norm == "group" else None
        self.to_scale_shift = nn.Linear(features, channels * 2)

    def forward(self, x: Tensor, f: Tensor) -> Tensor:
        scale, shift = self.to_scale_shift(F.silu(f)).unsqueeze(-1).chunk(2, dim=1)
        if self.norm == "layer":  # LayerNorm over channels == normalise each time step's channel vector
            h = F.layer_norm(x.transpose(1, 2), (x.shape[1],), eps=1e-6).transpose(1, 2)
        else:
            h = self.group_norm(x)
        return h * (1 + scale) + shift


class Inject(nn.Module):
    """x + Conv1x1(concat[x, z]): the DMAE latent enters the decoder here."""

    def __init__(self, channels: int, inject_channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels + inject_channels, channels, 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.conv(torch.cat([x, z], dim=1)) + x


class Attention(nn.Module):
    """Pre-norm multi-head attention with a residual, over [B, C, N]; cross-attention when context_features > 0."""

    def __init__(self, channels: int, heads: int, head_features: int, context_features: int = 0):
        super().__init__()
        mid = heads * head_features
        ctx = context_features or channels
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.norm_context = nn.LayerNorm(ctx)
        self.to_q = nn.Linear(channels, mid, bias=False)
        self.to_kv = nn.Linear(ctx, mid * 2, bias=False)
        self.to_out = nn.Linear(mid, channels, bias=False)
        self.is_cross = context_features > 0

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        h = x.transpose(1, 2)  # [B, N, C]
        skip = h
        if self.is_cross:
            assert context is not None, "cross-attention needs the text context"
            c = self.norm_context(context)
            h = self.norm(h)
        else:
            h = self.norm(h)
            c = self.norm_context(skip)
            context_mask = None
        q = self.to_q(h)
        k, v = self.to_kv(c).chunk(2, dim=-1)
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        bias = None
        if context_mask is not None:
            # padded tokens get -inf-like bias; keep finite so fully-masked rows stay NaN-free
            bias = (1.0 - context_mask.to(q.dtype))[:, None, None, :] * torch.finfo(q.dtype).min
        sim = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        if bias is not None:
            sim = sim + bias
        out = torch.matmul(sim.softmax(dim=-1), v)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return (skip + self.to_out(out)).transpose(1, 2)


class FeedForward(nn.Module):
    """Residual Linear -> GELU -> Linear over channels (transformer-style, after attention)."""

    def __init__(self, channels: int, multiplier: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels * multiplier)
        self.fc2 = nn.Linear(channels * multiplier, channels)

    def forward(self, x: Tensor) -> Tensor:
        h = x.transpose(1, 2)
        return (h + self.fc2(F.gelu(self.fc1(h)))).transpose(1, 2)


class Item(nn.Module):
    """resnet -> modulation [-> inject] [-> self-attention] [-> cross-attention] [-> feed-forward]."""

    def __init__(self, cfg: UNetConfig, channels: int, inject: bool, attention: bool, cross: bool):
        super().__init__()
        self.resnet = ResnetBlock(channels, cfg.resnet_groups)
        self.modulation = Modulation(channels, cfg.modulation_features, cfg.modulation_norm)
        self.inject = Inject(channels, cfg.inject_channels) if inject else None
        self.attention = Attention(channels, cfg.attention_heads, cfg.attention_features) if attention else None
        self.cross_attention = (
            Attention(channels, cfg.attention_heads, cfg.attention_features, cfg.context_features) if cross else None
        )
        ff = cfg.attention_multiplier > 0 and (attention or cross)
        self.feed_forward = FeedForward(channels, cfg.attention_multiplier) if ff else None

    def forward(self, x: Tensor, f: Tensor, z: Tensor | None, ctx: Tensor | None, ctx_mask: Tensor | None) -> Tensor:
        x = self.modulation(self.resnet(x), f)
        if self.inject is not None:
            x = self.inject(x, z)
        if self.attention is not None:
            x = self.attention(x)
        if self.cross_attention is not None:
            x = self.cross_attention(x, ctx, ctx_mask)
        if self.feed_forward is not None:
            x = self.feed_forward(x)
        return x


class Level(nn.Module):
    def __init__(self, cfg: UNetConfig, depth: int, in_channels: int, out_channels: int):
        super().__init__()
        ch, factor = cfg.channels[depth], cfg.factors[depth]
        inject = cfg.inject_depth == depth
        att, cross = bool(cfg.attentions[depth]), bool(cfg.cross_attentions[depth])
        self.factor = factor
        self.down = nn.Conv1d(in_channels, ch, kernel_size=factor, stride=factor)
        self.items_down = nn.ModuleList(Item(cfg, ch, inject, att, cross) for _ in range(cfg.items[depth]))
        self.items_up = nn.ModuleList(Item(cfg, ch, inject, att, cross) for _ in range(cfg.items[depth]))
        self.up = nn.Conv1d(ch, out_channels, 3, padding=1)
        self.skip_adapter = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.skip_scale = nn.Linear(cfg.modulation_features, out_channels)
        if cfg.merge_scale_init is not None:  # the inner levels start switched on (see UNetConfig.merge_scale_init)
            nn.init.constant_(self.skip_scale.bias, cfg.merge_scale_init)
        self.skip_gate = None
        if cfg.merge == "gated":  # zero-initialised: the merge starts as a-unet's and learns gains from there
            self.skip_gate = nn.Conv1d(out_channels, out_channels, 1)
            nn.init.zeros_(self.skip_gate.weight)
            nn.init.zeros_(self.skip_gate.bias)

    def upsample(self, x: Tensor) -> Tensor:
        if self.factor > 1:
            x = torch.repeat_interleave(x, self.factor, dim=-1)  # nearest, export-friendly
        return self.up(x)

    def merge(self, skip: Tensor, x: Tensor, f: Tensor) -> Tensor:
        out = self.skip_scale(F.silu(f)).unsqueeze(-1) * x
        if self.skip_gate is not None:  # the inner levels (which hold the latent) set per-channel gains on the skip
            return skip * (1 + self.skip_gate(x)) + out
        return skip + out


class UNet1d(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mf = cfg.modulation_features
        self.time_embed = FourierTime(cfg.time_dim, mf)
        self.time_mlp = nn.Linear(mf, mf)  # shared by all time_mlp_layers (as in the reference)
        io_channels = cfg.in_channels
        if cfg.patch_size > 1:
            self.patch_in = nn.Conv1d(cfg.in_channels, cfg.patch_channels, cfg.patch_size, cfg.patch_size, bias=False)
            self.patch_out = nn.ConvTranspose1d(
                cfg.patch_channels, cfg.in_channels, cfg.patch_size, cfg.patch_size, bias=False
            )
            io_channels = cfg.patch_channels
        else:
            self.patch_in = self.patch_out = None
        levels = []
        for depth in range(len(cfg.channels)):
            in_ch = io_channels if depth == 0 else cfg.channels[depth - 1]
            levels.append(Level(cfg, depth, in_ch, in_ch))
        self.levels = nn.ModuleList(levels)

    @property
    def length_multiple(self) -> int:
        return self.cfg.downsample_factor

    def time_features(self, sigma: Tensor) -> Tensor:
        f = F.gelu(self.time_embed(sigma))
        for _ in range(self.cfg.time_mlp_layers):
            f = F.gelu(self.time_mlp(f))
        return f

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        inject: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, C, L] with L a multiple of `length_multiple`; sigma [B]; inject [B, Ci, L / factor_to_depth(inject_depth)]."""
        if x.shape[-1] % self.length_multiple:
            raise ValueError(f"length {x.shape[-1]} is not a multiple of {self.length_multiple}: pad it first")
        f = self.time_features(sigma)
        if self.patch_in is not None:
            x = self.patch_in(x)
        skips = []
        for level in self.levels:
            skips.append(x if level.skip_adapter is None else level.skip_adapter(x))
            x = level.down(x)
            for item in level.items_down:
                x = item(x, f, inject, context, context_mask)
        for level, skip in zip(reversed(self.levels), reversed(skips)):
            for item in level.items_up:
                x = item(x, f, inject, context, context_mask)
            x = level.merge(skip, level.upsample(x), f)
        if self.patch_out is not None:
            x = self.patch_out(x)
        return x


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int]:
    """Right-pad the last axis with zeros to a multiple; returns (padded, original length)."""
    n = x.shape[-1]
    rem = (-n) % multiple
    return (F.pad(x, (0, rem)) if rem else x), n
