"""User-facing objects: build a denoiser from a config, load a run folder, draw images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .checkpoint import EMA, MODEL, load_config, load_weights
from .config import Config
from .denoisers import Denoiser
from .errors import NanodiffError
from .guidance import ClassifierFreeGuidance, class_guidance
from .nets.unet import UNet
from .samplers import CountingDenoiser, get_sampler


def build_denoiser(cfg: Config, net: torch.nn.Module | None = None) -> Denoiser:
    """The config's denoiser around `net` (default: a new UNet from cfg.model)."""
    return Denoiser(UNet(cfg.model) if net is None else net, cfg.schedule,
                    cfg.diffusion.parameterization, cfg.diffusion.sigma_data)


@torch.no_grad()
def to_pixels(cfg: Config, samples: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """A run's samples as images in [-1, 1]: a latent run's (data.autoencoder) are decoded."""
    if not cfg.data.autoencoder:
        return samples
    from .nets.autoencoder import load_autoencoder

    return load_autoencoder(cfg.data.autoencoder, device).decode_images(samples)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NanodiffError("device cuda was asked for, but torch sees no GPU")
    return torch.device(name)


def load_run(run_dir: str | Path, weights: str = "ema", device: str = "auto"):
    """(config, denoiser in eval mode) from a run folder; weights 'ema' or 'model'."""
    if weights not in ("ema", "model"):
        raise NanodiffError(f"weights must be 'ema' or 'model', got {weights!r}")
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if cfg.data.autoencoder and (run_dir / "autoencoder").is_dir():  # its own, wherever the run moved
        cfg.data.autoencoder = str(run_dir / "autoencoder")
    denoiser = build_denoiser(cfg)
    load_weights(denoiser.net, run_dir / (EMA if weights == "ema" else MODEL))
    return cfg, denoiser.to(pick_device(device)).eval()


@torch.no_grad()
def sample_images(
    denoiser: Denoiser, n: int, shape: tuple[int, ...], sampler: str = "ddim", steps: int = 50,
    seed: int = 0, class_labels: torch.Tensor | None = None, spacing: str | None = None,
    batch_size: int = 256, callback: Callable | None = None, progress: bool = False,
    stats: dict | None = None, guidance: float = 1.0, uncond: torch.Tensor | None = None,
    clamp: bool = True, **sampler_kwargs,
) -> torch.Tensor:
    """n samples [n, *shape], clamped to the data range [-1, 1] (clamp=False for an
    autoencoder's latents, which are not bounded). Same seed, n and batch_size: the same samples.

    ``spacing`` None takes the schedule's default (trailing, or Karras for EDM). If ``stats``
    is a dict, it receives "nfe": the network evaluations per batch, counted, and "sigmas".
    ``guidance`` w != 1 applies classifier-free guidance towards ``class_labels`` (one batched
    forward pass over conditional and unconditional inputs per evaluation); ``uncond`` is the
    "no condition" input, by default nanodiffusion's UNet's reserved class index.
    """
    if n < 1:
        raise NanodiffError(f"the number of samples must be positive, got {n}")
    if batch_size < 1:
        raise NanodiffError(f"batch size must be positive, got {batch_size}")
    sample_fn = get_sampler(sampler).fn
    if guidance != 1:
        if class_labels is None:
            raise NanodiffError("guidance needs class labels to guide towards")
        if uncond is not None:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, uncond)
        else:
            net_cfg = getattr(getattr(denoiser, "net", None), "cfg", None)
            denoiser = class_guidance(denoiser, guidance, getattr(net_cfg, "num_classes", 0))
    schedule = denoiser.schedule
    sigmas = schedule.sampling_sigmas(steps, spacing)
    device = next(denoiser.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *shape, generator=generator)  # all drawn first: batching-independent
    out, counted = [], CountingDenoiser(denoiser)
    for start in range(0, n, batch_size):
        x = noise[start:start + batch_size].to(device) * schedule.prior_std(float(sigmas[0]))
        labels = None if class_labels is None else class_labels[start:start + batch_size].to(device)
        x = sample_fn(counted, x, sigmas, labels, generator=generator, callback=callback,
                      progress=progress, **sampler_kwargs)
        out.append((x.clamp(-1, 1) if clamp else x).cpu())
    if stats is not None:
        stats.update(nfe=counted.calls // len(out), sigmas=sigmas)
    return torch.cat(out)


class TextToImage:
    """Prompt in, images out: a text-conditional run (pixel or latent) with its text encoder and
    autoencoder, sampled with classifier-free guidance towards the prompt and away from the
    negative prompt (default "", the unconditional input the model was trained with).

        pipe = TextToImage.from_pretrained("runs/text")
        images = pipe("a red circle left of a blue square", steps=20, guidance=4.0, seed=0)
    """

    def __init__(self, cfg: Config, denoiser: Denoiser, encoder, autoencoder=None):
        self.cfg, self.denoiser, self.encoder, self.autoencoder = cfg, denoiser, encoder, autoencoder

    @classmethod
    def from_pretrained(cls, folder: str | Path, weights: str = "ema", device: str = "auto") -> TextToImage:
        from .nets.autoencoder import load_autoencoder
        from .text import load_text_encoder

        cfg, denoiser = load_run(folder, weights, device)
        if not cfg.data.text_encoder:
            raise NanodiffError(f"{folder} is not a text-conditional run (its data.text_encoder is empty)")
        # load_run prefers the autoencoder beside the UNet (save_pretrained and the text preset put it there)
        autoencoder = None
        if cfg.data.autoencoder:
            autoencoder = load_autoencoder(cfg.data.autoencoder, pick_device(device))
        return cls(cfg, denoiser, load_text_encoder(cfg.data.text_encoder, cfg.data.max_tokens), autoencoder)

    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json and ema.safetensors (the weights in use), and the autoencoder if any."""
        from .checkpoint import save_config, save_weights
        from .nets.autoencoder import save_autoencoder

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(self.denoiser.net, folder / EMA, 0)
        if self.autoencoder is not None:
            save_autoencoder(self.autoencoder, folder / "autoencoder")
        save_config(self.cfg, folder)
        return folder

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], n: int = 1, steps: int = 20, guidance: float = 4.0,
                 negative_prompt: str = "", sampler: str = "dpm++2m", seed: int = 0,
                 output: str = "pil", progress: bool = False, **sampler_kwargs):
        """n images per prompt, prompt by prompt; output 'pil' (a list of PIL images) or 'tensor'
        ([N, C, H, W] in [-1, 1])."""
        from .viz import to_pil

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or n < 1:
            raise NanodiffError("give at least one prompt and n >= 1")
        cond = self.encoder([p for p in prompts for _ in range(n)])
        uncond = self.encoder([negative_prompt])[0]
        m = self.cfg.model
        shape = (m.in_channels, m.image_size, m.image_size)
        latent = self.autoencoder is not None
        samples = sample_images(self.denoiser, len(cond), shape, sampler, steps, seed=seed, class_labels=cond,
                                guidance=guidance, uncond=uncond, progress=progress, clamp=not latent,
                                **sampler_kwargs)
        images = self.autoencoder.decode_images(samples) if latent else samples
        if output == "tensor":
            return images
        return [to_pil(img[None], padding=0) for img in images]
