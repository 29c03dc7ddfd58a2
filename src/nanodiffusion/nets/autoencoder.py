"""A KL-regularised convolutional autoencoder of the latent-diffusion family (Rombach et al. 2022).

The encoder maps an image [B, C, H, W] to a diagonal Gaussian over latents
[B, z, H / f, W / f] (f = 2 ** (levels - 1)); the decoder maps a latent back. Training
minimises the reconstruction error plus a small weight times KL(q(z|x) || N(0, I)), which
keeps the latent space smooth and its scale bounded without forcing it to be Gaussian.

Diffusion then runs on latents multiplied by `scale_factor` = 1 / std of the training
latents, measured from the data (Stable Diffusion's 0.18215 is this number for its VAE on its
data), so the latents the diffusion model sees have unit variance like the images it expects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.errors import NanodiffError


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    channels: int = 32  # width of the first level
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])  # 3 levels: 4x smaller
    blocks_per_level: int = 1
    z_channels: int = 4
    kl_weight: float = 1e-6
    scale_factor: float = 1.0  # measured after training: 1 / std of the latents

    def __post_init__(self):
        if self.channels % 8 or not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise NanodiffError("autoencoder channels must be a multiple of 8 and multipliers positive")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)


class Block(nn.Module):
    """GroupNorm-SiLU-conv twice, residual."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(cin),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.channels * m for m in cfg.channel_mults]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        cur = widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.blocks_per_level):
                enc.append(Block(cur, w))
                cur = w
            if level < len(widths) - 1:
                enc.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
        enc += [Block(cur, cur), _norm(cur), nn.SiLU(), nn.Conv2d(cur, 2 * cfg.z_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(cfg.z_channels, cur, 3, padding=1), Block(cur, cur)]
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.blocks_per_level):
                dec.append(Block(cur, w))
                cur = w
            if level > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)]
        dec += [_norm(cur), nn.SiLU(), nn.Conv2d(cur, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: torch.Tensor) -> None:
        f = self.cfg.factor
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise NanodiffError(
                f"the autoencoder takes [B, {self.cfg.in_channels}, H, W] with H and W "
                f"multiples of {f}, got {tuple(x.shape)}"
            )

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): mean and log-variance [B, z, H / f, W / f] of images in [-1, 1]."""
        self._check(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents for diffusion: the posterior mean (or a draw) times scale_factor."""
        mean, logvar = self.encode_dist(x)
        if sample:
            noise = torch.randn(mean.shape, generator=generator).to(mean.device)
            mean = mean + (0.5 * logvar).exp() * noise
        return mean * self.cfg.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (not clamped) from scaled latents."""
        return self.decoder(z / self.cfg.scale_factor)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Images in [-1, 1] (any device) -> scaled posterior-mean latents on the CPU, in batches.
        Videos [N, C, F, H, W] are encoded frame by frame to [N, z, F, h, w]."""
        from tqdm.auto import tqdm

        if x.ndim == 5:
            frames = self.encode_images(x.transpose(1, 2).flatten(0, 1), batch_size, progress)
            return frames.unflatten(0, (len(x), -1)).transpose(1, 2)

        device = next(self.parameters()).device
        chunks = tqdm(x.split(batch_size), desc="encoding to latents", disable=not progress, leave=False)
        return torch.cat([self.encode(c.to(device)).cpu() for c in chunks])

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents (any device) -> images in [-1, 1] on the CPU, decoded in batches.
        Video latents [N, z, F, h, w] are decoded frame by frame to [N, C, F, H, W]."""
        if z.ndim == 5:
            frames = self.decode_images(z.transpose(1, 2).flatten(0, 1), batch_size)
            return frames.unflatten(0, (len(z), -1)).transpose(1, 2)
        device = next(self.parameters()).device
        return torch.cat([self.decode(c.to(device)).cpu() for c in z.split(batch_size)]).clamp(-1, 1)

    def loss(
        self, x: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Mean squared reconstruction error of a posterior draw (with `noise` [B, z, H / f, W / f],
        else drawn from `generator`), plus kl_weight x KL per latent element."""
        mean, logvar = self.encode_dist(x)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator)
        noise = noise.to(mean.device)
        recon = self.decoder(mean + (0.5 * logvar).exp() * noise)
        mse = F.mse_loss(recon, x)
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
        return mse + self.cfg.kl_weight * kl, {"mse": mse.item(), "kl": kl.item()}


# --- file names (io.checkpoint saves and loads autoencoder folders), the latent scale -----------
AE_WEIGHTS, AE_CONFIG = "autoencoder.safetensors", "autoencoder.json"


@torch.no_grad()
def measure_scale_factor(ae: Autoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """1 / std of the posterior-mean latents of `images` (before any scaling)."""
    means = ae.encode_images(images, batch_size) / ae.cfg.scale_factor
    return float(1 / means.float().std())
