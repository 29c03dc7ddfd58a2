"""diffusers ``UNet2DModel`` checkpoints as nanodiffusion denoisers.

A diffusers pixel model is a UNet plus the scheduler config it was trained with. The config
fixes the model's noise levels (num_train_timesteps and the betas) and what the UNet predicts
(prediction_type); everything else in it (timestep_spacing, clip_sample, solver options)
describes one way of sampling and is ignored here, since nanodiffusion's samplers choose their
own. diffusers feeds the UNet the VP input x_t and an integer step t; ``Denoiser`` does the
same for a discrete schedule (c_in x = x_t, c_noise = the fractional step t), so every
sampler in ``samplers.SAMPLERS`` runs on the result. Only local folders are loaded: nothing
is downloaded at run time. See docs/diffusers.md. A ``DiTPipeline`` folder is handed to
``diffusers_dit``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.device import pick_device

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}

# diffusers schedulers over a discrete table of VP betas: their config describes the model's
# noise levels the way DDPMScheduler's does. (VE, EDM and flow-matching schedulers do not.)
VP_SCHEDULERS = frozenset(
    {
        "DDPMScheduler",
        "DDIMScheduler",
        "DDIMInverseScheduler",
        "DDPMParallelScheduler",
        "DDIMParallelScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverSDEScheduler",
        "DEISMultistepScheduler",
        "UniPCMultistepScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "LCMScheduler",
        "TCDScheduler",
    }
)

# Options that change the model's noise levels or its output, with why each is refused.
# (predicate on the value, reason)
REFUSED_OPTIONS = {
    "trained_betas": (lambda v: v is not None, "explicit beta tables are not supported"),
    "rescale_betas_zero_snr": (bool, "zero-terminal-SNR betas (sigma_max = inf) have no sigma form"),
    "thresholding": (bool, "dynamic thresholding of x0 is not implemented by nanodiffusion's samplers"),
    "use_flow_sigmas": (bool, "flow-matching noise levels are not a VP schedule"),
    "timestep_type": (lambda v: v not in (None, "discrete"), "only discrete step inputs are supported"),
    "variance_type": (
        lambda v: v in ("learned", "learned_range"),
        "the UNet's extra learned-variance channels are not supported",
    ),
}

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # an optional dependency
        raise NanodiffError("loading diffusers models needs diffusers: pip install diffusers") from e
    return diffusers


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` as a raw network ``net(x_in, c_noise, cond)``.

    c_noise is passed as the (float) timestep and cond as ``class_labels``; returns ``.sample``.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        if not isinstance(unet, _diffusers().UNet2DModel):
            raise NanodiffError(f"expected a diffusers UNet2DModel, got {type(unet).__name__}")
        kind = unet.config.get("time_embedding_type", "positional")
        if kind != "positional":  # fourier: a VE score model fed sigma; learned: integer steps only
            raise NanodiffError(
                f"unsupported UNet2DModel time_embedding_type={kind!r}: only "
                "'positional' (DDPM-style step embeddings) is supported"
            )
        cfg = unet.config
        if cfg.out_channels != cfg.in_channels:  # e.g. improved DDPM's extra variance channels
            raise NanodiffError(
                f"unsupported UNet2DModel out_channels={cfg.out_channels}: must equal "
                f"in_channels ({cfg.in_channels}); learned variances are not supported"
            )
        self.unet = unet

    @property
    def class_conditional(self) -> bool:
        return self.unet.class_embedding is not None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the UNet was built for."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return (self.unet.config.in_channels, h, w)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is None and self.class_conditional:
            raise NanodiffError("this UNet2DModel is class-conditional: pass class labels")
        return self.unet(x_in, c_noise, class_labels=cond).sample


def _as_config(scheduler_or_config: Any) -> Mapping:
    """The config dict of a diffusers scheduler, or the dict itself."""
    config = scheduler_or_config
    if not isinstance(config, Mapping):
        config = getattr(config, "config", None)
    if not isinstance(config, Mapping):
        raise NanodiffError(
            f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}"
        )
    return config


def schedule_from_diffusers(
    scheduler_or_config: Any, *, allow_learned_variance: bool = False
) -> tuple[Schedule, str]:
    """(Schedule, parameterization) equal to a diffusers scheduler's training noise levels.

    Missing fields take DDPMScheduler's defaults. diffusers' linear betas run from beta_start to
    beta_end at any T, while ``Schedule(kind="linear")`` rescales them by 1000 / T (Ho et al.'s
    values are for T = 1000), so the ends are scaled by T / 1000 here to give the same table.
    ``allow_learned_variance`` accepts variance_type learned / learned_range, for a network
    wrapper that keeps only the eps half of such an output (``diffusers_dit.DiffusersDiT``).
    """
    config = _as_config(scheduler_or_config)
    name = config.get("_class_name")
    if name is not None and name not in VP_SCHEDULERS:
        raise NanodiffError(
            f"unsupported diffusers scheduler _class_name={name!r}: only schedulers "
            "over discrete VP betas (DDPM, DDIM, DPM-Solver, Euler, ...) are supported"
        )
    for key, (refused, why) in REFUSED_OPTIONS.items():
        if key == "variance_type" and allow_learned_variance:
            continue
        if refused(config.get(key)):
            raise NanodiffError(f"unsupported diffusers scheduler option {key}={_short(config[key])}: {why}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise NanodiffError(
            f"unsupported diffusers scheduler option prediction_type={prediction!r}: "
            f"choose one of {', '.join(PREDICTION_TYPES)}"
        )
    T = int(config.get("num_train_timesteps", 1000))
    beta_start, beta_end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        schedule = Schedule("linear", T, beta_start=beta_start * T / 1000, beta_end=beta_end * T / 1000)
    elif kind == "scaled_linear":
        schedule = Schedule("scaled_linear", T, beta_start=beta_start, beta_end=beta_end)
    elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine, s = 0.008, betas capped at 0.999
        schedule = Schedule("cosine", T, cosine_s=0.008)
    else:
        raise NanodiffError(
            f"unsupported diffusers scheduler option beta_schedule={kind!r}: "
            "choose linear, scaled_linear or squaredcos_cap_v2"
        )
    _check_table(schedule, scheduler_or_config, config)
    return schedule, PREDICTION_TYPES[prediction]


def _check_table(schedule: Schedule, scheduler_or_config: Any, config: Mapping) -> None:
    """Our alpha_bar must equal diffusers' alphas_cumprod (float32 there, ~1e-5 off in the cosine tail)."""
    ref = getattr(scheduler_or_config, "alphas_cumprod", None)
    if ref is None:  # a config dict: rebuild the table from the fields that define it
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        ref = _diffusers().DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod
    ref, ours = torch.as_tensor(ref, dtype=torch.float64), schedule.alpha_bar()
    err = float(((ours - ref) / ref).abs().max()) if ref.shape == ours.shape else float("inf")
    if not err <= 1e-4:
        raise NanodiffError(
            f"the converted {schedule.kind} schedule differs from diffusers' alphas_cumprod "
            f"(max relative error {err:.2g}): this scheduler is not supported"
        )


