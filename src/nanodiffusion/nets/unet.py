"""A UNet denoiser (Ho et al. 2020; Dhariwal & Nichol 2021) that fits on one screen.

Encoder levels of residual blocks with GroupNorm and a noise-level embedding, optional
self-attention at chosen resolutions, a middle block, and a decoder that concatenates the
encoder's activations through skip connections. A text-conditional UNet (context_dim > 0)
turns each attention into a transformer block: self-attention, cross-attention from the
pixels to the prompt's tokens (padding masked), and a feed-forward layer, as in latent
diffusion (Rombach et al. 2022); the prompt's mean token also joins the noise embedding.
Sizes that do not divide by the number of downsamplings (28x28 with three of them) are padded
on the way in and cropped on the way out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.errors import NanodiffError

MAX_LEVELS = 16  # 15 halvings: a 32768-pixel image down to 1


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
    context_dim: int = 0  # > 0: text-conditional, cross-attending to tokens of this width
    cond_channels: int = 0  # > 0: an image condition concatenated to the input (denoisers.ImageConditioned)
    mid_attention: bool = True  # False: a purely convolutional UNet (with no attn_resolutions) of any size
    kind: str = "unet"  # config.model.kind (nets.MODELS): "dit" is nets.dit.DiTConfig

    def __post_init__(self):
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.check()

    def check(self) -> None:
        """The rules UNet's layers need, one line each (io.validation.validate checks the rest)."""
        if self.kind != "unet":
            raise NanodiffError(f"a UNet's model.kind is 'unet', got {self.kind!r}")
        if not (isinstance(self.image_size, int) and self.image_size >= 1):
            raise NanodiffError(f"a UNet's model.image_size must be an integer >= 1, got {self.image_size!r}")
        if not (self.channels > 0 and self.channels % 8 == 0):
            raise NanodiffError(f"model.channels must be a positive multiple of 8, got {self.channels!r}")
        if not 0 < len(self.channel_mults) <= MAX_LEVELS or any(m < 1 for m in self.channel_mults):
            raise NanodiffError(
                f"model.channel_mults must be 1 to {MAX_LEVELS} integers >= 1, got {self.channel_mults!r}"
            )
        if self.head_dim < 1:
            raise NanodiffError(f"model.head_dim must be an integer >= 1, got {self.head_dim!r}")
        widths = [self.channels * m for m in self.channel_mults]
        if any(w % self.head_dim and w > self.head_dim for w in widths):
            raise NanodiffError(
                f"model.head_dim must divide every level's width {widths} (or exceed it), got {self.head_dim}"
            )
        if self.num_classes and self.context_dim:
            raise NanodiffError(
                f"model.num_classes ({self.num_classes}) and model.context_dim ({self.context_dim}): "
                "a UNet is class-conditional or text-conditional, not both"
            )

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


