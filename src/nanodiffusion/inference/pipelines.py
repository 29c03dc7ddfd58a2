"""User-facing objects: build a denoiser from a config, load a run folder, draw images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.editing import check_strength, edit
from nanodiffusion.core.guidance import ClassifierFreeGuidance, class_guidance
from nanodiffusion.core.samplers import CountingDenoiser, get_sampler
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.checkpoint import EMA, MODEL, load_config, load_weights
from nanodiffusion.io.config import Config
from nanodiffusion.nets.unet import UNet


def build_denoiser(cfg: Config, net: torch.nn.Module | None = None) -> Denoiser:
    """The config's denoiser around `net` (default: a new UNet from cfg.model)."""
    return Denoiser(UNet(cfg.model) if net is None else net, cfg.schedule,
                    cfg.diffusion.parameterization, cfg.diffusion.sigma_data)


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


def load_parts(run_dir: str | Path, weights: str = "ema", device: str = "auto"):
    """(config, denoiser, autoencoder or None, text encoder or None): all a run draws with."""
    cfg, denoiser = load_run(run_dir, weights, device)
    autoencoder = encoder = None
    if cfg.data.autoencoder:  # load_run points it at the run's own, wherever the run moved
        from nanodiffusion.nets.autoencoder import load_autoencoder

        autoencoder = load_autoencoder(cfg.data.autoencoder, pick_device(device))
    if cfg.data.text_encoder:
        from nanodiffusion.data.text import load_text_encoder

        encoder = load_text_encoder(cfg.data.text_encoder, cfg.data.max_tokens)
    return cfg, denoiser, autoencoder, encoder


@torch.no_grad()
def sample_images(
    denoiser: Denoiser, n: int, shape: tuple[int, ...], sampler: str = "ddim", steps: int = 50,
    seed: int = 0, class_labels: torch.Tensor | None = None, spacing: str | None = None,
    batch_size: int = 256, callback: Callable | None = None, progress: bool = False,
    stats: dict | None = None, guidance: float = 1.0, uncond: torch.Tensor | None = None,
    clamp: bool = True, init: torch.Tensor | None = None, strength: float = 1.0,
    known: torch.Tensor | None = None, inpaint: str = "replace", jump: int = 5, resample: int = 5,
    image_cond: torch.Tensor | None = None, **sampler_kwargs,
) -> torch.Tensor:
    """n samples [n, *shape], clamped to the data range [-1, 1] (clamp=False for an
    autoencoder's latents, which are not bounded). Same seed, n and batch_size: the same samples.

    Editing (``nanodiffusion.core.editing``), with any sampler: ``init`` ([n or 1, *shape], in the
    model's space) with ``strength`` < 1 is img2img (SDEdit); with ``known`` (1 = keep, 0 =
    generate; [n or 1, 1 or C, *spatial]) it is inpainting by ``inpaint`` "replace" or "repaint"
    (RePaint's ``jump`` and ``resample``), or "model" for a run trained with data.task
    "inpaint", whose network sees the masked image and the mask. The noise is drawn as for
    plain sampling, so strength 1 without a mask gives plain sampling's images.
    ``image_cond`` ([1 or n, C', *spatial]) is the image condition of a network trained with
    one (an upscaling run's low-resolution input, ``nanodiffusion.tasks.upscale.condition``).

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
    check_strength(strength)
    if (strength < 1 or known is not None) and init is None:
        raise NanodiffError("img2img (strength < 1) and inpainting (a mask) need init images")
    if init is not None and (init.ndim != len(shape) + 1 or tuple(init.shape[1:]) != tuple(shape)
                             or len(init) not in (1, n)):
        raise NanodiffError(f"init images must be [1 or {n}, {', '.join(map(str, shape))}], "
                            f"got {list(init.shape)}")
    if known is not None and len(known) not in (1, n):
        raise NanodiffError(f"give one mask or one per image ({n}), got {len(known)}")
    net_cfg = getattr(getattr(denoiser, "net", None), "cfg", None)
    takes_image = getattr(net_cfg, "cond_channels", 0) > 0
    model_inpainting = takes_image and image_cond is None
    if image_cond is not None and (not takes_image or len(image_cond) not in (1, n)):
        raise NanodiffError("an image condition needs a network trained with one, one row or one per sample")
    if model_inpainting and (known is None or inpaint != "model"):
        raise NanodiffError("this run is a mask-conditioned inpainting model: give init images and a mask, "
                            "with the method 'model'")
    if inpaint == "model" and known is not None and not model_inpainting:
        raise NanodiffError("the method 'model' needs a run trained for inpainting (data.task = "
                            "'inpaint'); any run can use 'replace' or 'repaint'")
    if guidance != 1 and class_labels is None:
        raise NanodiffError("guidance needs class labels to guide towards")

    def guided(d):
        if guidance == 1:
            return d
        if uncond is not None:
            return ClassifierFreeGuidance(d, guidance, uncond)
        return class_guidance(d, guidance, getattr(net_cfg, "num_classes", 0))

    schedule = denoiser.schedule
    sigmas = schedule.sampling_sigmas(steps, spacing)
    device = next(denoiser.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *shape, generator=generator)  # all drawn first: batching-independent
    out, counted = [], CountingDenoiser(guided(denoiser))
    prior_std = schedule.prior_std(float(sigmas[0]))
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        labels = None if class_labels is None else class_labels[part].to(device)
        z = noise[part].to(device)
        if image_cond is not None:
            counted.denoiser = guided(denoiser.conditioned_on(_rows(image_cond, part).to(device)))
        if init is None:
            x = sample_fn(counted, z * prior_std, sigmas, labels, generator=generator, callback=callback,
                          progress=progress, **sampler_kwargs)
        else:
            x0, mask = _rows(init, part).to(device), None if known is None else _rows(known, part).to(device)
            if model_inpainting:  # the network sees [x, masked image, mask]
                mask = mask.amin(1, keepdim=True).expand(len(z), 1, *shape[1:]).to(x0.dtype)
                bound = denoiser.conditioned_on(torch.cat([x0.expand(len(z), *shape) * mask, mask], 1))
                counted.denoiser = guided(bound)
            x = edit(sample_fn, counted, z, x0, sigmas, labels, prior_std=prior_std, strength=strength,
                     known=mask, method=inpaint, jump=jump, resample=resample, generator=generator,
                     callback=callback, progress=progress, **sampler_kwargs)
        out.append((x.clamp(-1, 1) if clamp else x).cpu())
    if stats is not None:
        stats.update(nfe=counted.calls // len(out), sigmas=sigmas)
    return torch.cat(out)


def _rows(t: torch.Tensor, part: slice) -> torch.Tensor:
    """A batch's rows of a per-image tensor, or the one row that all images share."""
    return t if len(t) == 1 else t[part]


