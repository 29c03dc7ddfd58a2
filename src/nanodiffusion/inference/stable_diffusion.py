"""Stable Diffusion 1.x / 2.x checkpoints (diffusers folders) under nanodiffusion's samplers.

A Stable Diffusion checkpoint is four networks and a scheduler config (Rombach et al. 2022):
a CLIP tokenizer and text model, a ``UNet2DConditionModel`` that cross-attends to the text's
77 hidden states, an ``AutoencoderKL`` whose latents are scaled by ``scaling_factor`` (0.18215
for 1.x), and the noise levels it was trained on (``scaled_linear`` betas, T = 1000). Here the
UNet becomes a ``Denoiser`` whose noise levels are the checkpoint's own ``alphas_cumprod``
(``diffusers_models.schedule_from_diffusers``: eps- and v-prediction), the text model sits
behind ``text.TextEncoder`` (the interface the shapes model uses), and the sampling loop is
the one every nanodiffusion model uses: any sampler in ``samplers.SAMPLERS``, classifier-free
guidance as ``guidance.ClassifierFreeGuidance``. The sampler state stays in float32; the
networks run in float16 on a GPU (bfloat16 on request) and float32 on the CPU.

    pipe = StableDiffusion.from_pretrained("path/to/stable-diffusion-v1-5")
    image = pipe("A futuristic city with flying cars", steps=20, guidance=7.5, seed=0)[0]

Where a result differs from diffusers' ``StableDiffusionPipeline`` by design, docs/stable-diffusion.md
names the difference (initial noise scale of the Euler schedulers, DDIM's ``set_alpha_to_one``,
``steps_offset``, the meaning of strength 1 in img2img). SD3-class folders (rectified flow, a joint
transformer, three text encoders) load through the same ``from_pretrained`` into ``StableDiffusion3`` (below).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.editing import check_strength, sdedit_sigmas
from nanodiffusion.core.guidance import ClassifierFreeGuidance
from nanodiffusion.core.samplers import get_sampler
from nanodiffusion.core.schedules import Schedule, flow_sigma
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.diffusers_models import (
    DTYPES,
    frozen,
    latents_to_output,
    schedule_from_diffusers,
)
from nanodiffusion.io.viz import load_image

INSTALL = "pip install 'nanodiffusion[sd]'  (diffusers and transformers)"
# The files a diffusers Stable Diffusion folder needs, by component (safetensors weights only).
REQUIRED = {
    "model_index.json": "the pipeline index",
    "scheduler/scheduler_config.json": "the noise levels the UNet was trained on",
    "tokenizer/vocab.json": "the CLIP tokenizer's vocabulary (or a tokenizer.json)",
    "tokenizer/merges.txt": "the CLIP tokenizer's merges (or a tokenizer.json)",
    "text_encoder/config.json": "the CLIP text model's config",
    "text_encoder/model.safetensors": "the CLIP text model's weights",
    "unet/config.json": "the UNet's config",
    "unet/diffusion_pytorch_model.safetensors": "the UNet's weights",
    "vae/config.json": "the autoencoder's config",
    "vae/diffusion_pytorch_model.safetensors": "the autoencoder's weights",
}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _require():
    missing = [m for m in ("diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise NanodiffError(f"Stable Diffusion needs {' and '.join(missing)}: {INSTALL}")
    import diffusers
    import transformers

    return diffusers, transformers


def check_folder(folder: Path) -> None:
    """One clear line naming the first file a Stable Diffusion folder lacks."""
    for name, what in REQUIRED.items():
        if name.startswith("tokenizer/") and (folder / "tokenizer" / "tokenizer.json").is_file():
            continue  # transformers 5 saves the tokenizer as one tokenizer.json
        if not (folder / name).is_file():
            hint = ""
            if name.endswith(".safetensors") and any((folder / name).parent.glob("*.bin")):
                hint = " (only .bin weights are there: nanodiffusion loads safetensors only)"
            raise NanodiffError(
                f"{folder} is not a diffusers Stable Diffusion folder: {name} ({what}) is missing{hint}"
            )


def resolve(path: str | Path) -> Path:
    """A local folder, or a hub id downloaded (on a machine whose network allows it) to the cache."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    if not _HUB_ID.fullmatch(str(path)) or folder.exists():
        raise NanodiffError(f"no Stable Diffusion folder {str(path)!r}")
    try:
        from huggingface_hub import snapshot_download

        patterns = [
            "model_index.json",
            "*/*.json",
            "*/*.txt",
            "*/model.safetensors",
            "*/diffusion_pytorch_model.safetensors",
            "*/*-of-*.safetensors",  # SD3's T5 and large transformers come in shards
            "*/spiece.model",  # T5's tokenizer
        ]
        return Path(snapshot_download(str(path), allow_patterns=patterns))
    except Exception as e:  # offline, unknown id, gated model: one line, the cause kept
        raise NanodiffError(
            f"cannot download {path!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); download it where the network "
            "allows and pass the folder"
        ) from e


class ConditionalUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` as a raw network ``net(x_in, c_noise, text)``.

    ``text`` is a text condition [B, L, D + 1] (``text.TextEncoder``): the hidden states go to
    cross-attention as ``encoder_hidden_states``; the mask channel is dropped, since Stable
    Diffusion's UNets attend to every position. Inputs are cast to the UNet's dtype and the
    output back to float32.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if text is None:
            raise NanodiffError("a Stable Diffusion UNet needs a text condition")
        dtype = self.unet.dtype
        out = self.unet(x_in.to(dtype), c_noise, encoder_hidden_states=text[..., :-1].to(x_in.device, dtype))
        return out.sample.float()


class StableDiffusion:
    """Prompt (and optionally an image) in, images out, with nanodiffusion's samplers.

    ``pipe(prompt, ...)`` returns PIL images; ``from_pretrained`` takes a diffusers folder (or a
    hub id where the network allows), ``from_diffusers`` an in-memory ``StableDiffusionPipeline``.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        tokenizer,
        text_model: nn.Module,
        scheduler_config: dict,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        from nanodiffusion.data.text import TextEncoder

        schedule, parameterization = schedule_from_diffusers(scheduler_config)
        self._init_autoencoder(vae, device, dtype)
        device, dtype = self.device, self.dtype
        self.unet = frozen(unet, device, dtype)
        self.latent_channels = int(unet.config.in_channels)
        self.denoiser = Denoiser(ConditionalUNet(self.unet), schedule, parameterization).to(device)
        self.encoder = TextEncoder(
            tokenizer,
            frozen(text_model, device, dtype),
            int(tokenizer.model_max_length),
            "CLIP",
            keep_padding=True,
        )
        # the UNet halves the latent once per down block but the last
        self.net_factor, self.net_factor_name = 2 ** (len(unet.config.down_block_types) - 1), "the UNet's"
        size = unet.config.sample_size
        self.default_size = (size if isinstance(size, int) else size[0]) * self.vae_factor

    def _init_autoencoder(
        self, vae: nn.Module, device: str | torch.device, dtype: torch.dtype | None
    ) -> None:
        """The device and dtype (float16 on a GPU, float32 on the CPU by default) and the
        autoencoder with its latent scale and shift (SD3's; 0 for 1.x / 2.x) and pixel factor."""
        from nanodiffusion.io.device import pick_device

        device = pick_device(str(device)) if isinstance(device, str) else device
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        if device.type == "cpu" and dtype == torch.float16:
            raise NanodiffError("float16 is for GPUs; on the CPU use fp32 (or bf16)")
        self.device, self.dtype = device, dtype
        self.vae = frozen(vae, device, dtype)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "auto", dtype: str | None = None
    ) -> StableDiffusion:
        """A diffusers Stable Diffusion 1.x / 2.x folder (safetensors), or a hub id where the
        network allows it. dtype: fp16 | bf16 | fp32 (default fp16 on a GPU, fp32 on the CPU)."""
        diffusers, transformers = _require()
        if dtype is not None and dtype not in DTYPES:
            raise NanodiffError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        folder = resolve(path)
        if is_sd3_folder(folder):
            return StableDiffusion3.load(folder, device, DTYPES[dtype] if dtype else None)
        check_folder(folder)
        index = json.loads((folder / "model_index.json").read_text())
        unet_class = json.loads((folder / "unet" / "config.json").read_text()).get("_class_name")
        if unet_class != "UNet2DConditionModel":
            raise NanodiffError(
                f"{folder / 'unet' / 'config.json'} describes {unet_class!r}; a Stable "
                "Diffusion 1.x / 2.x folder has a UNet2DConditionModel"
            )
        if "text_encoder_2" in index:
            raise NanodiffError(
                f"{folder} is a two-text-encoder (SDXL-class) pipeline; nanodiffusion loads "
                "Stable Diffusion 1.x and 2.x"
            )
        low_mem = importlib.util.find_spec("accelerate") is not None
        kw = dict(local_files_only=True, use_safetensors=True)
        try:
            kw["low_cpu_mem_usage"] = low_mem
            unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", **kw)
            vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", **kw)
            del kw["low_cpu_mem_usage"]
            text_model = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder", **kw)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(
                folder / "tokenizer", local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise NanodiffError(f"cannot load {folder}: {str(e).splitlines()[0]}") from e
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        return cls(unet, vae, tokenizer, text_model, scheduler, device, DTYPES[dtype] if dtype else None)

    @classmethod
    def from_diffusers(cls, pipe, device: str = "auto", dtype: torch.dtype | None = None) -> StableDiffusion:
        """The networks of an in-memory diffusers StableDiffusionPipeline (shared, not copied);
        a StableDiffusion3Pipeline gives a ``StableDiffusion3`` (below)."""
        if hasattr(pipe, "transformer"):
            return StableDiffusion3.from_diffusers(pipe, device, dtype)
        return cls(
            pipe.unet, pipe.vae, pipe.tokenizer, pipe.text_encoder, dict(pipe.scheduler.config), device, dtype
        )

    # --- the parts ----------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """Text conditions [B, 77, D + 1] (CLIP's last hidden states and the padding mask)."""
        return self.encoder(prompts)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> latents (the posterior mean, shifted and scaled), float32."""
        self.check_size(images.shape[-2], images.shape[-1])
        mean = self.vae.encode(images.to(self.device, self.dtype)).latent_dist.mean
        return (mean.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] on the CPU, float32 (the autoencoder sees z / scale + shift)."""
        z = latents / self.scaling_factor + self.shift_factor
        images = self.vae.decode(z.to(self.device, self.dtype)).sample
        return images.float().clamp(-1, 1).cpu()

    def check_size(self, height: int, width: int) -> None:
        f = self.vae_factor * self.net_factor
        for name, v in (("height", height), ("width", width)):
            if v < f or v % f:
                raise NanodiffError(
                    f"{name} {v} does not fit this checkpoint: image sides must be multiples "
                    f"of {f} (the autoencoder's factor {self.vae_factor} x {self.net_factor_name} "
                    f"{self.net_factor})"
                )

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str = "",
        n: int = 1,
        steps: int = 20,
        guidance: float = 7.5,
        sampler: str = "dpm++2m",
        spacing: str | None = None,
        seed: int = 0,
        size: int | tuple[int, int] | None = None,
        init_image: Any = None,
        strength: float = 1.0,
        latents: torch.Tensor | None = None,
        output: str = "pil",
        progress: bool = False,
        callback: Callable | None = None,
        **sampler_kwargs,
    ):
        """n images per prompt.

        The generator seeded with `seed` draws the initial noise [B, C, h, w] first (unless
        `latents` gives it) and then any noise the sampler adds, in diffusers' order, so a
        stochastic sampler's images match diffusers' from the same seed. `init_image` (a PIL
        image, a path, or [B, 3, H, W] in [-1, 1]) with strength s in (0, 1] is img2img: the
        last round(s x steps) steps of the `steps`-step sequence, started from the image's
        latents noised to that level; s = 1 ignores the image (text-to-image from the same
        noise). output: pil | tensor ([N, 3, H, W] in [-1, 1]) | latent.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or n < 1:
            raise NanodiffError("give at least one prompt and n >= 1")
        if output not in ("pil", "tensor", "latent"):
            raise NanodiffError(f"output must be pil, tensor or latent, got {output!r}")
        check_strength(strength)
        info = get_sampler(sampler)
        height, width = (size, size) if isinstance(size, int) else (size or (self.default_size,) * 2)
        self.check_size(height, width)
        sigmas = self.denoiser.schedule.sampling_sigmas(steps, spacing)
        cond = self.encode_prompt([p for p in prompts for _ in range(n)])
        shape = (len(cond), self.latent_channels, height // self.vae_factor, width // self.vae_factor)
        init = None
        if init_image is not None and strength < 1:
            init = self._init_latents(init_image, height, width, len(cond))
        generator = torch.Generator().manual_seed(seed)
        if latents is None:
            latents = torch.randn(shape, generator=generator)
        elif tuple(latents.shape) != shape:
            raise NanodiffError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
        noise = latents.float().to(self.device)
        if init is None:  # text-to-image: x_T ~ N(0, I) in the VP form, sqrt(1 + sigma^2) in sigma form
            x = noise * self.denoiser.schedule.prior_std(float(sigmas[0]))
        else:  # img2img: the last round(strength x steps) levels, from the image's latents noised
            sigmas = sdedit_sigmas(sigmas, strength)  # to the first of them
            x = init + float(sigmas[0]) * noise
        model = self.denoiser
        if guidance != 1:
            model = ClassifierFreeGuidance(model, guidance, self.encode_prompt([negative_prompt])[0])
        x = info.fn(
            model,
            x,
            sigmas,
            cond.to(self.device),
            generator=generator,
            callback=callback,
            progress=progress,
            **sampler_kwargs,
        )
        return latents_to_output(x, output, self.decode)

    def _init_latents(self, image: Any, height: int, width: int, batch: int) -> torch.Tensor:
        """The init image's scaled latents, repeated to the batch."""
        if not isinstance(image, torch.Tensor):
            image = load_image(image, (width, height))
        if image.ndim == 3:
            image = image[None]
        if tuple(image.shape[-2:]) != (height, width):
            raise NanodiffError(
                f"the init image is {image.shape[-1]}x{image.shape[-2]}; this call makes "
                f"{width}x{height} images (pass size=, or resize the image)"
            )
        z = self.encode_image(image)
        if len(z) not in (1, batch):
            raise NanodiffError(f"give one init image or one per output image ({batch}), got {len(z)}")
        return z.expand(batch, *z.shape[1:]).to(self.device)


# --- Stable Diffusion 3-class folders --------------------------------------------------------------
# Stable Diffusion 3-class checkpoints (diffusers folders) under nanodiffusion's samplers.
#
# SD3 (Esser et al. 2024) is a rectified flow, x_t = (1 - t) x0 + t eps, whose network (the MMDiT,
# diffusers' ``SD3Transformer2DModel``) predicts v = eps - x0 from x_t and the timestep 1000 t.
# That is nanodiffusion's ``flow`` parameterisation over ``Schedule(kind="flow", shift=...)``, so
# the transformer becomes a raw network ``net(x_in, c_noise, cond)`` with x_in = c_in x = x_t and
# c_noise = 1000 t, and every sampler and classifier-free guidance run on it unchanged.
#
# The text condition is diffusers' ``encode_prompt`` recipe, computed here:
#
#     clip   = [CLIP-L penultimate hidden states | CLIP-G penultimate hidden states]  [B, 77, 768 + 1280]
#     t5     = T5's last hidden states, 256 tokens [B, 256, 4096] (zeros when there is no T5)
#     tokens = [clip zero-padded to T5's width ; t5]                               [B, 77 + 256, 4096]
#     pooled = [CLIP-L projection | CLIP-G projection]                               [B, 768 + 1280]
#
# Guidance handles one condition tensor, so ``pack_condition`` appends the pooled vector to the
# tokens as zero-padded rows and the network takes it apart again. The autoencoder's latents are
# shifted and scaled: z = (E(x) - shift_factor) scaling_factor, decoded as D(z / scaling_factor +
# shift_factor).
#
#     pipe = StableDiffusion.from_pretrained("path/to/stable-diffusion-3-medium-diffusers")
#     image = pipe("A futuristic city with flying cars", sampler="euler", steps=28, guidance=7.0)[0]

# (folder, weights file stem, what it is); text_encoder_3 only where model_index.json names one
NETWORKS = (
    ("transformer", "diffusion_pytorch_model", "the transformer"),
    ("vae", "diffusion_pytorch_model", "the autoencoder"),
    ("text_encoder", "model", "CLIP-L's text model"),
    ("text_encoder_2", "model", "CLIP-G's text model"),
    ("text_encoder_3", "model", "the T5 encoder"),
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")  # any one of them


def read_index(folder: Path) -> dict | None:
    """The folder's model_index.json, or None where there is none."""
    path = folder / "model_index.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise NanodiffError(f"{path} is not valid JSON ({e})") from e


def is_sd3_folder(folder: Path) -> bool:
    """Whether model_index.json names a StableDiffusion3*Pipeline."""
    index = read_index(folder)
    return isinstance(index, dict) and str(index.get("_class_name", "")).startswith("StableDiffusion3")


def has_t5(index: dict) -> bool:
    """model_index.json lists text_encoder_3 as [library, class], or as [null, null] when left out."""
    entry = index.get("text_encoder_3")
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def check_sd3_folder(folder: Path, index: dict) -> None:
    """One clear line naming the first file an SD3 folder lacks (safetensors, whole or sharded)."""

    def refuse(name: str, what: str, hint: str = ""):
        raise NanodiffError(
            f"{folder} is not a diffusers Stable Diffusion 3 folder: {name} ({what}) is missing{hint}"
        )

    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        refuse("scheduler/scheduler_config.json", "the flow scheduler's config")
    t5 = has_t5(index)
    for part, stem, what in NETWORKS:
        if part == "text_encoder_3" and not t5:
            continue
        if not (folder / part / "config.json").is_file():
            refuse(f"{part}/config.json", f"{what}'s config")
        weights = folder / part / f"{stem}.safetensors"
        if not weights.is_file() and not weights.with_name(weights.name + ".index.json").is_file():
            bin_only = any((folder / part).glob("*.bin"))
            hint = " (only .bin weights are there: nanodiffusion loads safetensors only)" if bin_only else ""
            refuse(f"{part}/{stem}.safetensors", f"{what}'s weights", hint)
    for part in ("tokenizer", "tokenizer_2") + (("tokenizer_3",) if t5 else ()):
        if not any((folder / part / name).is_file() for name in TOKENIZER_FILES):
            refuse(f"{part}/tokenizer.json", "a tokenizer")


def flow_schedule_from_diffusers(config: dict) -> Schedule:
    """The flow schedule of a diffusers FlowMatch* scheduler config with a fixed shift.

    The trained levels are t = k / T (k = 1 .. T) shifted, t' = shift t / (1 + (shift - 1) t),
    i.e. sigma' = shift sigma. t = 1 has sigma = inf, so sampling starts one level below it:
    sigma_max = shift (T - 1), sigma_min = shift / (T - 1).
    """
    name = config.get("_class_name")
    if name is not None and not str(name).startswith("FlowMatch"):
        raise NanodiffError(
            f"unsupported scheduler _class_name={name!r} for an SD3 folder: a FlowMatch "
            "scheduler was expected"
        )
    if config.get("use_dynamic_shifting"):
        raise NanodiffError(
            "unsupported scheduler option use_dynamic_shifting=True (a shift that depends on the "
            "image size, as Flux's): nanodiffusion takes the config's fixed shift"
        )
    if config.get("invert_sigmas"):
        raise NanodiffError(
            "unsupported scheduler option invert_sigmas=True: SD3's flow runs from t = 1 to 0"
        )
    T = int(config.get("num_train_timesteps", 1000))
    if T != 1000:
        raise NanodiffError(f"unsupported scheduler option num_train_timesteps={T}: the timestep is 1000 t")
    shift = float(config.get("shift", 1.0))
    return Schedule(
        "flow", T, sigma_min=shift * flow_sigma(1 / T), sigma_max=shift * flow_sigma(1 - 1 / T), shift=shift
    )


def pack_condition(tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """tokens [B, L, D] and pooled [B, P] -> one condition [B, L + ceil(P / D), D]: the pooled
    vector zero-padded and cut into rows after the tokens."""
    batch, _, width = tokens.shape
    rows = -(-pooled.shape[-1] // width)
    pooled = F.pad(pooled, (0, rows * width - pooled.shape[-1])).reshape(batch, rows, width)
    return torch.cat([tokens, pooled.to(tokens.dtype)], 1)


def unpack_condition(cond: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``pack_condition``: (tokens [B, L, D], pooled [B, pooled_dim])."""
    rows = -(-pooled_dim // cond.shape[-1])
    return cond[:, :-rows], cond[:, -rows:].flatten(1)[:, :pooled_dim]


class JointTransformer(nn.Module):
    """A diffusers ``SD3Transformer2DModel`` as a raw network ``net(x_in, c_noise, cond)``.

    x_in is the flow's x_t, c_noise = 1000 t is the ``timestep`` diffusers passes, cond a packed
    condition (``pack_condition``). Inputs are cast to the transformer's dtype, the velocity
    back to float32.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.pooled_dim = int(transformer.config.pooled_projection_dim)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if cond is None:
            raise NanodiffError("an SD3 transformer needs a text condition")
        dtype = self.transformer.dtype
        tokens, pooled = unpack_condition(cond.to(x_in.device, dtype), self.pooled_dim)
        v = self.transformer(
            hidden_states=x_in.to(dtype),
            timestep=c_noise,
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return v.float()


class StableDiffusion3(StableDiffusion):
    """An SD3-class checkpoint behind ``StableDiffusion``'s interface: the same ``__call__``
    (samplers, guidance, img2img, seeds), with the flow schedule, the joint transformer and the
    three text encoders. ``StableDiffusion.from_pretrained`` returns one for an SD3 folder.

    clips: [(tokenizer, CLIPTextModelWithProjection)] for CLIP-L and CLIP-G; t5: (tokenizer,
    T5EncoderModel) or None, in which case T5's tokens are zeros as in diffusers.
    """

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        clips: list[tuple],
        t5: tuple | None,
        scheduler_config: dict,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_sequence_length: int = 256,
    ):
        schedule = flow_schedule_from_diffusers(scheduler_config)
        self._init_autoencoder(vae, device, dtype)
        self.transformer = frozen(transformer, self.device, self.dtype)
        self.clips = [(tokenizer, frozen(model, self.device, self.dtype)) for tokenizer, model in clips]
        self.t5 = None if t5 is None else (t5[0], frozen(t5[1], self.device, self.dtype))
        self.max_sequence_length = max_sequence_length
        config = transformer.config
        self.joint_dim = int(config.joint_attention_dim)
        self._check_text_widths(config)
        self.latent_channels = int(config.in_channels)
        self.net_factor, self.net_factor_name = int(config.patch_size), "the transformer's patch"
        self.max_patches = config.pos_embed_max_size  # the position embeddings' side, in patches
        self.default_size = int(config.sample_size) * self.vae_factor
        self.denoiser = Denoiser(JointTransformer(self.transformer), schedule, "flow").to(self.device)

    def _check_text_widths(self, config) -> None:
        clip_width = sum(int(m.config.hidden_size) for _, m in self.clips)
        pooled = sum(int(m.config.projection_dim) for _, m in self.clips)
        t5_width = self.joint_dim if self.t5 is None else int(self.t5[1].config.d_model)
        if (
            clip_width > self.joint_dim
            or t5_width != self.joint_dim
            or pooled != config.pooled_projection_dim
        ):
            raise NanodiffError(
                f"the text encoders do not fit the transformer: CLIP widths {clip_width} (at most "
                f"{self.joint_dim}), T5 width {t5_width} (must be {self.joint_dim}), projections "
                f"{pooled} (must be {config.pooled_projection_dim})"
            )

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: Path, device: str = "auto", dtype: torch.dtype | None = None) -> StableDiffusion3:
        """A diffusers StableDiffusion3Pipeline folder (safetensors); StableDiffusion.from_pretrained
        calls this when model_index.json names an SD3 pipeline."""
        diffusers, transformers = _require()
        index = read_index(folder)
        check_sd3_folder(folder, index)
        net_class = json.loads((folder / "transformer" / "config.json").read_text()).get("_class_name")
        if net_class != "SD3Transformer2DModel":
            raise NanodiffError(
                f"{folder / 'transformer' / 'config.json'} describes {net_class!r}; an SD3 folder "
                "has an SD3Transformer2DModel"
            )
        kw = dict(local_files_only=True, use_safetensors=True)
        low_mem = dict(low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        try:
            transformer = diffusers.SD3Transformer2DModel.from_pretrained(
                folder / "transformer", **kw, **low_mem
            )
            vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", **kw, **low_mem)
            clips = [
                (
                    transformers.CLIPTokenizer.from_pretrained(folder / tokenizer, local_files_only=True),
                    transformers.CLIPTextModelWithProjection.from_pretrained(folder / encoder, **kw),
                )
                for tokenizer, encoder in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
            ]
            t5 = None
            if has_t5(index):
                t5 = (
                    transformers.AutoTokenizer.from_pretrained(folder / "tokenizer_3", local_files_only=True),
                    transformers.T5EncoderModel.from_pretrained(folder / "text_encoder_3", **kw),
                )
        except (OSError, ValueError) as e:
            raise NanodiffError(f"cannot load {folder}: {str(e).splitlines()[0]}") from e
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        return cls(transformer, vae, clips, t5, scheduler, device, dtype)

    @classmethod
    def from_diffusers(cls, pipe, device: str = "auto", dtype: torch.dtype | None = None) -> StableDiffusion3:
        """The networks of an in-memory diffusers StableDiffusion3Pipeline (shared, not copied)."""
        clips = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        t5 = None if pipe.text_encoder_3 is None else (pipe.tokenizer_3, pipe.text_encoder_3)
        return cls(pipe.transformer, pipe.vae, clips, t5, dict(pipe.scheduler.config), device, dtype)

    # --- the parts ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """Packed conditions [B, 77 + 256 + rows, D] on the CPU, float32: the joint tokens and the
        pooled projections (the module docstring gives the recipe)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = int(self.clips[0][0].model_max_length)  # CLIP-L's 77, for both CLIPs
        hidden, pooled = [], []
        for tokenizer, model in self.clips:
            ids = tokenizer(
                prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            )
            out = model(ids.input_ids.to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2].float())  # the penultimate layer, as SD3 was trained
            pooled.append(out.text_embeds.float())
        clip = torch.cat(hidden, -1)
        if self.t5 is None:
            t5 = clip.new_zeros(len(prompts), self.max_sequence_length, self.joint_dim)
        else:
            tokenizer, model = self.t5
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=self.max_sequence_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            t5 = model(ids.input_ids.to(self.device)).last_hidden_state.float()
        tokens = torch.cat([F.pad(clip, (0, self.joint_dim - clip.shape[-1])), t5], 1)
        return pack_condition(tokens, torch.cat(pooled, -1)).cpu()

    def check_size(self, height: int, width: int) -> None:
        super().check_size(height, width)
        if self.max_patches:
            limit = self.max_patches * self.net_factor * self.vae_factor
            if max(height, width) > limit:
                raise NanodiffError(
                    f"{width}x{height} is too large for this checkpoint: sides up to {limit} pixels "
                    f"(the transformer's position embeddings cover {self.max_patches} patches a side)"
                )
