"""Pipelines: a run's images from a prompt, a class or nothing, in pixels whatever the run diffuses
(``draw``), text to image (``TextToImage``) and cascaded generation (``Cascade``), on the sampling
core of ``nanodiffusion.inference.sampling``.

The model factory, the device and run loading moved to ``nanodiffusion.inference.runs`` and the
sampling core to ``nanodiffusion.inference.sampling``; their names still import from here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.runs import build_denoiser, image_shape, load_parts, load_run, pick_device
from nanodiffusion.inference.sampling import Control, sample_images
from nanodiffusion.io.checkpoint import EMA
from nanodiffusion.io.config import Config
from nanodiffusion.nets import sample_shape
from nanodiffusion.tasks import TASKS, Task, get_task

__all__ = [
    "Cascade",
    "TextToImage",
    "build_denoiser",
    "conditioning",
    "draw",
    "image_shape",
    "load_parts",
    "load_run",
    "pick_device",
    "sample_images",
]


def conditioning(
    cfg: Config,
    encoder,
    n: int,
    prompt: str | list[str] | None = None,
    negative: str = "",
    class_label: int | None = None,
    guidance: float | None = None,
):
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
        raise NanodiffError(
            "this model is unconditional; "
            f"{'guidance' if class_label is None else 'class_label'} needs a class or "
            "text run"
        )
    return None, 1.0, None


@torch.no_grad()
def draw(
    cfg: Config,
    denoiser: Denoiser,
    n: int,
    *,
    autoencoder=None,
    cond: torch.Tensor | None = None,
    sampler: str = "dpm++2m",
    steps: int = 20,
    seed: int = 0,
    guidance: float = 1.0,
    uncond: torch.Tensor | None = None,
    init_image: torch.Tensor | None = None,
    strength: float = 1.0,
    known: torch.Tensor | None = None,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """n images [n, C, H, W] in [-1, 1] from a run, in pixels whether it diffuses pixels or an
    autoencoder's latents: the run's task's condition, sample_images, the task's post-processing,
    then decoding.

    Editing, in pixels: ``init_image`` ([1 or n, C, H, W]) with ``strength`` < 1 is img2img;
    with ``known`` ([1 or n, 1, H, W], 1 = keep) inpainting (``inpaint="replace"`` or
    ``"repaint"``, see nanodiffusion.core.editing). A latent run edits the image's latents (a latent
    cell is known only where all its pixels are) and pastes the known pixels after decoding.

    The run's task (data.task, ``nanodiffusion.tasks``) takes its own inputs among the keywords:
    an upscaling run draws one high-resolution image per ``low_res`` image ([n, C, h, w] in
    [-1, 1]), its input noised to the augmentation level ``aug`` first; ``consistent`` projects
    each result onto the images whose area-downsampling is its input
    (nanodiffusion.tasks.upscale.from_samples). Other keywords go to sample_images.
    """
    shape = sample_shape(cfg.model)
    task = get_task(cfg.data.task)
    plan = task.sampling(cfg, n, seed, **_task_inputs(cfg, task, options))
    init, model_known = init_image, known
    if init_image is not None and autoencoder is not None:  # pixel runs: sample_images checks these
        want = image_shape(cfg, autoencoder)
        if init_image.ndim != 1 + len(want) or tuple(init_image.shape[1:]) != want:
            raise NanodiffError(
                f"init images must be [1 or {n}, {', '.join(map(str, want))}], got {list(init_image.shape)}"
            )
        if known is not None and (known.ndim != init_image.ndim or known.shape[2:] != init_image.shape[2:]):
            raise NanodiffError(
                f"the mask is {list(known.shape)}, which does not fit images {list(init_image.shape)}"
            )
        init = autoencoder.encode_images(init_image)
        if known is not None:  # known in latent space only where every pixel of the cell is
            f = autoencoder.cfg.factor  # a video's frames are encoded one by one
            pool = torch.nn.functional.max_pool3d if known.ndim == 5 else torch.nn.functional.max_pool2d
            model_known = -pool(-known.float(), (1, f, f) if known.ndim == 5 else f)
    samples = sample_images(
        denoiser,
        n,
        shape,
        sampler,
        steps,
        seed=seed,
        cond=cond,
        guidance=guidance,
        uncond=uncond,
        progress=progress,
        clamp=autoencoder is None and plan.clamp,
        init=init,
        strength=strength,
        known=model_known,
        image_cond=plan.image,
        wrappers=[*plan.wrappers, *options.pop("wrappers", [])],
        **options,
    )
    if plan.finish is not None:
        samples = plan.finish(samples)
    if autoencoder is None:
        return samples
    images = autoencoder.decode_images(samples)
    if known is not None:
        images = torch.lerp(images, init_image.to(images), known.to(images))
    return images


def _task_inputs(cfg: Config, task: Task, options: dict) -> dict:
    """The task's own keywords, taken out of `options`; one line for another task's input."""
    inputs = {key: options.pop(key) for key in task.inputs if key in options}
    for key in [key for key in options if any(key in t.inputs for t in TASKS.values())]:
        if options.pop(key) is not None:  # None: not given
            owners = " or ".join(repr(t.name) for t in TASKS.values() if key in t.inputs)
            raise NanodiffError(
                f"{key} is an input of runs whose data.task is {owners}; this run's is {cfg.data.task!r}"
            )
    return inputs


class TextToImage:
    """Prompt in, images out: a text-conditional run (pixel or latent) with its text encoder and
    autoencoder, sampled with classifier-free guidance towards the prompt and away from the
    negative prompt (default "", the unconditional input the model was trained with).

        pipe = TextToImage.from_pretrained("runs/text")  # or "shapes", the shipped model
        images = pipe("a red circle left of a blue square", steps=20, guidance=4.0, seed=0)
    """

    def __init__(self, cfg: Config, denoiser: Denoiser, encoder, autoencoder=None, controlnet=None):
        self.cfg, self.denoiser, self.encoder, self.autoencoder = cfg, denoiser, encoder, autoencoder
        self.controlnet = controlnet

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        weights: str = "ema",
        device: str = "auto",
        controlnet: str | Path | None = None,
    ) -> TextToImage:
        """A run folder, or a shipped model's name ("shapes"); ``controlnet``: a `nanodiff
        train-controlnet` folder for its UNet."""
        cfg, denoiser, autoencoder, encoder = load_parts(folder, weights, device)
        if encoder is None:
            raise NanodiffError(f"{folder} is not a text-conditional run (its data.text_encoder is empty)")
        if controlnet is not None:
            from nanodiffusion.nets.controlnet import load_controlnet

            controlnet = load_controlnet(controlnet, denoiser.net)[0]
        return cls(cfg, denoiser, encoder, autoencoder, controlnet)

    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json and ema.safetensors (the weights in use), and the autoencoder if any."""
        from nanodiffusion.io.checkpoint import save_autoencoder, save_config, save_weights

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(self.denoiser.net, folder / EMA, 0)
        if self.autoencoder is not None:
            save_autoencoder(self.autoencoder, folder / "autoencoder")
        save_config(self.cfg, folder)
        return folder

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        n: int = 1,
        steps: int = 20,
        guidance: float = 4.0,
        negative_prompt: str = "",
        sampler: str = "dpm++2m",
        seed: int = 0,
        output: str = "pil",
        progress: bool = False,
        init_image: torch.Tensor | None = None,
        strength: float = 1.0,
        known: torch.Tensor | None = None,
        control: torch.Tensor | None = None,
        control_scale: float = 1.0,
        **editing,
    ):
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
        wrappers = []
        if control is not None:
            if self.controlnet is None:
                raise NanodiffError("a control image needs a ControlNet (from_pretrained's controlnet)")
            want = image_shape(self.cfg, self.autoencoder)[1:]
            if (
                control.ndim != 4
                or control.shape[1] != 1
                or tuple(control.shape[-2:]) != want
                or len(control) not in (1, len(cond))
            ):
                raise NanodiffError(
                    f"control images must be [1 or {len(cond)}, 1, {want[0]}, {want[1]}], "
                    f"got {list(control.shape)}"
                )
            wrappers.append(Control(self.controlnet, control, control_scale))
        images = draw(
            self.cfg,
            self.denoiser,
            len(cond),
            autoencoder=self.autoencoder,
            cond=cond,
            guidance=guidance,
            uncond=uncond,
            sampler=sampler,
            steps=steps,
            seed=seed,
            progress=progress,
            init_image=init_image,
            strength=strength,
            known=known,
            wrappers=wrappers,
            **editing,
        )
        if output == "tensor":
            return images
        return [to_pil(img[None], padding=0) for img in images]


class Cascade:
    """Cascaded generation (Ho et al. 2021): a base run draws small images (class, text or
    unconditional), an upscaling run (data.task "upscale") takes them to its size, its
    low-resolution input noised to the augmentation level ``aug`` first.

        pipe = Cascade.from_pretrained("runs/text32", "runs/upscale")  # or the shipped "shapes", "upscale"
        images = pipe(prompt="a red circle left of a blue square", n=4, aug=0.1)
    """

    def __init__(self, base: tuple, upscaler: tuple[Config, Denoiser]):  # compat: the keyword's name
        self.cfg, self.denoiser, self.autoencoder, self.encoder = base
        self.sr_cfg, self.sr_denoiser = upscaler  # compat
        sr_task = get_task(self.sr_cfg.data.task)
        if not hasattr(sr_task, "low_shape"):  # a task that takes low-resolution images
            raise NanodiffError(
                "the second stage of a cascade must be an upscaling run (data.task = 'upscale')"
            )
        have, want = image_shape(self.cfg, self.autoencoder), sr_task.low_shape(self.sr_cfg)
        if have != want:
            raise NanodiffError(
                f"the base run draws {'x'.join(map(str, have))} images, the upscaler takes "
                f"{'x'.join(map(str, want))}"
            )

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        upscaler: str | Path,  # compat
        weights: str = "ema",
        device: str = "auto",
    ) -> Cascade:
        """A base run's folder and a second stage's (a run that takes low-resolution images), or
        shipped models' names."""
        return cls(load_parts(base, weights, device), load_run(upscaler, weights, device))  # compat

    @torch.no_grad()
    def __call__(
        self,
        n: int = 1,
        prompt: str | list[str] | None = None,
        negative_prompt: str = "",
        class_label: int | None = None,
        guidance: float | None = None,
        steps: int = 20,
        sr_steps: int = 20,
        sampler: str = "dpm++2m",
        aug: float = 0.1,
        seed: int = 0,
        progress: bool = False,
        return_low: bool = False,
        consistent: bool = True,
    ):
        """n images [n, C, H, W] in [-1, 1] (and the base's [n, C, h, w] with return_low). A text
        run takes a prompt (or a list of n, one per image; guidance default 4), a class run a
        class_label (guidance default 4; None: the "no class" input), an unconditional run neither."""
        cond, w, uncond = conditioning(
            self.cfg, self.encoder, n, prompt, negative_prompt, class_label, guidance
        )
        low = draw(
            self.cfg,
            self.denoiser,
            n,
            autoencoder=self.autoencoder,
            cond=cond,
            guidance=w,
            uncond=uncond,
            sampler=sampler,
            steps=steps,
            seed=seed,
            progress=progress,
        )
        high = draw(
            self.sr_cfg,
            self.sr_denoiser,
            n,
            low_res=low,
            aug=aug,
            sampler=sampler,
            steps=sr_steps,
            seed=seed,
            progress=progress,
            consistent=consistent,
        )
        return (high, low) if return_low else high
