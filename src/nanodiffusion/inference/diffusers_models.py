"""diffusers ``UNet2DModel`` and ``DiTPipeline`` checkpoints as nanodiffusion denoisers.

A diffusers pixel model is a UNet plus the scheduler config it was trained with. The config
fixes the model's noise levels (num_train_timesteps and the betas) and what the UNet predicts
(prediction_type); everything else in it (timestep_spacing, clip_sample, solver options)
describes one way of sampling and is ignored here, since nanodiffusion's samplers choose their
own. diffusers feeds the UNet the VP input x_t and an integer step t; ``Denoiser`` does the
same for a discrete schedule (c_in x = x_t, c_noise = the fractional step t), so every
sampler in ``samplers.SAMPLERS`` runs on the result. Only local folders are loaded: nothing
is downloaded at run time. See docs/diffusers.md. DiT folders: the second half of this module.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.guidance import ClassifierFreeGuidance
from nanodiffusion.core.samplers import get_sampler
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


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def frozen(module: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """Frozen, in eval mode, on device; cast only if needed (diffusers warns at every cast)."""
    if dtype is not None and next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.to(device).eval().requires_grad_(False)


def latents_to_output(x: torch.Tensor, output: str, decode: Callable) -> Any:
    """A pipeline's result: the latents (on the CPU), the decoded images [B, C, H, W] in [-1, 1],
    or PIL images, as `output` is "latent", "tensor" or "pil"."""
    if output == "latent":
        return x.cpu()
    images = decode(x)
    if output == "tensor":
        return images
    from nanodiffusion.io.viz import to_pil

    return [to_pil(img[None], padding=0) for img in images]


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
    wrapper that keeps only the eps half of such an output (``DiffusersDiT``, below).
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
    loaded; ``DiffusersDiTPipeline`` decodes images). Hub ids are refused: nothing
    is downloaded at run time.
    """
    folder = local_folder(path)
    if (folder / "transformer").is_dir():
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


# --- DiT folders ----------------------------------------------------------------------------------
# diffusers DiT folders (``DiTPipeline``) as nanodiffusion denoisers, and class labels to images.
#
# A DiT checkpoint (Peebles & Xie 2023) is a class-conditional transformer over autoencoder
# latents (``transformer/``, a ``DiTTransformer2DModel``), the VP noise levels it was trained on
# (``scheduler/``), an ``AutoencoderKL`` whose latents are scaled by ``scaling_factor`` (``vae/``),
# and, for ImageNet, the class names (``id2label`` in model_index.json). The transformer becomes a
# ``Denoiser`` over ``schedule_from_diffusers``'s schedule, guidance is
# ``guidance.ClassifierFreeGuidance`` towards the model's reserved "no class" row, and any sampler
# in ``samplers.SAMPLERS`` runs on it.
#
#     pipe = DiffusersDiTPipeline.from_pretrained("path/to/DiT-XL-2-256")
#     images = pipe(pipe.label_ids(["white shark", "umbrella"]), steps=25, guidance=4.0, seed=33)
#
# diffusers' ``DiTPipeline`` and this module agree where it matters (the tests check the images to
# 1e-4) and differ where its choices are accidents; docs/diffusers.md ("DiT folders") lists each:
#
# * Learned sigma. With out_channels = 2 x in_channels the second half of the output is improved
#   DDPM's variance interpolation (Nichol & Dhariwal 2021, eq. 15). DiTPipeline drops it before the
#   scheduler step; ``DiffusersDiT`` drops it too, so every sampler sees eps only.
# * Guidance. DiTPipeline guides the eps channels only, then gives both halves of its doubled batch
#   the guided eps, so the halves stay equal: one trajectory under eps_u + w (eps_c - eps_u).
#   Guiding D is the same, since D = x - sigma eps is affine in eps at fixed x and sigma. It guides
#   only when w > 1 (w <= 1 is the conditional model); here every w != 1 guides (w = 0: unconditional).
# * The null class. DiTPipeline feeds class 1000 whatever the model's class count; the row the
#   model reserves for dropped labels is num_embeds_ada_norm (1000 for ImageNet), used here.
# * Noise levels. DiTPipeline steps through the folder's scheduler at that scheduler's timestep
#   spacing; nanodiffusion's samplers take the levels as a tensor (``sigmas``), so any spacing is
#   reproduced by passing diffusers' own levels.

# The hub's DiT checkpoints predate DiTTransformer2DModel and name Transformer2DModel in their config.
DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
# The files a DiT folder needs for images (safetensors weights only); load_dit needs the first three.
REQUIRED = {
    "transformer/config.json": "the transformer's config",
    "transformer/diffusion_pytorch_model.safetensors": "the transformer's weights",
    "scheduler/scheduler_config.json": "the noise levels the transformer was trained on",
    "model_index.json": "the pipeline index",
    "vae/config.json": "the autoencoder's config",
    "vae/diffusion_pytorch_model.safetensors": "the autoencoder's weights",
}


