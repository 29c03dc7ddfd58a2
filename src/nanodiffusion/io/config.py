"""Run configuration: plain dataclasses, presets, TOML files and `section.key=value` overrides.

A run folder's config.json is `Config.to_dict()`: everything needed to rebuild the model,
its schedule and the training run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanodiffusion.core.losses import LossConfig
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.validation import check_value, validate
from nanodiffusion.nets import model_config_class
from nanodiffusion.nets.dit import DiTConfig
from nanodiffusion.nets.egnn import EGNNConfig
from nanodiffusion.nets.unet import UNetConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass
class DataConfig:
    name: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | shapes | an image folder | a .npz file
    image_size: int | None = None  # None: the data's own size
    channels: int | None = None  # None: the data's own (1 grey, 3 RGB)
    frames: int | None = None  # a video dataset's frames (None: the data's own)
    per_frame: bool = False  # a video dataset's frames as images, each with its video's caption (the
    # frame-by-frame baseline: an image model sampled frame by frame, `nanodiff generate --frames`)
    spectrogram: bool = False  # sound (speech, a WAV folder) as log-mel spectrogram images, not waveforms
    modality: str = ""  # what the data are, filled in from them: image | video | audio | spectrogram | roll
    sample_rate: int = 0  # sound's samples a second, filled in from the data (0: not sound)
    class_names: str = ""  # a class run's class names, "|"-separated, filled in from the data
    class_conditional: bool = False
    p_uncond: float = 0.1  # label (or prompt, to "") dropped with this probability
    text_encoder: str = ""  # "": no text; "minilm" or a local transformers folder: train on captions
    max_tokens: int = 24  # prompts are padded or cut to this many tokens
    autoencoder: str = ""  # a `nanodiff train-autoencoder` folder: diffusion runs in its latent space;
    # "train": first train one into RUN/autoencoder (the settings below), then diffuse in its latents
    autoencoder_steps: int = 2000
    autoencoder_channels: int = 16
    autoencoder_batch_size: int = 64
    task: str = ""  # what the model is trained to do: a name in nanodiffusion.tasks.TASKS ("": generate;
    # "inpaint": a mask-conditioned model; "upscale": super-resolution). The settings below belong to
    # tasks (their modules check them) and stay here so that every run folder's config.json loads.
    low_res: int = 0  # upscale: the low-resolution side (0: half of image_size)
    noise_aug: float = 0.3  # upscale: training's augmentation levels of the low-resolution input, 0 to this
    residual: bool = True  # upscale: diffuse the residual (x - bicubic(low)) x residual_scale, not x itself
    residual_scale: float = 0.0  # upscale: 0 = measured when training starts (sigma_data / residual std)
    crop: int = 0  # > 0: train on random crops of this size (convolutional UNets without attention)
    # molecules (data.molecules; data.task "molecules"): a built-in set or a .smi/.sdf/.xyz file
    hydrogens: bool = True  # the molecules' hydrogens as atoms (false: heavy atoms only)
    limit: int = 0  # > 0: the first `limit` molecules of each split only (quick runs, tests)
    property: str = ""  # class-conditional on this property's quantile bins: qed | logp | heavy_atoms
    property_bins: int = 3
    atom_types: str = ""  # the atom types, "|"-separated, filled in from the data
    atom_counts: list[int] = field(default_factory=list)  # molecules of n atoms, n = 0.., filled in
    class_atom_counts: list[int] = field(default_factory=list)  # the same per property bin, flattened


@dataclass
class DiffusionConfig:
    parameterization: str = "eps"  # eps | v | x0 | edm
    sigma_data: float = 0.5  # EDM preconditioning only


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    batch_size: int = 64  # global batch, whatever the number of processes
    grad_accum: int = 1

    def __post_init__(self):
        if self.decay not in ("cosine", "constant"):
            raise NanodiffError(f"optim.decay must be cosine or constant, got {self.decay!r}")


@dataclass
class EMAConfig:
    # decay_k = min(max_decay, 1 - (1 + k) ** -power): 0.95 at k=100, 0.99 at k=1000, the
    # warm-up of ema_pytorch (inv_gamma = 1), so the EMA of a short run is not stuck at its init.
    power: float = 2 / 3
    max_decay: float = 0.9999


@dataclass
class RunConfig:
    steps: int = 2000
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500  # write a grid of EMA samples; 0: only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # the newest checkpoints kept in RUN/checkpoints (0: all)
    sample_n: int = 64
    sample_guidance: float = 1.0  # classifier-free guidance scale of the grids of conditional runs
    sample_prompts: str = ""  # text runs: grid prompts split by "|" ("": shapes' fixed list, else captions)
    sampler: str = "ddim"
    sample_steps: int = 50
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        from nanodiffusion.core.samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise NanodiffError(f"run.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise NanodiffError(f"run.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig | DiTConfig | EGNNConfig = field(default_factory=UNetConfig)  # model.kind picks it
    schedule: Schedule = field(default_factory=Schedule)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        if not isinstance(d, dict):
            raise NanodiffError(f"a config is a table of sections (model, ...), not a {type(d).__name__}")
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise NanodiffError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            values = d.get(f.name, {})
            if not isinstance(values, dict):
                kind = type(values).__name__
                raise NanodiffError(f"config section [{f.name}] is a table of keys, not a {kind}")
            if f.name == "model":  # a UNet unless model.kind says otherwise (0.1's configs have no kind)
                section_cls = model_config_class(values.get("kind", "unet"))
            names = {g.name for g in dataclasses.fields(section_cls)}
            bad = set(values) - names
            if bad:
                raise NanodiffError(f"unknown config key(s) in [{f.name}]: {', '.join(sorted(bad))}")
            defaults = section_cls()
            for key, value in values.items():  # before the section's own checks, so the message names the key
                check_value(f"{f.name}.{key}", value, getattr(defaults, key))
            kwargs[f.name] = section_cls(**values)
        # the model's size, channels and classes may still be the data's to decide (train fills them in)
        return validate(cls(**kwargs), prepared=False)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Config:
        path = Path(path)
        try:
            if path.suffix == ".toml":
                d = tomllib.loads(path.read_text())
            else:
                d = json.loads(path.read_text())
        except FileNotFoundError:
            raise NanodiffError(f"config file not found: {path}") from None
        except OSError as e:  # a folder, no permission
            raise NanodiffError(f"cannot read config {path}: {e.strerror or e}") from None
        except (ValueError, tomllib.TOMLDecodeError) as e:
            raise NanodiffError(f"cannot parse config {path}: {e}") from None
        try:
            return cls.from_dict(d)
        except NanodiffError as e:  # name the file: a run folder's config.json, or a --config file
            raise NanodiffError(f"{path}: {e}") from None
        except TypeError as e:
            raise NanodiffError(f"invalid config {path}: {e}") from None


def _model(channels, mults, attn, size, blocks=2, dropout=0.1, in_channels=1, head_dim=32) -> UNetConfig:
    return UNetConfig(
        in_channels=in_channels,
        head_dim=head_dim,
        channels=channels,
        channel_mults=mults,
        blocks_per_level=blocks,
        attn_resolutions=attn,
        dropout=dropout,
        image_size=size,
    )


# --- presets: tuned for the budget a user has, minutes on a 2-core CPU ----------------------------
PRESET_BUILDERS: dict[str, Callable[[], Config]] = {}  # name -> a function that builds a new Config
PRESETS = PRESET_BUILDERS.keys()  # their names, kept in step (a task's presets join when it registers)


def register_preset(name: str, build: Callable[[], Config] | None = None):
    """Add a preset: ``register_preset(name, build)``, or ``@register_preset(name)`` on a builder."""
    if build is None:
        return lambda fn: register_preset(name, fn)
    PRESET_BUILDERS[name] = build
    return build


def preset(name: str) -> Config:
    """A new Config of the preset `name` (the tasks' presets join when nanodiffusion.tasks is
    imported, which importing the package does)."""
    if name not in PRESET_BUILDERS:
        raise NanodiffError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESET_BUILDERS[name]()


@register_preset("digits")
def _digits() -> Config:
    """8x8 scikit-learn digits: the `nanodiff demo` model."""
    return Config(
        data=DataConfig(name="digits"),
        model=_model(32, [1, 2], [4], 8, blocks=1, dropout=0.0),
        optim=OptimConfig(lr=2e-3, batch_size=128, warmup_steps=50),
        run=RunConfig(steps=800, sample_every=400, checkpoint_every=400, sample_steps=50),
    )


def _mnist_like(name: str) -> Config:
    """28x28, tuned for 10 minutes on 2 cores (bench/quality.py).

    A narrow UNet (~100 images/s on 2 cores, twice the 32-wide one) sees twice the data in the
    budget; EDM's preconditioning, lognormal noise levels and loss weighting (Karras et al. 2022)
    spend the training where samples are decided; a high learning rate, short warm-up, no
    dropout: short runs underfit."""
    return Config(
        data=DataConfig(name=name),
        model=_model(16, [1, 2, 4], [7], 28, dropout=0.0),
        schedule=Schedule(kind="edm"),
        diffusion=DiffusionConfig(parameterization="edm"),
        loss=LossConfig(sigma_sampling="lognormal", weighting="edm"),
        optim=OptimConfig(lr=2e-3, batch_size=64, warmup_steps=50),
        run=RunConfig(steps=1000, sample_every=500, checkpoint_every=500, sampler="dpm++2m", sample_steps=20),
    )


register_preset("mnist", functools.partial(_mnist_like, "mnist"))
register_preset("fashion-mnist", functools.partial(_mnist_like, "fashion-mnist"))


def _mnist_like_flow(name: str) -> Config:
    """The 28x28 preset trained by rectified flow (Lipman et al. 2023, Liu et al. 2023): the
    velocity parameterisation over the flow path, sigma_max 999 (t = 0.999), SD3's logit-normal(0, 1)
    timesteps (Esser et al. 2024), uniform weight. Where it wins: after the same CPU budget on
    Fashion-MNIST it reaches FID 59.3 at 20 NFE where the EDM recipe reaches 81.2
    (bench/backbones.py, docs/benchmarks.md)."""
    cfg = _mnist_like(name)
    cfg.schedule = Schedule(kind="flow", sigma_max=999.0)
    cfg.diffusion = DiffusionConfig(parameterization="flow")
    cfg.loss = LossConfig(sigma_sampling="lognormal", weighting="uniform", p_mean=0.0, p_std=1.0)
    return cfg


register_preset("mnist-flow", functools.partial(_mnist_like_flow, "mnist"))
register_preset("fashion-mnist-flow", functools.partial(_mnist_like_flow, "fashion-mnist"))


@register_preset("text")
def _text() -> Config:
    """The shapes world, text to image, Stable Diffusion's recipe at laptop size.

    A small autoencoder (trained first, into RUN/autoencoder, 5-7 min) takes the 32x32 scenes to
    8x8x4 latents, where a UNet with transformer blocks (cross-attention to MiniLM's tokens) is
    cheap enough for 3000 steps in 13-17 min. EDM's recipe, with sigma_data 1 because the latents
    are scaled to unit variance (and the lognormal sigma density moved up with it: ln 0.6 where
    EDM's images, sigma_data 0.5, use ln 0.3)."""
    return Config(
        data=DataConfig(
            name="shapes",
            image_size=32,
            text_encoder="minilm",
            autoencoder="train",
            autoencoder_steps=1500,
            autoencoder_channels=16,
        ),
        model=_model(32, [1, 2], [8, 4], 8, dropout=0.0, in_channels=4),
        schedule=Schedule(kind="edm"),
        diffusion=DiffusionConfig(parameterization="edm", sigma_data=1.0),
        loss=LossConfig(sigma_sampling="lognormal", weighting="edm", p_mean=-0.5),
        optim=OptimConfig(lr=1e-3, batch_size=64, warmup_steps=100),
        run=RunConfig(
            steps=3000,
            sample_every=500,
            checkpoint_every=500,
            sampler="dpm++2m",
            sample_steps=20,
            sample_n=16,
            sample_guidance=3.0,
        ),
    )


def _flow(cfg: Config) -> Config:
    """Rectified flow's recipe (the *-flow presets'): velocity over the flow path, t up to 0.999,
    logit-normal(0, 1) timesteps, uniform weight."""
    cfg.schedule = Schedule(kind="flow", sigma_max=999.0)
    cfg.diffusion = DiffusionConfig(parameterization="flow")
    cfg.loss = LossConfig(sigma_sampling="lognormal", weighting="uniform", p_mean=0.0, p_std=1.0)
    return cfg


def _video(name: str, channels: int, size: list[int], patch: list[int], text: str = "") -> Config:
    """A space-time DiT on video data `name` (width 96, depth 4, factorised attention: each block
    within a frame, then across frames; Latte, Ma et al. 2024), trained by rectified flow in
    pixels, batch 16, 2000 steps planned (~30 minutes on one CPU thread, bench/video.py)."""
    model = DiTConfig(in_channels=channels, image_size=size, patch_size=patch, width=96, depth=4, head_dim=48)
    model.attention = "factorised"
    run = RunConfig(steps=2000, sample_every=500, checkpoint_every=250, sampler="dpm++2m", sample_steps=20)
    run.sample_n, run.sample_guidance = 8, 3.0 if text else 1.0
    data = DataConfig(name=name, text_encoder=text)
    return _flow(Config(data=data, model=model, optim=OptimConfig(lr=1e-3, batch_size=16), run=run))


@register_preset("video-shapes")
def _video_shapes() -> Config:
    """Text to video on moving shapes (16 frames, 32x32), Sora's recipe at laptop size: patches of
    2 frames x 4 x 4 pixels (8 x 8 x 8 = 512 tokens), MiniLM's tokens by cross-attention. About
    0.8 s a step of 16 videos on one CPU thread."""
    return _video("video-shapes", 3, [16, 32, 32], [2, 4, 4], text="minilm")


@register_preset("moving-mnist")
def _moving_mnist() -> Config:
    """Moving MNIST (two digits bouncing, 20 frames, 64x64), unconditional: patches of 2 frames x
    8 x 8 pixels (10 x 8 x 8 = 640 tokens). About 0.9 s a step of 16 videos on one CPU thread."""
    return _video("moving-mnist", 1, [20, 64, 64], [2, 8, 8])


def _sound(name: str, model, batch: int, steps: int, **data) -> Config:
    """Rectified flow on sound or music (bench/audio.py): class-conditional on the word where the
    data have labels, guidance 3 in the grids, ~30 minutes planned on one CPU thread."""
    run = RunConfig(steps=steps, sample_every=500, checkpoint_every=250, sampler="dpm++2m", sample_steps=20)
    run.sample_n, run.sample_guidance = 16, 3.0 if data.get("class_conditional") else 1.0
    optim = OptimConfig(lr=1e-3, batch_size=batch)
    return _flow(Config(data=DataConfig(name=name, **data), model=model, optim=optim, run=run))


@register_preset("speech")
def _speech() -> Config:
    """Spoken words as log-mel spectrograms (64 bands x 64 frames, one second at 16 kHz), a DiT over
    4 x 4 patches (256 tokens) conditioned on the word, back to sound by Griffin-Lim (data.audio).
    About 1.5 s a step of 32 on one CPU thread; a UNet of 32 channels takes 4.4 s."""
    model = DiTConfig(image_size=64, patch_size=4, width=128, depth=6, head_dim=64, num_classes=30)
    return _sound("speech", model, 32, 1200, spectrogram=True, class_conditional=True)


@register_preset("speech-wave")
def _speech_wave() -> Config:
    """Spoken words as raw 16 kHz waveforms: a 1-D DiT over patches of 250 samples (64 tokens a
    second), conditioned on the word."""
    model = DiTConfig(image_size=[16000], patch_size=250, width=256, depth=6, head_dim=64, num_classes=30)
    return _sound("speech", model, 32, 1800, class_conditional=True)


@register_preset("chorales")
def _chorales() -> Config:
    """Bach chorales as 4-voice piano rolls (64 pitches x 64 sixteenths, 4 bars), a DiT over 4 x 4
    patches on the continuous relaxation of the binary roll (a note: 1, silence: -1; thresholded
    at 0)."""
    model = DiTConfig(in_channels=4, image_size=64, patch_size=4, width=128, depth=6, head_dim=64)
    return _sound("chorales", model, 32, 600)


@register_preset("cifar10")
def _cifar10() -> Config:
    """CIFAR-10 at 32x32 on one GPU: the DDPM CIFAR-10 UNet trained the EDM way.

    Ho et al. 2020's network (128 channels, [1, 2, 2, 2], two blocks per level, attention at
    16x16, dropout 0.1; 38.3M parameters here) and optimiser (Adam, lr 2e-4, batch 128, 5000
    warm-up steps), with Karras et al. 2022's preconditioning, lognormal noise levels and loss
    weighting, as the 28x28 presets. Sized for one data-centre GPU (A100, H100, H200): a step is
    about 4.8 TFLOP (37 GFLOP an image, forward and backward), so 200,000 steps (25.6M images,
    512 epochs) take an estimated 3-6 hours under bf16 autocast; not measured. Days on a CPU."""
    return Config(
        data=DataConfig(name="cifar10"),
        model=_model(128, [1, 2, 2, 2], [16], 32, dropout=0.1, in_channels=3, head_dim=64),
        schedule=Schedule(kind="edm"),
        diffusion=DiffusionConfig(parameterization="edm"),
        loss=LossConfig(sigma_sampling="lognormal", weighting="edm"),
        optim=OptimConfig(lr=2e-4, batch_size=128, warmup_steps=5000),
        run=RunConfig(
            steps=200_000,
            log_every=100,
            sample_every=10_000,
            checkpoint_every=10_000,
            sampler="dpm++2m",
            sample_steps=20,
        ),
    )


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


def switch_model(d: dict, kind: Any) -> None:
    """Make the model section of the config dict `d` a `kind` network's: that network's defaults,
    with the keys both networks share (channels in and out, image size, classes, text width,
    head width, dropout, ...) kept from the old section."""
    new = dataclasses.asdict(model_config_class(kind)())
    d["model"] = {k: d["model"].get(k, v) if k != "kind" else kind for k, v in new.items()}


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` overrides (values parsed as JSON, else kept as strings).

    ``model.kind=dit`` (or ``unet``) is applied first, whatever its place, so that the other
    ``model.*`` overrides find the new network's keys."""
    d = cfg.to_dict()
    kinds = [item.partition("=")[2] for item in overrides if item.partition("=")[0] == "model.kind"]
    if kinds and _parse_value(kinds[-1]) != d["model"].get("kind"):
        switch_model(d, _parse_value(kinds[-1]))
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise NanodiffError(f"override {item!r} must look like section.key=value")
        if section not in d or name not in d[section]:
            raise NanodiffError(f"unknown config key {key!r}")
        d[section][name] = _parse_value(value)
    return Config.from_dict(d)
