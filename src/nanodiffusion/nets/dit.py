"""A Diffusion Transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The input is cut into non-overlapping patches, each patch becomes a token (a linear map of its
values plus a position code), a stack of transformer blocks runs over the tokens, and a final
linear layer turns each token back into a patch. Every block is conditioned by adaLN-Zero
(paper, Sec. 3.2): a LayerNorm without affine parameters whose shift and scale, and a gate on
each residual branch, are regressed from the conditioning embedding (noise level + class label,
or + pooled prompt); the regressing layers start at zero, so every block starts as the identity
and the network's output starts at zero. A text-conditional DiT (context_dim > 0) adds
cross-attention to the prompt's tokens after self-attention (the paper's cross-attention variant),
its output layer zero-initialised so that the block still starts as the identity.

Patches and position codes work on a grid of 1, 2 or 3 axes, so audio [B, C, T] and video
[B, C, F, H, W] need nothing but a different ``image_size`` and ``patch_size``. On a video's
(frames, height, width) grid, ``attention = "factorised"`` splits each block's self-attention in
two, over the tokens of one frame and then over the tokens at one place across frames, each with
its own adaLN-Zero shift, scale and gate (the split of Latte, Ma et al. 2024, Sec. 3.2 variant 3,
and of Ho et al. 2022, "Video Diffusion Models", Sec. 3): N (S + F) attention scores, not N^2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.errors import NanodiffError
from nanodiffusion.nets.unet import add_condition, timestep_embedding

POSITION_CODES = ("sincos", "learned")
ATTENTIONS = ("joint", "factorised")  # over all tokens; or spatial then temporal (video grids only)
FREQ_DIM = 256  # width of the noise level's sinusoidal code before its MLP (paper, Sec. 3.2)


@dataclass
class DiTConfig:
    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    image_size: int | list[int] = 8  # an int: a square image; a list: the size of each of 1 to 3 axes
    patch_size: int | list[int] = 2  # an int: the same on every axis
    width: int = 64  # the tokens' width (the paper's hidden size d)
    depth: int = 4  # transformer blocks
    head_dim: int = 32  # heads = width // head_dim; >= 32 runs far faster on CPU than 8
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; else index num_classes is "no class"
    context_dim: int = 0  # > 0: text-conditional, cross-attending to tokens of this width
    pos: str = "sincos"  # "sincos" (fixed) or "learned" position code
    dropout: float = 0.0
    cond_channels: int = 0  # > 0: an image condition concatenated to the input (denoisers.ImageConditioned)
    attention: str = "joint"  # "joint" over all tokens, or "factorised" (a video grid: space, then time)
    kind: str = "dit"  # config.model.kind (nets.MODELS)

    def __post_init__(self):
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.check()

    @property
    def sizes(self) -> tuple[int, ...]:
        """The input's spatial sizes: (H, W) for an image, (T,) or (F, H, W)."""
        return (self.image_size,) * 2 if isinstance(self.image_size, int) else tuple(self.image_size)

    @property
    def patch(self) -> tuple[int, ...]:
        """The patch's size along each spatial axis."""
        p = self.patch_size
        return (p,) * len(self.sizes) if isinstance(p, int) else tuple(p)

    @property
    def grid(self) -> tuple[int, ...]:
        """Patches along each axis: the token grid."""
        return tuple(s // p for s, p in zip(self.sizes, self.patch, strict=True))

    def check(self) -> None:
        """The rules DiT's layers need, one line each."""
        if self.kind != "dit":
            raise NanodiffError(f"a DiT's model.kind is 'dit', got {self.kind!r}")
        for key in ("in_channels", "out_channels", "width", "depth", "head_dim"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= 1):
                raise NanodiffError(f"model.{key} must be an integer >= 1, got {value!r}")
        for key in ("image_size", "patch_size"):
            value = getattr(self, key)
            values = [value] if isinstance(value, int) else list(value)
            if not 1 <= len(values) <= 3 or not all(isinstance(v, int) and v >= 1 for v in values):
                raise NanodiffError(
                    f"model.{key} must be an integer >= 1 or a list of 1 to 3 of them, got {value!r}"
                )
        if len(self.patch) != len(self.sizes):
            raise NanodiffError(
                f"model.patch_size {self.patch_size!r} must have one entry per axis of "
                f"model.image_size {self.image_size!r}"
            )
        if any(s % p for s, p in zip(self.sizes, self.patch, strict=True)):
            raise NanodiffError(
                f"model.image_size {self.image_size!r} must be divisible by "
                f"model.patch_size {self.patch_size!r}"
            )
        if self.width % self.head_dim:
            raise NanodiffError(f"model.head_dim ({self.head_dim}) must divide model.width ({self.width})")
        if not isinstance(self.mlp_ratio, (int, float)) or not round(self.mlp_ratio * self.width) >= 1:
            raise NanodiffError(f"model.mlp_ratio must be positive, got {self.mlp_ratio!r}")
        for key in ("num_classes", "context_dim", "cond_channels"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 0):
                raise NanodiffError(f"model.{key} must be an integer >= 0, got {getattr(self, key)!r}")
        if self.num_classes and self.context_dim:
            raise NanodiffError(
                f"model.num_classes ({self.num_classes}) and model.context_dim ({self.context_dim}): "
                "a DiT is class-conditional or text-conditional, not both"
            )
        if self.pos not in POSITION_CODES:
            raise NanodiffError(f"model.pos must be one of {', '.join(POSITION_CODES)}, got {self.pos!r}")
        if self.pos == "sincos" and self.width % (2 * len(self.sizes)):
            raise NanodiffError(
                f"model.width ({self.width}) must be divisible by {2 * len(self.sizes)} for a sincos "
                f"position code over {len(self.sizes)} axes (a sine and a cosine per axis)"
            )
        if self.attention not in ATTENTIONS:
            raise NanodiffError(
                f"model.attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}"
            )
        if self.attention == "factorised" and len(self.sizes) != 3:
            raise NanodiffError(
                f"model.attention 'factorised' needs a video's 3 axes (frames, height, width) in "
                f"model.image_size, got {self.image_size!r}"
            )
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise NanodiffError(f"model.dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """[B, C, s_1, .., s_n] -> tokens [B, prod(s_i / p_i), prod(p_i) C], the grid in row-major order
    and each token's values ordered (p_1, .., p_n, C)."""
    B, C, *sizes = x.shape
    n = len(patch)
    grid = [s // p for s, p in zip(sizes, patch, strict=True)]
    split = [d for g, p in zip(grid, patch, strict=True) for d in (g, p)]
    x = x.reshape(B, C, *split)  # [B, C, g_1, p_1, .., g_n, p_n]
    x = x.permute(0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1)  # [B, g.., p.., C]
    return x.reshape(B, math.prod(grid), math.prod(patch) * C)


def unpatchify(tokens: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """The inverse of patchify: tokens [B, prod(g_i), prod(p_i) C] -> [B, C, g_1 p_1, .., g_n p_n]."""
    B, n = tokens.shape[0], len(patch)
    x = tokens.reshape(B, *grid, *patch, -1)  # [B, g.., p.., C]
    x = x.permute(0, 2 * n + 1, *[a for i in range(n) for a in (1 + i, 1 + n + i)])  # [B, C, g_1, p_1, ..]
    return x.reshape(B, x.shape[1], *[g * p for g, p in zip(grid, patch, strict=True)])


def sincos_position_code(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    """Fixed position code [prod(grid), dim]: per axis, the 1-D code of the token's index on that axis
    (dim / n channels: cosines and sines of index * 10000^(-k / (dim / 2n))), concatenated over the
    n axes; the 2-D case is DiT's (Sec. 3.2, after Vaswani et al. 2017 and MAE)."""
    axes = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    return torch.cat([timestep_embedding(index.reshape(-1), dim // len(grid)) for index in axes], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, D] * (1 + scale) + shift, with shift and scale [B, D] per sample."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def _zero(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the tokens [B, N, D]."""

    def __init__(self, width: int, head_dim: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = width // head_dim, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        # views [B, heads, N, d]: unbinding the axis of 3 lets backward stack their gradients in qkv's layout
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Queries from the tokens, keys and values from the prompt's tokens; padding is masked.
    Its output layer starts at zero, so that the block it sits in starts as the identity."""

    def __init__(self, width: int, context_dim: int, head_dim: int):
        super().__init__()
        self.heads = width // head_dim
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        d = D // self.heads
        q = self.q(self.norm(x)).reshape(B, N, self.heads, d).transpose(1, 2)  # [B, h, N, d]
        k, v = self.kv(tokens).reshape(B, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # [B, h, L, d]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(h.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """x + gate_a attn(adaLN(x)) [+ cross-attn], then x + gate_m MLP(adaLN(x)) (paper, Fig. 3).
    Factorised (a video grid [F, H, W] of patches): the attention step is two, each its own
    adaLN-Zero branch: x + gate_s attn over the S = H W tokens of each frame, then
    x + gate_t attn over the F tokens at each place (Latte's variant 3 split; a zero-initialised
    gate per branch keeps the block the identity at init)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        width, hidden = cfg.width, round(cfg.mlp_ratio * cfg.width)
        self.frames = cfg.grid[0] if cfg.attention == "factorised" else 0  # 0: joint attention
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, cfg.head_dim, cfg.dropout)
        self.temporal = SelfAttention(width, cfg.head_dim, cfg.dropout) if self.frames else None
        self.cross = CrossAttention(width, cfg.context_dim, cfg.head_dim) if cfg.context_dim else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(approximate="tanh"),
            nn.Dropout(cfg.dropout),
            nn.Linear(hidden, width),
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, (9 if self.frames else 6) * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context=None) -> torch.Tensor:
        """x [B, N, D] tokens, c [B, D] the conditioning embedding, context (tokens, mask) or None."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m, *temporal = self.modulation(c).chunk(
            9 if self.frames else 6, dim=1
        )
        h = modulate(self.norm1(x), shift_a, scale_a)
        if not self.frames:
            x = torch.addcmul(x, gate_a[:, None], self.attn(h))
        else:
            B, N, D = x.shape
            T, S = self.frames, N // self.frames  # tokens are frame-major: [B, T frames, S places, D]
            h = self.attn(h.reshape(B * T, S, D)).reshape(B, N, D)  # within each frame
            x = torch.addcmul(x, gate_a[:, None], h)
            shift_t, scale_t, gate_t = temporal
            h = modulate(self.norm1(x), shift_t, scale_t).reshape(B, T, S, D).transpose(1, 2)
            h = self.temporal(h.reshape(B * S, T, D)).reshape(B, S, T, D).transpose(1, 2)  # across frames
            x = torch.addcmul(x, gate_t[:, None], h.reshape(B, N, D))
        if self.cross is not None:
            x = x + self.cross(x, *context)
        return torch.addcmul(x, gate_m[:, None], self.mlp(modulate(self.norm2(x), shift_m, scale_m)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) and a linear map from each token to its patch's values."""

    def __init__(self, width: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_values)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """net(x, c_noise, cond) -> output of x's shape, x [B, C, *cfg.sizes]."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        width, tokens = cfg.width, math.prod(cfg.grid)
        # a linear map of each patch's values: a convolution with kernel = stride = patch, on any grid
        self.embed_patches = nn.Linear(math.prod(cfg.patch) * (cfg.in_channels + cfg.cond_channels), width)
        if cfg.pos == "sincos":
            self.register_buffer("pos_code", sincos_position_code(cfg.grid, width)[None], persistent=False)
        else:
            self.pos_code = nn.Parameter(torch.zeros(1, tokens, width))
        self.noise_mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(cfg.num_classes + 1, width) if cfg.num_classes else None
        self.text_emb = nn.Linear(cfg.context_dim, width) if cfg.context_dim else None
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final = FinalLayer(width, math.prod(cfg.patch) * cfg.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (Sec. 3.2): Xavier-uniform linear layers, N(0, 0.02) embeddings,
        and zero for every adaLN regression, every cross-attention output and the final linear layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for p in [*self.noise_mlp.parameters(), *(self.class_emb.parameters() if self.class_emb else [])]:
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)
        if isinstance(self.pos_code, nn.Parameter):
            nn.init.normal_(self.pos_code, std=0.02)
        for block in self.blocks:
            _zero(block.modulation[-1])
            if block.cross is not None:
                _zero(block.cross.proj)
        _zero(self.final.modulation[-1])
        _zero(self.final.linear)

    def embed(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None):
        """(the conditioning embedding [B, width] of the noise level and class or pooled prompt,
        the text context (tokens, mask) or None)."""
        c = self.noise_mlp(timestep_embedding(c_noise.reshape(-1).expand(x.shape[0]), FREQ_DIM).to(x.dtype))
        return add_condition(self, c, x, cond, "DiT")

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """cond: class labels [B] (class-conditional; None = "no class"), or a text condition
        [B, L, D + 1] (text-conditional; see unet.split_context), or None (unconditional)."""
        channels = self.cfg.in_channels + self.cfg.cond_channels
        if tuple(x.shape[1:]) != (channels, *self.cfg.sizes):
            raise NanodiffError(
                f"the DiT takes inputs [batch, {channels}, {', '.join(map(str, self.cfg.sizes))}] "
                f"(model.in_channels + model.cond_channels, model.image_size), got {list(x.shape)}"
            )
        c, context = self.embed(x, c_noise, cond)
        h = self.embed_patches(patchify(x, self.cfg.patch)) + self.pos_code  # [B, N, width]
        for block in self.blocks:
            h = block(h, c, context)
        return unpatchify(self.final(h, c), self.cfg.patch, self.cfg.grid)

    def flops(self, context_tokens: int = 0) -> int:
        """Forward FLOPs per sample: 2 per multiply-add of every matrix product, attention's included
        (bench/_common.forward_flops counts the same); context_tokens: a text DiT's prompt length L."""
        cfg, D = self.cfg, self.cfg.width
        N, L, hidden = math.prod(cfg.grid), context_tokens, round(cfg.mlp_ratio * D)
        total = 2 * N * math.prod(cfg.patch) * (cfg.in_channels + cfg.cond_channels) * D  # patch embedding
        total += 2 * (FREQ_DIM * D + D * D)  # noise-level MLP
        if cfg.attention == "factorised":  # two attentions, over S = N / F tokens and over F tokens
            frames = cfg.grid[0]
            attention = 2 * D * 3 * D + 2 * (2 * N * D * 4 * D) + 2 * N * (N // frames + frames) * 2 * D
        else:
            attention = 2 * N * D * 4 * D + 2 * N * N * 2 * D
        block = 2 * D * 6 * D + attention + 2 * N * D * hidden * 2
        if cfg.context_dim:
            total += 2 * cfg.context_dim * D  # the pooled prompt's projection
            block += 2 * N * D * 2 * D + 2 * L * cfg.context_dim * 2 * D + 2 * N * L * 2 * D
        total += cfg.depth * block
        return total + 2 * D * 2 * D + 2 * N * D * math.prod(cfg.patch) * cfg.out_channels  # final layer
