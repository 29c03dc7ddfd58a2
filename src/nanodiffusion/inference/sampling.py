"""The sampling core: a denoiser, small wrappers composed around it, and one function that draws
n samples batch by batch from a seed.

Every option of a draw is a small object instead of a keyword of one long function:

* ``ImageCondition(image)``: the network sees an image beside x (an upscaling run's
  low-resolution input, a mask-conditioned network's masked image and mask);
* ``Control(controlnet, image, scale)``: the UNet steered by a ControlNet (nets.controlnet);
* ``Guidance(scale, uncond)``: classifier-free guidance towards ``cond`` (core.guidance);
* ``Edit(init, strength, known, method)``: img2img (SDEdit) and inpainting (core.editing), which
  change where sampling starts and hold the known region.

A wrapper maps (denoiser, rows) to the denoiser of the batch that holds those rows of the n
samples (per-sample inputs are [1 or n, ...]: one row serves all). ``sample`` applies the
wrappers in the order given, innermost first: conditions that bind to the network, then
guidance, which doubles the batch around them. One name per concept: ``cond`` is what the
network is conditioned on through its embedding (class labels or text embeddings), ``init``
the image to start from, ``known`` the mask (1 = keep), ``image`` an image condition.

The n noise tensors are the rows of one ``torch.randn(n, *shape)`` from
``torch.Generator().manual_seed(seed)``, drawn a batch at a time (``NoiseRows``), so the same
seed gives the same samples whatever the batch size, without holding all n noises at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nanodiffusion.core import editing
from nanodiffusion.core.guidance import ClassifierFreeGuidance, class_guidance
from nanodiffusion.core.samplers import CountingDenoiser, get_sampler
from nanodiffusion.data.files import check_memory
from nanodiffusion.errors import NanodiffError
from nanodiffusion.nets.controlnet import controlled

Wrapper = Callable[[nn.Module, slice], nn.Module]  # (denoiser, rows) -> the batch's denoiser


def take_rows(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """A batch's rows of a per-sample tensor, or the one row that all samples share."""
    return t if len(t) == 1 else t[rows]


@dataclass
class ImageCondition:
    """An image [1 or n, C', *spatial] the network sees beside x (Denoiser.conditioned_on)."""

    image: torch.Tensor

    def __call__(self, denoiser, rows: slice):
        return denoiser.conditioned_on(take_rows(self.image, rows).to(_device(denoiser)))


@dataclass
class Control:
    """The UNet steered towards a control image [1 or n, c, H, W] by a ControlNet, its residuals
    times ``scale`` (Zhang et al. 2023; nanodiffusion.nets.controlnet)."""

    controlnet: nn.Module
    image: torch.Tensor
    scale: float = 1.0

    def __call__(self, denoiser, rows: slice):
        return controlled(denoiser, self.controlnet, take_rows(self.image, rows), self.scale)


@dataclass
class Guidance:
    """Classifier-free guidance of scale w towards cond, away from ``uncond``, the "no condition"
    input (Ho & Salimans 2022; core.guidance). ``Guidance.of`` fills in a class run's uncond."""

    scale: float
    uncond: torch.Tensor

    @classmethod
    def of(cls, denoiser, scale: float, uncond: torch.Tensor | None = None) -> Guidance:
        """Guidance for `denoiser`; uncond None: nanodiffusion's class UNet's reserved index."""
        if uncond is None:
            uncond = class_guidance(denoiser, scale, getattr(_net_cfg(denoiser), "num_classes", 0)).uncond
        return cls(scale, uncond)

    def __call__(self, denoiser, rows: slice):
        return ClassifierFreeGuidance(denoiser, self.scale, self.uncond)


@dataclass
class Edit:
    """img2img and inpainting from ``init`` ([1 or n, *shape], in the model's space): ``strength``
    < 1 starts from init noised to the strength's level (SDEdit); ``known`` ([1 or n, 1 or C,
    *spatial], 1 = keep) holds the known region by ``method``, "replace" or "repaint" (with
    RePaint's ``jump`` and ``resample``), or "model" for a network that sees the masked image
    (bind it with ``masked_model``), and pastes it at the end (nanodiffusion.core.editing)."""

    init: torch.Tensor
    strength: float = 1.0
    known: torch.Tensor | None = None
    method: str = "replace"
    jump: int = 5
    resample: int = 5

    def __post_init__(self):
        editing.check_strength(self.strength)

    def check(self, n: int, shape: tuple[int, ...]) -> None:
        init = self.init
        if init.ndim != len(shape) + 1 or tuple(init.shape[1:]) != tuple(shape) or len(init) not in (1, n):
            raise NanodiffError(
                f"init images must be [1 or {n}, {', '.join(map(str, shape))}], got {list(init.shape)}"
            )
        if self.known is not None and len(self.known) not in (1, n):
            raise NanodiffError(f"give one mask or one per image ({n}), got {len(self.known)}")

    def __call__(
        self,
        sample_fn: Callable,
        denoiser,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        cond,
        rows: slice,
        **options,
    ) -> torch.Tensor:
        """One batch of the edit from its standard normal ``noise`` (core.editing.edit)."""
        x0 = take_rows(self.init, rows).to(noise.device)
        known = None if self.known is None else take_rows(self.known, rows).to(noise.device)
        return editing.edit(
            sample_fn,
            denoiser,
            noise,
            x0,
            sigmas,
            cond,
            strength=self.strength,
            known=known,
            method=self.method,
            jump=self.jump,
            resample=self.resample,
            **options,
        )


