"""A UNet denoiser (Ho et al. 2020; Dhariwal & Nichol 2021) that fits on one screen.

Encoder levels of residual blocks with GroupNorm and a noise-level embedding, optional
self-attention at chosen resolutions, a middle block, and a decoder that concatenates the
encoder's activations through skip connections. Sizes that do not divide by the number of
downsamplings (28x28 with three of them) are padded on the way in and cropped on the way out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NanodiffError


@dataclass
class UNetConfig:
    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    channels: int = 64  # width of the first level
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    blocks_per_level: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [7])  # feature-map sizes
    head_dim: int = 32  # attention head width: >= 32 runs far faster on CPU than 8
    dropout: float = 0.1
    num_classes: int = 0  # 0: unconditional; else index num_classes is "no class"
    image_size: int = 28

    def __post_init__(self):
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.channels % 8 or any(m < 1 for m in self.channel_mults):
            raise NanodiffError("UNet channels must be a multiple of 8 and multipliers positive")
        widths = [self.channels * m for m in self.channel_mults]
        if any(w % self.head_dim and w > self.head_dim for w in widths):
            raise NanodiffError(f"head_dim {self.head_dim} must divide every level's width {widths}")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(c_noise: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the noise level (Vaswani et al. 2017; Ho et al. 2020): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device) / half)
    args = c_noise.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)  # 32 groups where the width allows


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # norm(h) * (1 + scale) + shift, one pass
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, ch: int, head_dim: int):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, HW, head_dim]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """net(x, c_noise, class_labels) -> output of x's shape."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.emb_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.stride = 2 ** (len(cfg.channel_mults) - 1)
        size = -(-cfg.image_size // self.stride) * self.stride  # padded size
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.blocks_per_level):
                self.down.append(self._block(cur, ch * mult, emb_dim, size))
                cur = ch * mult
                skips.append(cur)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                size //= 2

        self.mid = nn.ModuleList([
            ResBlock(cur, cur, emb_dim, cfg.dropout), Attention(cur, cfg.head_dim),
            ResBlock(cur, cur, emb_dim, cfg.dropout),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(self._block(cur + skips.pop(), ch * mult, emb_dim, size))
                cur = ch * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
                size *= 2

        self.norm_out = _norm(cur)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, cin: int, cout: int, emb_dim: int, size: int) -> nn.Module:
        res = ResBlock(cin, cout, emb_dim, self.cfg.dropout)
        if size in self.cfg.attn_resolutions:
            return nn.ModuleList([res, Attention(cout, self.cfg.head_dim)])
        return nn.ModuleList([res])

    @staticmethod
    def _run_block(block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if isinstance(block, nn.ModuleList):
            for layer in block:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            return h
        return block(h)  # a down- or upsampler

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        H, W = x.shape[-2:]
        pad_h, pad_w = (-H) % self.stride, (-W) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        emb = self.emb_mlp(timestep_embedding(c_noise.reshape(-1).expand(x.shape[0]), self.cfg.channels))
        if self.class_emb is not None:
            if class_labels is None:  # unconditional: the reserved "no class" index
                class_labels = torch.full((x.shape[0],), self.cfg.num_classes, device=x.device)
            emb = emb + self.class_emb(class_labels)

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = self._run_block(block, h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run_block(block, h, emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :H, :W]