class DiffusersDiT(nn.Module):
    """A diffusers ``DiTTransformer2DModel`` as a raw network ``net(x_in, c_noise, class_labels)``.

    c_noise is passed as the (float) timestep. Returns the eps channels of ``.sample`` (the first
    in_channels: a learned-sigma model's variance half is dropped), in float32; inputs are cast to
    the transformer's dtype. Labels run from 0 to num_classes, the last being the "no class" row.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        if not isinstance(transformer, _diffusers().DiTTransformer2DModel):
            raise NanodiffError(
                f"expected a diffusers DiTTransformer2DModel, got {type(transformer).__name__}"
            )
        cfg = transformer.config
        if transformer.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
            raise NanodiffError(
                f"unsupported DiTTransformer2DModel out_channels={transformer.out_channels}: must be "
                f"in_channels ({cfg.in_channels}) or twice it (eps and learned sigma)"
            )
        self.transformer = transformer

    @property
    def num_classes(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def null_class(self) -> int:
        """The label embedding's reserved row for dropped labels, the last of num_classes + 1."""
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents the transformer was built for."""
        cfg = self.transformer.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, class_labels: Any = None) -> torch.Tensor:
        if class_labels is None:
            raise NanodiffError("a DiT is class-conditional: pass class labels")
        labels = torch.as_tensor(class_labels, device=x_in.device).reshape(-1)
        if labels.is_floating_point() or labels.min() < 0 or labels.max() > self.null_class:
            raise NanodiffError(
                f"DiT class labels must be integers in [0, {self.num_classes}] "
                f"({self.null_class} = no class), got {labels.tolist()[:8]}"
            )
        out = self.transformer(x_in.to(self.transformer.dtype), c_noise, class_labels=labels).sample
        return out[:, : x_in.shape[1]].float()


def dit_denoiser(transformer: nn.Module, scheduler_or_config: Any) -> Denoiser:
    """D(x, sigma, class_labels) around a DiTTransformer2DModel and the scheduler (or config) it
    was trained with; a learned-variance scheduler config is accepted (the variance is dropped)."""
    schedule, parameterization = schedule_from_diffusers(scheduler_or_config, allow_learned_variance=True)
    net = transformer if isinstance(transformer, DiffusersDiT) else DiffusersDiT(transformer)
    return Denoiser(net, schedule, parameterization)


def check_folder(folder: Path, required: Sequence[str] = tuple(REQUIRED)) -> None:
    """One line naming the first of `required` that a DiT folder lacks."""
    for name in required:
        if (folder / name).is_file():
            continue
        hint = ""
        if name.endswith(".safetensors") and any((folder / name).parent.glob("*.bin")):
            hint = " (only .bin weights are there: nanodiffusion loads safetensors only)"
        raise NanodiffError(
            f"{folder} is not a diffusers DiT folder: {name} ({REQUIRED[name]}) is missing{hint}"
        )


def _load(cls_name: str, folder: Path) -> nn.Module:
    """A diffusers model from a local folder, its failures as one line."""
    if cls_name == "DiTTransformer2DModel":
        found = json.loads((folder / "config.json").read_text()).get("_class_name")
        if found not in DIT_CLASSES:
            raise NanodiffError(
                f"{folder / 'config.json'} describes {found!r}; a DiT folder has a DiTTransformer2DModel"
            )
    try:
        return getattr(_diffusers(), cls_name).from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,  # else a warning
        )
    except (OSError, ValueError, NotImplementedError) as e:  # NotImplementedError: not a DiT's norm_type
        raise NanodiffError(f"cannot load the {cls_name} in {folder}: {str(e).splitlines()[0]}") from e


def load_dit(path: str | Path, device: str = "auto") -> Denoiser:
    """The latent denoiser (eval mode, on `device`) of a local DiTPipeline folder, without its
    autoencoder (``load_diffusers`` calls this for folders with a transformer/)."""
    folder = local_folder(path)
    check_folder(folder, list(REQUIRED)[:3])
    transformer = _load("DiTTransformer2DModel", folder / "transformer")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return dit_denoiser(transformer, config).to(pick_device(device)).eval()


def parse_labels(id2label: Mapping[Any, str] | None) -> dict[str, int]:
    """name -> class from model_index.json's id2label ({"0": "tench, Tinca tinca", ...}): each
    comma-separated synonym is a name, sorted (DiTPipeline.labels; a repeated name keeps its last id)."""
    labels = {name.strip(): int(k) for k, names in (id2label or {}).items() for name in names.split(",")}
    return dict(sorted(labels.items()))


class DiffusersDiTPipeline:
    """Class labels in, images out, from a diffusers DiT folder with nanodiffusion's samplers.

    ``pipe(class_labels, ...)`` returns PIL images; ``from_pretrained`` takes a DiTPipeline folder,
    ``from_diffusers`` an in-memory ``DiTPipeline`` (its networks shared, not copied). ``labels``
    maps class names to ids when the folder has id2label.
    """

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        scheduler_config: Mapping,
        id2label: Mapping[Any, str] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        device = pick_device(device) if isinstance(device, str) else device
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        if device.type == "cpu" and dtype == torch.float16:
            raise NanodiffError("float16 is for GPUs; on the CPU use fp32 (or bf16)")
        if vae.config.latent_channels != transformer.config.in_channels:
            raise NanodiffError(
                f"the autoencoder's latent_channels ({vae.config.latent_channels}) differ from the "
                f"transformer's in_channels ({transformer.config.in_channels})"
            )
        self.device, self.dtype = device, dtype
        self.denoiser = dit_denoiser(frozen(transformer, device, dtype), scheduler_config).to(device)
        self.net: DiffusersDiT = self.denoiser.net
        self.vae = frozen(vae, device, dtype)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.labels = parse_labels(id2label)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "auto", dtype: str | None = None
    ) -> DiffusersDiTPipeline:
        """A local DiTPipeline folder (safetensors). dtype: fp16 | bf16 | fp32 (default fp16 on a
        GPU, fp32 on the CPU)."""
        if dtype is not None and dtype not in DTYPES:
            raise NanodiffError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        folder = local_folder(path)
        check_folder(folder)
        transformer = _load("DiTTransformer2DModel", folder / "transformer")
        vae = _load("AutoencoderKL", folder / "vae")
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        index = json.loads((folder / "model_index.json").read_text())
        return cls(
            transformer, vae, scheduler, index.get("id2label"), device, DTYPES[dtype] if dtype else None
        )

    @classmethod
    def from_diffusers(
        cls, pipe, device: str = "auto", dtype: torch.dtype | None = None
    ) -> DiffusersDiTPipeline:
        """The networks of an in-memory diffusers DiTPipeline; its labels dict is kept as is."""
        ours = cls(pipe.transformer, pipe.vae, dict(pipe.scheduler.config), None, device, dtype)
        ours.labels = dict(pipe.labels)
        return ours

    # --- the parts ----------------------------------------------------------------------------
    def label_ids(self, labels: str | Sequence[str | int] | torch.Tensor) -> torch.Tensor:
        """Class ids [B] from ids or names (a name is one of ``labels``: "goldfish", "tench")."""
        if isinstance(labels, str | numbers.Integral):
            labels = [labels]
        if isinstance(labels, torch.Tensor):
            labels = labels.reshape(-1).tolist()
        ids = [self._label_id(label) for label in labels]
        if not ids:
            raise NanodiffError("give at least one class label")
        return torch.tensor(ids)

    def _label_id(self, label: str | int) -> int:
        if isinstance(label, str):
            if label not in self.labels:
                known = f"{len(self.labels)} names, see .labels" if self.labels else "none: no id2label"
                raise NanodiffError(f"unknown class name {label!r}; this checkpoint's names: {known}")
            return self.labels[label]
        n = self.net.num_classes
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < n:
            raise NanodiffError(f"class labels must be integers in [0, {n - 1}] or names, got {label!r}")
        return int(label)

    def guided(self, guidance: float) -> nn.Module:
        """The denoiser under classifier-free guidance w towards the class, away from the null class."""
        if guidance == 1:
            return self.denoiser
        return ClassifierFreeGuidance(self.denoiser, guidance, torch.tensor(self.net.null_class))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] on the CPU, float32."""
        images = self.vae.decode((latents / self.scaling_factor).to(self.device, self.dtype)).sample
        return images.float().clamp(-1, 1).cpu()

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: str | Sequence[str | int] | torch.Tensor,
        steps: int = 25,
        guidance: float = 4.0,
        sampler: str = "dpm++2m",
        spacing: str | None = None,
        sigmas: torch.Tensor | None = None,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        output: str = "pil",
        progress: bool = False,
        callback: Callable | None = None,
        **sampler_kwargs,
    ):
        """One image per class label.

        The generator seeded with `seed` draws the initial latents [B, C, h, w] first (unless
        `latents` gives them), as DiTPipeline does with that generator, and then any noise the
        sampler adds. `sigmas` (steps + 1 decreasing levels ending at 0) replaces the `steps`
        levels of `spacing`, e.g. to walk the levels a diffusers scheduler visits.
        output: pil | tensor ([B, 3, H, W] in [-1, 1]) | latent.
        """
        if output not in ("pil", "tensor", "latent"):
            raise NanodiffError(f"output must be pil, tensor or latent, got {output!r}")
        labels = self.label_ids(class_labels).to(self.device)
        info = get_sampler(sampler)
        if sigmas is None:
            sigmas = self.denoiser.schedule.sampling_sigmas(steps, spacing)
        shape = (len(labels), *self.net.sample_shape)
        generator = torch.Generator().manual_seed(seed)
        if latents is None:
            latents = torch.randn(shape, generator=generator)
        elif tuple(latents.shape) != shape:
            raise NanodiffError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
        # x_T ~ N(0, I) in the VP form is sqrt(1 + sigma^2) N(0, I) in sigma form
        x = latents.float().to(self.device) * self.denoiser.schedule.prior_std(float(sigmas[0]))
        x = info.fn(
            self.guided(guidance),
            x,
            sigmas,
            labels,
            generator=generator,
            callback=callback,
            progress=progress,
            **sampler_kwargs,
        )
        return latents_to_output(x, output, self.decode)
