"""Stable Diffusion 3-class checkpoints (diffusers folders) under nanodiffusion's samplers.

SD3 (Esser et al. 2024) is a rectified flow, x_t = (1 - t) x0 + t eps, whose network (the MMDiT,
diffusers' ``SD3Transformer2DModel``) predicts v = eps - x0 from x_t and the timestep 1000 t.
That is nanodiffusion's ``flow`` parameterisation over ``Schedule(kind="flow", shift=...)``, so
the transformer becomes a raw network ``net(x_in, c_noise, cond)`` with x_in = c_in x = x_t and
c_noise = 1000 t, and every sampler and classifier-free guidance run on it unchanged.

The text condition is diffusers' ``encode_prompt`` recipe, computed here:

    clip   = [CLIP-L penultimate hidden states | CLIP-G penultimate hidden states]  [B, 77, 768 + 1280]
    t5     = T5's last hidden states, 256 tokens [B, 256, 4096] (zeros when there is no T5)
    tokens = [clip zero-padded to T5's width ; t5]                               [B, 77 + 256, 4096]
    pooled = [CLIP-L projection | CLIP-G projection]                               [B, 768 + 1280]

Guidance handles one condition tensor, so ``pack_condition`` appends the pooled vector to the
tokens as zero-padded rows and the network takes it apart again. The autoencoder's latents are
shifted and scaled: z = (E(x) - shift_factor) scaling_factor, decoded as D(z / scaling_factor +
shift_factor).

    pipe = StableDiffusion.from_pretrained("path/to/stable-diffusion-3-medium-diffusers")
    image = pipe("A futuristic city with flying cars", sampler="euler", steps=28, guidance=7.0)[0]
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.schedules import Schedule, flow_sigma
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.stable_diffusion import StableDiffusion, _require, _to

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
        self.transformer = _to(transformer, self.device, self.dtype)
        self.clips = [(tokenizer, _to(model, self.device, self.dtype)) for tokenizer, model in clips]
        self.t5 = None if t5 is None else (t5[0], _to(t5[1], self.device, self.dtype))
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