def conditioning(cfg: Config, encoder, n: int, prompt: str | list[str] | None = None, negative: str = "",
                 class_label: int | None = None, guidance: float | None = None):
    """(cond, guidance, uncond) for n images of a run: a text run's prompt (one for all, or one
    per image; none: the empty prompt), a class run's class (none: its reserved "no class"
    input), or nothing for an unconditional run. Guidance defaults to 4 when a prompt or class
    was given, else 1."""
    def scale(told: bool) -> float:
        return guidance if guidance is not None else (4.0 if told else 1.0)

    if encoder is not None:
        prompts = list(prompt) if isinstance(prompt, list) else [prompt or ""] * n
        if len(prompts) != n:
            raise NanodiffError(f"give one prompt, or one per image ({n}), got {len(prompts)}")
        return encoder(prompts), scale(bool(prompt)), encoder([negative])[0]
    if prompt:
        raise NanodiffError("a prompt needs a text-conditional run")
    k = cfg.model.num_classes
    if k:
        if class_label is not None and not 0 <= class_label < k:
            raise NanodiffError(f"class_label must be in 0..{k - 1}")
        told = class_label is not None
        return torch.full((n,), class_label if told else k), scale(told), None  # k: the reserved "no class"
    if class_label is not None or guidance not in (None, 1.0):
        raise NanodiffError("this model is unconditional; "
                            f"{'guidance' if class_label is None else 'class_label'} needs a class or "
                            "text run")
    return None, 1.0, None


def image_shape(cfg: Config, autoencoder=None) -> tuple[int, int, int]:
    """[C, H, W] of a run's images in pixels (a latent run's after decoding)."""
    if autoencoder is None:
        m = cfg.model
        return m.in_channels, m.image_size, m.image_size
    return autoencoder.cfg.in_channels, cfg.data.image_size, cfg.data.image_size


