"""Run folders in, models out: the denoiser a config describes, the device, and loading a run."""

from __future__ import annotations

from pathlib import Path

import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import EMA, MODEL, checkpoint_file, load_config, load_weights
from nanodiffusion.io.config import Config, validate
from nanodiffusion.io.device import pick_device
from nanodiffusion.io.pretrained import resolve_run, shipped_name
from nanodiffusion.nets import build_net, sample_shape


def build_denoiser(cfg: Config, net: torch.nn.Module | None = None) -> Denoiser:
    """The config's denoiser around `net` (default: a new network of cfg.model's kind, a UNet or
    a DiT), once cfg is valid."""
    validate(cfg)
    return Denoiser(
        build_net(cfg.model) if net is None else net,
        cfg.schedule,
        cfg.diffusion.parameterization,
        cfg.diffusion.sigma_data,
    )


def load_run(run_dir: str | Path, weights: str = "ema", device: str = "auto") -> tuple[Config, Denoiser]:
    """(config, denoiser in eval mode) from a run folder, or a shipped model's name (an existing
    folder wins: nanodiffusion.io.pretrained); weights 'ema' or 'model'."""
    if weights not in ("ema", "model"):
        raise NanodiffError(f"weights must be 'ema' or 'model', got {weights!r}")
    if weights == "model" and shipped_name(run_dir):
        raise NanodiffError(
            f"the shipped model {shipped_name(run_dir)!r} holds only its EMA weights ('ema'), not 'model'"
        )
    run_dir = resolve_run(run_dir)
    cfg = load_config(run_dir)
    if cfg.data.autoencoder and (run_dir / "autoencoder").is_dir():  # its own, wherever the run moved
        cfg.data.autoencoder = str(run_dir / "autoencoder")
    denoiser = build_denoiser(cfg)
    load_weights(denoiser.net, checkpoint_file(run_dir, EMA if weights == "ema" else MODEL))
    return cfg, denoiser.to(pick_device(device)).eval()


def load_parts(run_dir: str | Path, weights: str = "ema", device: str = "auto"):
    """(config, denoiser, autoencoder or None, text encoder or None): all a run (a folder, or a
    shipped model's name) draws with."""
    cfg, denoiser = load_run(run_dir, weights, device)
    autoencoder = encoder = None
    if cfg.data.autoencoder:  # load_run points it at the run's own, wherever the run moved
        from nanodiffusion.io.checkpoint import load_autoencoder

        autoencoder = load_autoencoder(cfg.data.autoencoder, pick_device(device))
    if cfg.data.text_encoder:
        from nanodiffusion.data.text import load_text_encoder

        encoder = load_text_encoder(cfg.data.text_encoder, cfg.data.max_tokens)
    return cfg, denoiser, autoencoder, encoder


def image_shape(cfg: Config, autoencoder=None) -> tuple[int, ...]:
    """[C, H, W] of a run's images in pixels (a latent run's after decoding; a video run's
    [C, F, H, W])."""
    shape = sample_shape(cfg.model)
    if autoencoder is None:
        return shape
    side = cfg.data.image_size
    return autoencoder.cfg.in_channels, *shape[1:-2], side, side
