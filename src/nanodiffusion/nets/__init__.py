"""The networks. ``config.model.kind`` picks one: its config class and its nn.Module."""

from __future__ import annotations

from nanodiffusion.errors import NanodiffError
from nanodiffusion.nets.dit import DiT, DiTConfig
from nanodiffusion.nets.egnn import EGNN, EGNNConfig
from nanodiffusion.nets.unet import UNet, UNetConfig

MODELS = {
    "unet": (UNetConfig, UNet),
    "dit": (DiTConfig, DiT),
    "egnn": (EGNNConfig, EGNN),  # atoms: [N, 3 + K] point sets (molecules)
}  # model.kind -> (config, network)


def model_config_class(kind: object) -> type:
    """The config class of model.kind = `kind`, or one line naming the choices."""
    if not isinstance(kind, str) or kind not in MODELS:
        raise NanodiffError(f"model.kind must be one of {', '.join(map(repr, MODELS))}, got {kind!r}")
    return MODELS[kind][0]


def build_net(model_cfg) -> UNet | DiT | EGNN:
    """A new network (random weights) of the model section `model_cfg`."""
    return MODELS[model_cfg.kind][1](model_cfg)


def sample_shape(model_cfg) -> tuple[int, ...]:
    """One sample's shape [C, H, W] (a video DiT's [C, F, H, W], an EGNN's [N, 3 + K]) of the model
    section `model_cfg`."""
    if hasattr(model_cfg, "sample_shape"):
        return tuple(model_cfg.sample_shape)
    size = model_cfg.image_size
    return (model_cfg.in_channels, *((size, size) if isinstance(size, int) else size))