@torch.no_grad()
def draw(cfg: Config, denoiser: Denoiser, n: int, *, autoencoder=None, cond: torch.Tensor | None = None,
         sampler: str = "dpm++2m", steps: int = 20, seed: int = 0, guidance: float = 1.0,
         uncond: torch.Tensor | None = None, init_image: torch.Tensor | None = None, strength: float = 1.0,
         known: torch.Tensor | None = None, low_res: torch.Tensor | None = None, aug: float = 0.0,
         consistent: bool = True, progress: bool = False, **options) -> torch.Tensor:
    """n images [n, C, H, W] in [-1, 1] from a run, in pixels whether it diffuses pixels or an
    autoencoder's latents: sample_images, then decoding.

    Editing, in pixels: ``init_image`` ([1 or n, C, H, W]) with ``strength`` < 1 is img2img;
    with ``known`` ([1 or n, 1, H, W], 1 = keep) inpainting (``inpaint="replace"`` or
    ``"repaint"``, see nanodiffusion.core.editing). A latent run edits the image's latents (a latent
    cell is known only where all its pixels are) and pastes the known pixels after decoding.

    An upscaling run (data.task "upscale") draws one high-resolution image per ``low_res`` image
    ([n, C, h, w] in [-1, 1]), its input noised to the augmentation level ``aug`` first;
    ``consistent`` projects each result onto the images whose area-downsampling is its input
    (nanodiffusion.tasks.upscale.from_samples).
    """
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)
    if (cfg.data.task == "upscale") != (low_res is not None):
        raise NanodiffError("an upscaling run draws from low-resolution images (low_res)"
                            if low_res is None else "low-resolution images need an upscaling run "
                            "(data.task = 'upscale')")
    if low_res is not None:
        from nanodiffusion.tasks import upscale as superres

        superres.check_upscale_input(low_res, superres.low_size(cfg), m.in_channels)
        if len(low_res) != n:
            raise NanodiffError(f"give one low-resolution image per sample ({n}), got {len(low_res)}")
        options["image_cond"] = superres.condition(low_res, m.image_size, aug,
                                                   torch.Generator().manual_seed(seed))
    init, model_known = init_image, known
    if init_image is not None and autoencoder is not None:  # pixel runs: sample_images checks these
        want = image_shape(cfg, autoencoder)
        if init_image.ndim != 4 or tuple(init_image.shape[1:]) != want:
            raise NanodiffError(f"init images must be [1 or {n}, {', '.join(map(str, want))}], "
                                f"got {list(init_image.shape)}")
        if known is not None and (known.ndim != 4 or known.shape[-2:] != init_image.shape[-2:]):
            raise NanodiffError(f"the mask is {list(known.shape)}, which does not fit images "
                                f"{list(init_image.shape)}")
        init = autoencoder.encode_images(init_image)
        if known is not None:  # known in latent space only where every pixel of the cell is
            model_known = -torch.nn.functional.max_pool2d(-known.float(), autoencoder.cfg.factor)
    residual = low_res is not None and cfg.data.residual
    samples = sample_images(denoiser, n, shape, sampler, steps, seed=seed, class_labels=cond,
                            guidance=guidance, uncond=uncond, progress=progress,
                            clamp=autoencoder is None and not residual, init=init, strength=strength,
                            known=model_known, **options)
    if low_res is not None:
        from nanodiffusion.tasks.upscale import from_samples

        return from_samples(samples, low_res.float(), cfg, consistent)
    if autoencoder is None:
        return samples
    images = autoencoder.decode_images(samples)
    if known is not None:
        images = torch.lerp(images, init_image.to(images), known.to(images))
    return images