def denoiser_from_diffusers(unet: nn.Module, scheduler_or_config: Any) -> Denoiser:
    """D(x, sigma, cond) around a UNet2DModel and the scheduler (or config) it was trained with."""
    schedule, parameterization = schedule_from_diffusers(scheduler_or_config)
    net = unet if isinstance(unet, DiffusersUNet) else DiffusersUNet(unet)
    return Denoiser(net, schedule, parameterization)


def _find(folder: Path) -> tuple[Path, Path]:
    """(UNet folder, scheduler config file) of a pipeline folder or a bare UNet folder."""
    if (folder / "unet" / "config.json").is_file():  # DDPMPipeline.save_pretrained
        unet_dir, scheduler = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    elif (folder / "config.json").is_file():  # UNet2DModel.save_pretrained + scheduler_config.json
        unet_dir, scheduler = folder, folder / "scheduler_config.json"
    else:
        raise NanodiffError(
            f"{folder} holds no diffusers UNet or DiT: expected unet/config.json (a saved "
            "DDPMPipeline), transformer/config.json (a saved DiTPipeline) or config.json with "
            "the UNet weights"
        )
    name = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    if name != "UNet2DModel":
        raise NanodiffError(f"{unet_dir / 'config.json'} describes {name!r}; only UNet2DModel is supported")
    if not scheduler.is_file():
        raise NanodiffError(
            f"{folder} has no {scheduler.relative_to(folder)}: the scheduler config "
            "says which noise levels the UNet was trained on"
        )
    return unet_dir, scheduler


def local_folder(path: str | Path) -> Path:
    """`path` as a folder that exists; a hub id gets a hint, since nothing is downloaded."""
    folder = Path(path)
    if not folder.is_dir():
        hint = (
            ": nanodiffusion loads local folders only and never downloads; for a Hugging Face hub "
            "id, download it first (huggingface_hub.snapshot_download) and pass the folder"
            if _HUB_ID.fullmatch(str(path)) and not folder.exists()
            else ""
        )
        raise NanodiffError(f"no diffusers model folder {str(path)!r}{hint}")
    return folder


def load_diffusers(path: str | Path, device: str = "auto") -> Denoiser:
    """The denoiser (eval mode, on `device`) of a local diffusers UNet2DModel or DiT folder.

    `path` is a folder written by ``DDPMPipeline(unet, scheduler).save_pretrained(path)``, or one
    holding a UNet2DModel's config.json and weights with a scheduler_config.json beside them, or
    one written by ``DiTPipeline.save_pretrained`` (a latent denoiser: the autoencoder is not
    loaded; ``diffusers_dit.DiffusersDiTPipeline`` decodes images). Hub ids are refused: nothing
    is downloaded at run time.
    """
    folder = local_folder(path)
    if (folder / "transformer").is_dir():
        from nanodiffusion.inference.diffusers_dit import load_dit

        return load_dit(folder, device)
    unet_dir, scheduler = _find(folder)
    try:
        low_mem = importlib.util.find_spec("accelerate") is not None  # else diffusers warns on every load
        unet = _diffusers().UNet2DModel.from_pretrained(
            unet_dir, local_files_only=True, low_cpu_mem_usage=low_mem
        )
    except (OSError, ValueError) as e:
        raise NanodiffError(f"cannot load the UNet in {unet_dir}: {str(e).splitlines()[0]}") from e
    denoiser = denoiser_from_diffusers(unet, json.loads(scheduler.read_text()))
    return denoiser.to(pick_device(device)).eval()