def masked_model(
    init: torch.Tensor, known: torch.Tensor, n: int, shape: tuple[int, ...], strength: float = 1.0
) -> tuple[ImageCondition, Edit]:
    """The editing method "model" for n samples: a network trained on masked images sees
    ``masked_input(init, known)`` beside x (known made one channel: kept where every channel is);
    sampling then pastes the known region."""
    mask = known.amin(1, keepdim=True).expand(n, 1, *shape[1:]).to(init.dtype)
    image = editing.masked_input(init.expand(n, *shape), mask)
    return ImageCondition(image), Edit(init, strength, mask, "model")


@torch.no_grad()
def sample(
    denoiser: nn.Module,
    n: int,
    shape: tuple[int, ...],
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    cond: torch.Tensor | None = None,
    wrappers: Sequence[Wrapper] = (),
    edit: Edit | None = None,
    *,
    spacing: str | None = None,
    batch_size: int = 256,
    clamp: bool = True,
    stats: dict | None = None,
    callback: Callable | None = None,
    progress: bool = False,
    **sampler_kwargs,
) -> torch.Tensor:
    """n samples [n, *shape] of `denoiser` wrapped by `wrappers` (innermost first), conditioned
    on ``cond`` ([n, ...] or None), from plain noise or by ``edit``; clamped to [-1, 1] unless
    ``clamp`` is False. ``spacing`` None takes the schedule's default; ``stats``, if a dict,
    receives "nfe" (network evaluations per batch, counted) and "sigmas"."""
    check_draw(n, batch_size, sampler)
    check_memory(n * math.prod(shape) * 4, f"{n} samples of shape {list(shape)}")  # all held at the end
    sample_fn = get_sampler(sampler).fn
    if edit is not None:
        edit.check(n, shape)
    schedule = denoiser.schedule
    sigmas = schedule.sampling_sigmas(steps, spacing)
    device = _device(denoiser)
    noise = NoiseRows(seed, n, shape)
    generator = advance(torch.Generator().manual_seed(seed), noise.left)  # the samplers' draws follow
    prior_std = schedule.prior_std(float(sigmas[0]))
    counted, out = CountingDenoiser(denoiser), []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        counted.denoiser = denoiser
        for wrap in wrappers:
            counted.denoiser = wrap(counted.denoiser, rows)
        c = None if cond is None else cond[rows].to(device)
        z = noise.take(min(batch_size, n - start)).to(device)
        options = dict(generator=generator, callback=callback, progress=progress, **sampler_kwargs)
        if edit is None:
            x = sample_fn(counted, z * prior_std, sigmas, c, **options)
        else:
            x = edit(sample_fn, counted, z, sigmas, c, rows, prior_std=prior_std, **options)
        out.append((x.clamp(-1, 1) if clamp else x).cpu())
    if stats is not None:
        stats.update(nfe=counted.calls // len(out), sigmas=sigmas)
    return torch.cat(out)


NOISE_CHUNK = 2**20  # values drawn at a time when a generator is only advanced (a multiple of 16)


class NoiseRows:
    """The rows of ``torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))``,
    handed out a few at a time and equal to them bit for bit.

    Torch's CPU normal fill turns uniforms into normals in blocks of 16 values, and redraws the
    last 16 of a size that is not a multiple of 16; so draws whose sizes are multiples of 16,
    then one draw of all that is left (at least 16 values, or the whole when n * numel < 16),
    give the values of the one big draw."""

    def __init__(self, seed: int, n: int, shape: Sequence[int]):
        self.generator = torch.Generator().manual_seed(seed)
        self.shape, self.row = tuple(shape), math.prod(shape)
        self.left = n * self.row  # values not yet drawn
        self.buffer = torch.empty(0)  # drawn, not yet handed out

    def take(self, rows: int) -> torch.Tensor:
        """The next `rows` rows, [rows, *shape]."""
        need = rows * self.row
        if len(self.buffer) < need:
            size = next_draw(need - len(self.buffer), self.left)
            self.left -= size
            self.buffer = torch.cat([self.buffer, torch.randn(size, generator=self.generator)])
        rows_out, self.buffer = self.buffer[:need], self.buffer[need:]
        return rows_out.view(rows, *self.shape)


def next_draw(want: int, left: int) -> int:
    """How many values to draw next to get at least `want` of the `left` still to come while
    keeping the draws equal to one big one: a multiple of 16, or all that is left when that
    would leave fewer than 16."""
    size = -(-max(want, 16) // 16) * 16
    return left if left - size < 16 else size


def advance(generator: torch.Generator, count: int) -> torch.Generator:
    """generator as after ``torch.randn(count, generator=generator)``, in bounded memory."""
    while count > 0:
        size = next_draw(min(count, NOISE_CHUNK), count)
        torch.randn(size, generator=generator)
        count -= size
    return generator


def check_draw(n: int, batch_size: int, sampler: str) -> None:
    """One line for a number of samples, a batch size or a sampler name that cannot draw."""
    if n < 1:
        raise NanodiffError(f"the number of samples must be positive, got {n}")
    if batch_size < 1:
        raise NanodiffError(f"batch size must be positive, got {batch_size}")
    get_sampler(sampler)


@torch.no_grad()
def sample_images(
    denoiser: nn.Module,
    n: int,
    shape: tuple[int, ...],
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    class_labels: torch.Tensor | None = None,
    spacing: str | None = None,
    batch_size: int = 256,
    callback: Callable | None = None,
    progress: bool = False,
    stats: dict | None = None,
    guidance: float = 1.0,
    uncond: torch.Tensor | None = None,
    clamp: bool = True,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    known: torch.Tensor | None = None,
    inpaint: str = "replace",  # compat
    jump: int = 5,
    resample: int = 5,
    image_cond: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    wrappers: Sequence[Wrapper] = (),
    **sampler_kwargs,
) -> torch.Tensor:
    """n samples [n, *shape], clamped to the data range [-1, 1] (clamp=False for an
    autoencoder's latents, which are not bounded). Same seed, n and batch_size: the same samples.
    The keyword front door of ``sample``: it builds the wrappers and the edit from keywords.

    ``cond`` (old name ``class_labels``, which also carried text embeddings) is what the network is
    conditioned on; ``guidance`` w != 1 applies classifier-free guidance towards it (one batched
    forward pass over conditional and unconditional inputs per evaluation); ``uncond`` is the
    "no condition" input, by default nanodiffusion's UNet's reserved class index.

    Editing (``nanodiffusion.core.editing``), with any sampler: ``init`` ([n or 1, *shape], in the
    model's space) with ``strength`` < 1 is img2img (SDEdit); with ``known`` (1 = keep, 0 =
    generate; [n or 1, 1 or C, *spatial]) it is inpainting by the method ``inpaint``, "replace"
    or "repaint" (RePaint's ``jump`` and ``resample``), or "model" for a run trained with
    data.task "inpaint", whose network sees the masked image and the mask. The noise is drawn as
    for plain sampling, so strength 1 without a mask gives plain sampling's images.
    ``image_cond`` ([1 or n, C', *spatial]) is the image condition of a network trained with one
    (an upscaling run's low-resolution input, ``nanodiffusion.tasks.upscale.condition``).
    ``wrappers`` (e.g. a ``Control``) are applied inside the image condition's guidance.

    ``spacing`` None takes the schedule's default (trailing, or Karras for EDM). If ``stats``
    is a dict, it receives "nfe": the network evaluations per batch, counted, and "sigmas".
    """
    method = inpaint  # compat: the editing method's keyword
    cond = class_labels if cond is None else cond
    check_draw(n, batch_size, sampler)
    editing.check_strength(strength)
    if (strength < 1 or known is not None) and init is None:
        raise NanodiffError("img2img (strength < 1) and a mask (known) need init images")
    plan = None if init is None else Edit(init, strength, known, method, jump, resample)
    if plan is not None:
        plan.check(n, shape)
    takes_image = getattr(_net_cfg(denoiser), "cond_channels", 0) > 0
    masked = takes_image and image_cond is None  # a mask-conditioned network: the method "model"
    if image_cond is not None and (not takes_image or len(image_cond) not in (1, n)):
        raise NanodiffError("an image condition needs a network trained with one, one row or one per sample")
    if masked and (known is None or method != "model"):
        raise NanodiffError(
            "this run is a mask-conditioned inpainting model: give init images and a "
            "mask, with the method 'model'"
        )
    if method == "model" and known is not None and not masked:
        raise NanodiffError(
            "the method 'model' needs a run trained for inpainting (data.task = "
            "'inpaint'); any run can use 'replace' or 'repaint'"
        )
    if guidance != 1 and cond is None:
        raise NanodiffError("guidance needs class labels to guide towards")
    inner = [] if image_cond is None else [ImageCondition(image_cond)]
    if masked:
        image, plan = masked_model(init, known, n, shape, strength)
        inner = [image]
    outer = [] if guidance == 1 else [Guidance.of(denoiser, guidance, uncond)]
    return sample(
        denoiser,
        n,
        shape,
        sampler,
        steps,
        seed,
        cond,
        [*inner, *wrappers, *outer],
        plan,
        spacing=spacing,
        batch_size=batch_size,
        clamp=clamp,
        stats=stats,
        callback=callback,
        progress=progress,
        **sampler_kwargs,
    )


def _net_cfg(denoiser):
    """The network's config (a UNetConfig), if the denoiser has one."""
    return getattr(getattr(denoiser, "net", None), "cfg", None)


def _device(denoiser) -> torch.device:
    return next(denoiser.parameters()).device