class TextToImage:
    """Prompt in, images out: a text-conditional run (pixel or latent) with its text encoder and
    autoencoder, sampled with classifier-free guidance towards the prompt and away from the
    negative prompt (default "", the unconditional input the model was trained with).

        pipe = TextToImage.from_pretrained("runs/text")
        images = pipe("a red circle left of a blue square", steps=20, guidance=4.0, seed=0)
    """

    def __init__(self, cfg: Config, denoiser: Denoiser, encoder, autoencoder=None, controlnet=None):
        self.cfg, self.denoiser, self.encoder, self.autoencoder = cfg, denoiser, encoder, autoencoder
        self.controlnet = controlnet

    @classmethod
    def from_pretrained(cls, folder: str | Path, weights: str = "ema", device: str = "auto",
                        controlnet: str | Path | None = None) -> TextToImage:
        """A run folder; ``controlnet``: a `nanodiff train-controlnet` folder for its UNet."""
        cfg, denoiser, autoencoder, encoder = load_parts(folder, weights, device)
        if encoder is None:
            raise NanodiffError(f"{folder} is not a text-conditional run (its data.text_encoder is empty)")
        if controlnet is not None:
            from nanodiffusion.nets.controlnet import load_controlnet

            controlnet = load_controlnet(controlnet, denoiser.net)[0]
        return cls(cfg, denoiser, encoder, autoencoder, controlnet)

    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json and ema.safetensors (the weights in use), and the autoencoder if any."""
        from nanodiffusion.io.checkpoint import save_config, save_weights
        from nanodiffusion.nets.autoencoder import save_autoencoder

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
                 output: str = "pil", progress: bool = False, init_image: torch.Tensor | None = None,
                 strength: float = 1.0, known: torch.Tensor | None = None,
                 control: torch.Tensor | None = None, control_scale: float = 1.0, **editing):
        """n images per prompt, prompt by prompt; output 'pil' (a list of PIL images) or 'tensor'
        ([N, C, H, W] in [-1, 1]).

        Editing (``nanodiffusion.core.editing``): ``init_image`` ([1 or N, C, H, W] in [-1, 1]) with
        ``strength`` < 1 is img2img; with ``known`` (1 = keep, [1 or N, 1, H, W]) inpainting, by
        ``inpaint="replace"`` or ``"repaint"``. A latent run edits the image's latents (a latent
        cell is known only where all its pixels are) and pastes the known pixels after decoding.

        ``control`` ([1 or N, 1, H, W] edge maps of 0/1 at the image size) steers the UNet through
        the pipeline's ControlNet, its residuals times ``control_scale`` (nanodiffusion.nets.controlnet).
        """
        from nanodiffusion.io.viz import to_pil

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or n < 1:
            raise NanodiffError("give at least one prompt and n >= 1")
        cond = self.encoder([p for p in prompts for _ in range(n)])
        uncond = self.encoder([negative_prompt])[0]
        denoiser = self.denoiser
        if control is not None:
            from nanodiffusion.nets.controlnet import controlled

            if self.controlnet is None:
                raise NanodiffError("a control image needs a ControlNet (from_pretrained's controlnet)")
            want = image_shape(self.cfg, self.autoencoder)[1:]
            if control.ndim != 4 or control.shape[1] != 1 or tuple(control.shape[-2:]) != want \
                    or len(control) not in (1, len(cond)):
                raise NanodiffError(f"control images must be [1 or {len(cond)}, 1, {want[0]}, {want[1]}], "
                                    f"got {list(control.shape)}")
            denoiser = controlled(denoiser, self.controlnet, control, control_scale)
        images = draw(self.cfg, denoiser, len(cond), autoencoder=self.autoencoder, cond=cond,
                      guidance=guidance, uncond=uncond, sampler=sampler, steps=steps, seed=seed,
                      progress=progress, init_image=init_image, strength=strength, known=known, **editing)
        if output == "tensor":
            return images
        return [to_pil(img[None], padding=0) for img in images]


class Cascade:
    """Cascaded generation (Ho et al. 2021): a base run draws small images (class, text or
    unconditional), an upscaling run (data.task "upscale") takes them to its size, its
    low-resolution input noised to the augmentation level ``aug`` first.

        pipe = Cascade.from_pretrained("runs/text32", "runs/upscale")
        images = pipe(prompt="a red circle left of a blue square", n=4, aug=0.1)
    """

    def __init__(self, base: tuple, upscaler: tuple[Config, Denoiser]):
        self.cfg, self.denoiser, self.autoencoder, self.encoder = base
        self.sr_cfg, self.sr_denoiser = upscaler
        from nanodiffusion.tasks.upscale import low_size

        if self.sr_cfg.data.task != "upscale":
            raise NanodiffError("the second stage of a cascade must be an upscaling run (data.task = "
                                "'upscale')")
        c, h, _ = image_shape(self.cfg, self.autoencoder)
        if (c, h) != (self.sr_cfg.model.in_channels, low_size(self.sr_cfg)):
            raise NanodiffError(f"the base run draws {c}x{h}x{h} images, the upscaler takes "
                                f"{self.sr_cfg.model.in_channels}x{low_size(self.sr_cfg)}x{low_size(self.sr_cfg)}")

    @classmethod
    def from_pretrained(cls, base: str | Path, upscaler: str | Path, weights: str = "ema",
                        device: str = "auto") -> Cascade:
        return cls(load_parts(base, weights, device), load_run(upscaler, weights, device))

    @torch.no_grad()
    def __call__(self, n: int = 1, prompt: str | list[str] | None = None, negative_prompt: str = "",
                 class_label: int | None = None, guidance: float | None = None, steps: int = 20,
                 sr_steps: int = 20, sampler: str = "dpm++2m", aug: float = 0.1, seed: int = 0,
                 progress: bool = False, return_low: bool = False, consistent: bool = True):
        """n images [n, C, H, W] in [-1, 1] (and the base's [n, C, h, w] with return_low). A text
        run takes a prompt (or a list of n, one per image; guidance default 4), a class run a
        class_label (guidance default 4; None: the "no class" input), an unconditional run neither."""
        cond, w, uncond = conditioning(self.cfg, self.encoder, n, prompt, negative_prompt, class_label,
                                       guidance)
        low = draw(self.cfg, self.denoiser, n, autoencoder=self.autoencoder, cond=cond, guidance=w,
                   uncond=uncond, sampler=sampler, steps=steps, seed=seed, progress=progress)
        high = draw(self.sr_cfg, self.sr_denoiser, n, low_res=low, aug=aug, sampler=sampler,
                    steps=sr_steps, seed=seed, progress=progress, consistent=consistent)
        return (high, low) if return_low else high