def split_context(cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A text condition [B, L, D + 1] -> tokens [B, L, D] and mask [B, L] (True: a real token).

    The mask travels as the last channel so that a prompt is one tensor, which batching,
    guidance (torch.cat of [cond, uncond]) and devices handle like a class label."""
    if cond.ndim != 3:
        raise NanodiffError(f"a text condition is [batch, tokens, width + 1], got shape {tuple(cond.shape)}")
    return cond[..., :-1], cond[..., -1] > 0.5


class CrossAttention(nn.Module):
    """Queries from the pixels, keys and values from the prompt's tokens; padding is masked."""

    def __init__(self, ch: int, context_dim: int, head_dim: int):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        d = C // self.heads
        q = self.q(self.norm(x)).reshape(B, self.heads, d, H * W).transpose(-1, -2)  # [B, h, HW, d]
        k, v = self.kv(tokens).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # [B, h, L, d]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class FeedForward(nn.Module):
    """GroupNorm, a 4x wider 1x1 conv, GELU, back: per-pixel MLP of a transformer block, residual."""

    def __init__(self, ch: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            _norm(ch), nn.Conv2d(ch, mult * ch, 1), nn.GELU(), nn.Conv2d(mult * ch, ch, 1)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the prompt, feed-forward (Rombach et al. 2022, Fig. 3)."""

    def __init__(self, ch: int, context_dim: int, head_dim: int):
        super().__init__()
        self.self_attn = Attention(ch, head_dim)
        self.cross_attn = CrossAttention(ch, context_dim, head_dim)
        self.ff = FeedForward(ch)

    def forward(self, x: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.ff(self.cross_attn(self.self_attn(x), *context))


def add_condition(net: nn.Module, emb: torch.Tensor, x: torch.Tensor, cond: torch.Tensor | None, what: str):
    """emb plus the condition's embedding, and the text context (tokens, mask) or None, for a
    network with cfg.num_classes, cfg.context_dim, class_emb and text_emb (the UNet, the DiT).

    A class model takes labels (None: the reserved "no class" index num_classes); a text model
    takes split_context's tokens and mask, and adds the embedding of the mean real token."""
    if net.class_emb is not None:
        if cond is None:  # unconditional: the reserved "no class" index
            cond = torch.full((x.shape[0],), net.cfg.num_classes, device=x.device)
        return emb + net.class_emb(cond), None
    if net.text_emb is None:
        return emb, None
    if cond is None:
        raise NanodiffError(
            f"a text-conditional {what} needs a prompt (the empty prompt is its unconditional input)"
        )
    tokens, mask = split_context(cond.to(x.dtype))
    if tokens.shape[-1] != net.cfg.context_dim:
        raise NanodiffError(
            f"text tokens are {tokens.shape[-1]} wide, the {what} expects {net.cfg.context_dim}"
        )
    weights = mask.to(x.dtype)[..., None]
    pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)  # the mean real token
    return emb + net.text_emb(pooled), (tokens, mask)


class UNet(nn.Module):
    """net(x, c_noise, class_labels) -> output of x's shape."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.emb_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.text_emb = nn.Linear(cfg.context_dim, emb_dim) if cfg.context_dim else None
        self.stride = 2 ** (len(cfg.channel_mults) - 1)
        size = -(-cfg.image_size // self.stride) * self.stride  # padded size
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, ch, 3, padding=1)

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

        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, emb_dim, cfg.dropout),
                *([self._attention(cur)] if cfg.mid_attention else []),
                ResBlock(cur, cur, emb_dim, cfg.dropout),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(self._block(cur + skips.pop(), ch * mult, emb_dim, size))
                cur = ch * mult
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)
                    )
                )
                size *= 2

        self.norm_out = _norm(cur)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _block(self, cin: int, cout: int, emb_dim: int, size: int) -> nn.Module:
        res = ResBlock(cin, cout, emb_dim, self.cfg.dropout)
        if size in self.cfg.attn_resolutions:
            return nn.ModuleList([res, self._attention(cout)])
        return nn.ModuleList([res])

    def _attention(self, ch: int) -> nn.Module:
        if self.cfg.context_dim:
            return TransformerBlock(ch, self.cfg.context_dim, self.cfg.head_dim)
        return Attention(ch, self.cfg.head_dim)

    @staticmethod
    def _layer(layer: nn.Module, h: torch.Tensor, emb: torch.Tensor, context) -> torch.Tensor:
        if isinstance(layer, ResBlock):
            return layer(h, emb)
        return layer(h, context) if isinstance(layer, TransformerBlock) else layer(h)

    def _run_block(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor, context) -> torch.Tensor:
        if isinstance(block, nn.ModuleList):
            for layer in block:
                h = self._layer(layer, h, emb, context)
            return h
        return block(h)  # a down- or upsampler

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x padded (replicating its edge) to a size the downsamplings divide."""
        pad_h, pad_w = (-x.shape[-2]) % self.stride, (-x.shape[-1]) % self.stride
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def embed(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None):
        """(the embedding [B, 4 ch] of the noise level and class or pooled prompt, the text
        context (tokens, mask) or None)."""
        emb = self.emb_mlp(timestep_embedding(c_noise.reshape(-1).expand(x.shape[0]), self.cfg.channels))
        return add_condition(self, emb, x, cond, "UNet")

    def encode(self, x: torch.Tensor, emb: torch.Tensor, context, hint: torch.Tensor | None = None):
        """The encoder and middle block on a padded x: (h, the activations the skips carry).
        ``hint`` is added after the first convolution (a ControlNet's control features)."""
        h = self.conv_in(x)
        if hint is not None:
            h = h + hint
        hs = [h]
        for block in self.down:
            h = self._run_block(block, h, emb, context)
            hs.append(h)
        for layer in self.mid:
            h = self._layer(layer, h, emb, context)
        return h, hs

    def skip_widths(self) -> list[int]:
        """The channel counts of the activations `encode` returns for the skips, in order."""
        return [self.cfg.channels] + [
            b.out_channels if isinstance(b, nn.Conv2d) else b[0].conv2.out_channels for b in self.down
        ]

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        cond: torch.Tensor | None = None,
        residuals: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """cond: class labels [B] (class-conditional; None = "no class"), or a text condition
        [B, L, D + 1] (text-conditional; see split_context), or None (unconditional).
        ``residuals`` (a ControlNet's: one per skip, one for the middle) are added to the skips
        and to the middle block's output."""
        H, W = x.shape[-2:]
        x = self.pad(x)
        emb, context = self.embed(x, c_noise, cond)
        h, hs = self.encode(x, emb, context)
        if residuals is not None:
            skips, mid = residuals
            hs, h = [a + b for a, b in zip(hs, skips, strict=True)], h + mid
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run_block(block, h, emb, context)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :H, :W]
