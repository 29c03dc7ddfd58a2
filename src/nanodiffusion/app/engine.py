"""What the web app does, without the web: the models a server offers, the settings a request
may carry (checked into one line each), and the jobs themselves (generate, edit, the forward
process, samplers side by side, a guidance sweep), each reporting every step's x_t and
denoised estimate x0_hat through a callback that can stop it within one step.

Everything here calls the library's own front doors (``pipelines.conditioning`` and ``draw``,
``StableDiffusion.__call__``), so the app's image for a set of settings is the library's image
for them, bit for bit.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from nanodiffusion.core.samplers import SAMPLERS, get_sampler
from nanodiffusion.data.files import decode_image
from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.viz import load_image, to_pil, to_uint8

# Request bounds: the page's sliders stay inside them, and a hand-made request past them is
# refused in one line (HTTP 400), never a server error.
MAX_STEPS = 200
MAX_N = 16
MAX_GUIDANCE = 30.0
MAX_PROMPT = 300  # characters; the text encoders keep 24 (shapes) or 77 (CLIP) tokens anyway
MAX_SEED = 2**63 - 1
MAX_UPLOAD_BYTES = 8 * 2**20  # an uploaded image, decoded from its data URL
MAX_UPLOAD_PIXELS = 4096 * 4096  # from the header, before decoding: decompression bombs stay unread
MODES = ("generate", "img2img", "inpaint", "control", "upscale")
METHODS = ("replace", "repaint", "model")
COMPARE = ("euler", "heun", "dpm++2m", "unipc", "ddim")  # samplers side by side (deterministic ones)
SWEEP = (1.0, 2.0, 4.0, 7.5)  # guidance scales of a sweep
SD_GUIDANCE = 7.5  # Stable Diffusion's usual scale, when a request gives none


class Cancelled(Exception):
    """Raised inside a sampler's step callback when the job's client cancelled or left."""


class TooLarge(NanodiffError):
    """A request or an upload past its size limit (HTTP 413, not 400)."""


# --- settings ------------------------------------------------------------------------------------
@dataclass
class Settings:
    """One request's settings: all that makes its images (with the uploaded images, if any)."""

    model: str = ""
    mode: str = "generate"
    prompt: str = ""
    negative_prompt: str = ""
    class_label: int | None = None
    sampler: str = "dpm++2m"
    steps: int = 20
    guidance: float | None = None  # None: the model's default (parse_settings writes it out)
    seed: int = 0
    n: int = 4
    strength: float = 0.6  # img2img
    method: str = "replace"  # inpaint
    control_scale: float = 1.0
    aug: float = 0.1  # upscale: the augmentation level of the low-resolution input

    def to_dict(self) -> dict:
        return asdict(self)

    def parameters(self) -> str:
        """The settings as AUTOMATIC1111's "parameters" text: prompt, negative, then key: value."""
        guidance = "default" if self.guidance is None else f"{self.guidance:g}"
        extra = f", Class: {self.class_label}" if self.class_label is not None else ""
        return (
            f"{self.prompt}\nNegative prompt: {self.negative_prompt}\n"
            f"Steps: {self.steps}, Sampler: {self.sampler}, CFG scale: {guidance}, Seed: {self.seed}, "
            f"Model: {self.model}, Mode: {self.mode}{extra}, Batch size: {self.n}"
        )


def shown(value) -> str:
    """A request's value for a message: as JSON writes it (true, "abc", NaN), cut to 40 characters."""
    return json.dumps(value, default=repr)[:40]


def model_of(body: dict, models: dict[str, Model]) -> Model:
    """The model a request names, among the server's own (a name, never a path), or one line."""
    name = body.get("model")
    if not isinstance(name, str) or name not in models:
        raise NanodiffError(f"model must be one of {', '.join(models)}, got {shown(name)}")
    return models[name]


def integer_setting(body: dict, key: str, low: int, high: int, default) -> int | None:
    value = body.get(key, default)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise NanodiffError(f"{key} must be an integer from {low} to {high}, got {shown(value)}")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise NanodiffError(f"{key} must be an integer from {low} to {high}, got {shown(value)}")
    return number


def number_setting(body: dict, key: str, low: float, high: float, default) -> float | None:
    value = body.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:  # NaN fails too
        raise NanodiffError(f"{key} must be a number from {low:g} to {high:g}, got {shown(value)}")
    return number


def _text(body: dict, key: str, limit: int = MAX_PROMPT) -> str:
    value = body.get(key) or ""
    if not isinstance(value, str):
        raise NanodiffError(f"{key} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise NanodiffError(f"{key} is {len(value)} characters; at most {limit}")
    return value


def _choice(body: dict, key: str, choices, default: str) -> str:
    value = body.get(key) or default
    if not isinstance(value, str) or value not in choices:
        raise NanodiffError(f"{key} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def parse_settings(body: dict, models: dict[str, Model]) -> Settings:
    """A request's settings, each checked against its bounds and the chosen model, or one line."""
    if not isinstance(body, dict):
        raise NanodiffError("the request must be a JSON object of settings")
    unknown = sorted(set(body) - {f.name for f in fields(Settings)} - set(UPLOADS))
    if unknown:
        raise NanodiffError(f"unknown setting {shown(unknown[0])}")
    entry = model_of(body, models)
    s = Settings(
        model=entry.name,
        mode=_choice(body, "mode", MODES, "generate"),
        prompt=_text(body, "prompt"),
        negative_prompt=_text(body, "negative_prompt"),
        class_label=integer_setting(body, "class_label", 0, max(len(entry.classes) - 1, 0), None),
        sampler=_choice(body, "sampler", tuple(SAMPLERS), "dpm++2m"),
        steps=integer_setting(body, "steps", 1, MAX_STEPS, 20),
        guidance=number_setting(body, "guidance", 0.0, MAX_GUIDANCE, None),
        seed=integer_setting(body, "seed", 0, MAX_SEED, 0),
        n=integer_setting(body, "n", 1, MAX_N, 4),
        strength=number_setting(body, "strength", 0.0, 1.0, 0.6),
        method=_choice(body, "method", METHODS, "replace"),
        control_scale=number_setting(body, "control_scale", 0.0, 4.0, 1.0),
        aug=number_setting(body, "aug", 0.0, 1.0, 0.1),
    )
    entry.check(s)
    if s.guidance is None:  # written out, so that the PNG's settings name the scale that drew it
        s.guidance = entry.default_guidance(s)
    return s


# --- uploads -------------------------------------------------------------------------------------
UPLOADS = ("image", "mask", "control")  # data URLs a request may carry beside its settings


def upload_bytes(data_url, what: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` upload, or one line saying why not."""
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise NanodiffError(f"the {what} must be sent as a data: URL (data:image/png;base64,...)")
    head, comma, payload = data_url.partition(",")
    if not comma or ";base64" not in head:
        raise NanodiffError(f"the {what} must be a base64 data: URL")
    if len(payload) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise TooLarge(f"the {what} is larger than the {MAX_UPLOAD_BYTES // 2**20} MB allowed")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        raise NanodiffError(f"the {what} is not valid base64") from None


def decode_upload(data_url, what: str, mode: str | None) -> Image.Image:
    """A data: URL upload as a PIL image in `mode`, or one line saying why not."""
    raw = upload_bytes(data_url, what)
    return decode_image(io.BytesIO(raw), f"upload ({what})", mode, MAX_UPLOAD_PIXELS)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_bytes(image: Image.Image, settings: Settings | None = None, index: int = 0) -> bytes:
    """A PNG; with settings, carrying them in text chunks: "parameters" as AUTOMATIC1111 writes
    them, and "nanodiffusion" as JSON (with the image's index in its batch) for restoring."""
    info = None
    if settings is not None:
        info = PngInfo()
        info.add_text("parameters", settings.parameters())
        info.add_text("nanodiffusion", json.dumps({**settings.to_dict(), "index": index}))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_settings(upload) -> dict:
    """The settings a nanodiffusion PNG (a data: URL, or bytes) carries in its "nanodiffusion"
    text chunk, or one line."""
    raw = upload if isinstance(upload, bytes) else upload_bytes(upload, "PNG")
    if not raw.startswith(PNG_SIGNATURE):
        raise NanodiffError("settings travel in a PNG's text chunks, and this file is not a PNG")
    image = decode_image(io.BytesIO(raw), "upload (PNG)", None, MAX_UPLOAD_PIXELS)
    text = getattr(image, "text", {}) or image.info
    if "nanodiffusion" not in text:
        raise NanodiffError("this PNG carries no nanodiffusion settings (no 'nanodiffusion' text chunk)")
    try:
        settings = json.loads(text["nanodiffusion"])
    except ValueError:
        raise NanodiffError("this PNG's nanodiffusion settings are not valid JSON") from None
    if not isinstance(settings, dict):
        raise NanodiffError("this PNG's nanodiffusion settings are not a JSON object")
    return settings


# --- models --------------------------------------------------------------------------------------
def run_folder(source: str) -> Path:
    """The folder of a run given by path or by a shipped model's name (an existing folder wins)."""
    from nanodiffusion.io.pretrained import resolve_run

    return resolve_run(source)


def class_names(cfg) -> list[str]:
    """A class run's class names: its built-in dataset's, else "class k"."""
    from nanodiffusion.data.datasets import builtin_class_names

    k = cfg.model.num_classes
    names = builtin_class_names(cfg.data.name)
    return names if names and len(names) == k else [f"class {i}" for i in range(k)]


@dataclass
class Model:
    """One model the server offers: a run folder (or a shipped model's name) or a Stable
    Diffusion folder, loaded on first use."""

    name: str
    source: str
    kind: str = "run"  # "run" | "sd"
    controlnet: str | None = None
    description: str = ""
    classes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    _parts: tuple | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, name: str, source: str, controlnet: str | None = None, description: str = "") -> Model:
        """A model, its config read now (a bad folder fails at start-up), its weights later."""
        path = Path(source)
        if (path / "model_index.json").is_file():  # a diffusers pipeline folder
            from nanodiffusion.inference.stable_diffusion import check_folder

            check_folder(path)
            m = cls(name, source, "sd", description=description or f"Stable Diffusion folder {path.name}")
            m.info = {"conditioning": "text", "size": None, "task": "generate", "latent": True}
            return m
        from nanodiffusion.io.checkpoint import load_config

        cfg = load_config(run_folder(source))
        from nanodiffusion.inference.audio import run_makes

        if run_makes(cfg) != "images":
            raise NanodiffError(f"{source} makes {run_makes(cfg)}: the app draws images")
        m = cls(name, source, "run", controlnet, description)
        m.classes = class_names(cfg)
        m.info = {
            "conditioning": "text" if cfg.data.text_encoder else "class" if m.classes else "none",
            "size": [cfg.data.image_size or cfg.model.image_size] * 2,
            "channels": 3 if cfg.data.autoencoder else cfg.model.in_channels,
            "task": cfg.data.task or "generate",
            "latent": bool(cfg.data.autoencoder),
            "network": cfg.model.kind,
            "schedule": cfg.schedule.kind,
            "control": controlnet is not None,
        }
        if cfg.data.task == "upscale":
            from nanodiffusion.tasks.upscale import low_size

            m.info["low_size"] = low_size(cfg)
        return m

    def describe(self) -> dict:
        head = {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "classes": self.classes,
        }
        return head | self.info

    def parts(self):
        """(cfg, denoiser, autoencoder, encoder, controlnet) of a run, or the StableDiffusion
        pipeline; loaded once, on first use."""
        with self._lock:
            if self._parts is None:
                if self.kind == "sd":
                    from nanodiffusion.inference.stable_diffusion import StableDiffusion

                    self._parts = (StableDiffusion.from_pretrained(self.source),)
                else:
                    from nanodiffusion.inference.runs import load_parts

                    cfg, denoiser, autoencoder, encoder = load_parts(self.source, device="cpu")
                    controlnet = None
                    if self.controlnet:
                        from nanodiffusion.nets.controlnet import load_controlnet

                        controlnet = load_controlnet(self.controlnet, denoiser.net)[0]
                    self._parts = (cfg, denoiser, autoencoder, encoder, controlnet)
            return self._parts

    def default_guidance(self, s: Settings) -> float:
        """The guidance scale the library draws `s` with when none is given: 7.5 for Stable
        Diffusion; for a run, pipelines.conditioning's 4 with a prompt or class, else 1."""
        if self.kind == "sd":
            return SD_GUIDANCE
        return 4.0 if s.prompt or s.class_label is not None else 1.0

    def check(self, s: Settings) -> None:
        """One line for settings this model cannot draw."""
        task, cond = self.info["task"], self.info["conditioning"]
        if s.prompt and cond != "text":
            raise NanodiffError(f"the model {self.name} draws without a prompt ({cond} conditioning)")
        if s.class_label is not None and cond != "class":
            raise NanodiffError(f"the model {self.name} has no classes")
        if task == "upscale" and s.mode != "upscale":
            raise NanodiffError(f"the model {self.name} is an upscaler: use the mode upscale, with an image")
        if s.mode == "upscale" and task != "upscale":
            raise NanodiffError(f"the mode upscale needs an upscaling model; {self.name} is not one")
        if task == "inpaint" and s.mode != "inpaint":
            raise NanodiffError(
                f"the model {self.name} is a mask-conditioned inpainter: use the mode inpaint"
            )
        if s.mode == "inpaint" and (s.method == "model") != (task == "inpaint"):
            raise NanodiffError(
                "the method 'model' is for a mask-conditioned inpainting model; others use replace or repaint"
            )
        if s.mode == "control" and not self.info.get("control"):
            raise NanodiffError(f"the model {self.name} was offered without a ControlNet")
        if self.kind == "sd" and s.mode not in ("generate", "img2img"):
            raise NanodiffError("Stable Diffusion folders generate and do img2img here")
        if s.guidance not in (None, 1.0) and cond == "none":
            raise NanodiffError(f"the model {self.name} is unconditional: guidance needs a class or prompt")


# --- previews ------------------------------------------------------------------------------------
class Reporter:
    """The sampler callback of one job: stops the job when ``cancelled()`` says so (within one
    step), and hands each step's x_t and x0_hat, as PNG data URLs, to ``emit``."""

    def __init__(self, emit: Callable[[dict], None], cancelled: Callable[[], bool], steps: int, decode=None):
        self.emit, self.cancelled, self.steps, self.decode = emit, cancelled, steps, decode
        self.label = ""

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled

    def __call__(self, d: dict) -> None:
        self.check()
        x, x0, sigma = d["x"], d["x0_hat"], float(d["sigma"])
        x_t = x / math.sqrt(1 + sigma**2)  # the VP picture of x = x0 + sigma eps
        if self.decode is not None:
            x_t, x0 = self.decode(x_t), self.decode(x0)
        self.emit(
            {
                "type": "step",
                "label": self.label,
                "i": int(d["i"]) + 1,
                "steps": self.steps,
                "sigma": sigma,
                "x": data_url(png_bytes(to_pil(x_t.float().clamp(-1, 1).cpu()))),
                "x0": data_url(png_bytes(to_pil(x0.float().clamp(-1, 1).cpu()))),
            }
        )
        self.check()


def prepare(entry: Model, s: Settings, uploads: dict) -> dict:
    """The uploads a mode needs, decoded and checked (before the job waits in line, so a bad one
    is refused at once): tensors at the model's size, keyed as ``generate`` takes them."""
    needs = {
        "img2img": ("image",),
        "inpaint": ("image", "mask"),
        "control": ("control",),
        "upscale": ("image",),
    }
    what = {"image": "an image", "mask": "a mask (white where to repaint)", "control": "an edge drawing"}
    for key in needs.get(s.mode, ()):
        if key not in uploads:
            raise NanodiffError(f"{s.mode} needs {what[key]}")
    extra = sorted(set(uploads) - set(needs.get(s.mode, ())))
    if extra:
        raise NanodiffError(f"the mode {s.mode} takes no {extra[0]}")
    if entry.kind == "sd":  # the pipeline resizes its init image itself
        return {"init_image": decode_upload(uploads["image"], "image", "RGB")} if "image" in uploads else {}
    c = entry.info["channels"]
    w, h = entry.info["size"]
    mode = "RGB" if c == 3 else "L"
    inputs: dict = {}
    if s.mode == "upscale":
        low = entry.info["low_size"]
        inputs["low_res"] = load_image(decode_upload(uploads["image"], "image", mode), (low, low), c)
    elif s.mode in ("img2img", "inpaint"):
        picture = decode_upload(uploads["image"], "image", mode)
        inputs["init_image"] = load_image(picture, (w, h), c)
        if s.mode == "inpaint":
            inputs["known"] = _mask_input(uploads["mask"], picture.size, (w, h))
    elif s.mode == "control":
        edges = load_image(decode_upload(uploads["control"], "edge drawing", "L"), (w, h), 1)
        inputs["control"] = (edges > 0).float()
    return inputs


def _mask_input(upload, image_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    from nanodiffusion.core.editing import mask_from_image

    mask = decode_upload(upload, "mask", "L")
    if mask.size != image_size:
        raise NanodiffError(
            f"the mask is {mask.size[0]}x{mask.size[1]} and the image "
            f"{image_size[0]}x{image_size[1]}; they must be the same size"
        )
    if mask.getextrema()[1] < 128:
        raise NanodiffError("the mask has no white pixels: nothing to repaint")
    known = mask_from_image(load_image(mask.resize(size, Image.Resampling.NEAREST), channels=1)[0])
    if known.all():
        raise NanodiffError("the mask has no white pixels left at the model's size")
    return known


def generate(entry: Model, s: Settings, inputs: dict, reporter: Reporter) -> torch.Tensor:
    """The images [n, C, H, W] in [-1, 1] of settings `s` (and the prepared ``inputs``), with the
    library's own calls, so that they equal ``nanodiff sample`` / ``TextToImage`` for the same
    settings."""
    reporter.steps = s.steps
    if entry.kind == "sd":
        (pipe,) = entry.parts()
        reporter.decode = pipe.decode  # previews decode x_t and x0_hat
        init = inputs.get("init_image")
        return pipe(
            s.prompt,
            negative_prompt=s.negative_prompt,
            n=s.n,
            steps=s.steps,
            guidance=entry.default_guidance(s) if s.guidance is None else s.guidance,
            sampler=s.sampler,
            seed=s.seed,
            init_image=init,
            strength=s.strength if init is not None else 1.0,
            output="tensor",
            callback=reporter,
        )
    from nanodiffusion.inference.pipelines import conditioning, draw
    from nanodiffusion.inference.sampling import Control

    cfg, denoiser, autoencoder, encoder, controlnet = entry.parts()
    reporter.decode = autoencoder.decode_images if autoencoder is not None else None
    options = dict(sampler=s.sampler, steps=s.steps, seed=s.seed, callback=reporter)
    if s.mode == "upscale":
        low_res = inputs["low_res"].expand(s.n, -1, -1, -1)
        return draw(cfg, denoiser, s.n, low_res=low_res, aug=s.aug, **options)
    cond, w_scale, uncond = conditioning(
        cfg, encoder, s.n, s.prompt or None, s.negative_prompt, s.class_label, s.guidance
    )
    if s.mode in ("img2img", "inpaint"):
        options["init_image"] = inputs["init_image"]
        if s.mode == "img2img":
            options["strength"] = s.strength
        else:
            options.update(known=inputs["known"], inpaint=s.method)
    if s.mode == "control":
        options["wrappers"] = [Control(controlnet, inputs["control"], s.control_scale)]
    return draw(
        cfg, denoiser, s.n, autoencoder=autoencoder, cond=cond, guidance=w_scale, uncond=uncond, **options
    )


def compare(entry: Model, s: Settings, inputs: dict, reporter: Reporter, emit) -> list[torch.Tensor]:
    """Samplers side by side from the same seed at the same number of network evaluations
    (s.steps is the NFE; each sampler gets the steps that spend it)."""
    variants = []
    for name in COMPARE:
        steps = max(1, get_sampler(name).steps_for_nfe(s.steps))
        variants.append((f"{name}, {steps} steps", {"sampler": name, "steps": steps}))
    return _rows(entry, s, variants, inputs, reporter, emit)


def sweep(entry: Model, s: Settings, inputs: dict, reporter: Reporter, emit) -> list[torch.Tensor]:
    """The same seed under guidance scales SWEEP."""
    if entry.info["conditioning"] == "none":
        raise NanodiffError(f"the model {entry.name} is unconditional: there is no guidance to sweep")
    variants = [(f"guidance {scale:g}", {"guidance": scale}) for scale in SWEEP]
    return _rows(entry, s, variants, inputs, reporter, emit)


def _rows(entry: Model, s: Settings, variants, inputs: dict, reporter: Reporter, emit) -> list[torch.Tensor]:
    """One row of images per (label, changed settings), each emitted as it is done."""
    rows = []
    for label, changes in variants:
        reporter.label = label
        rows.append(generate(entry, Settings(**{**s.to_dict(), **changes}), inputs, reporter))
        emit(row_event(label, rows[-1]))
    return rows


def row_event(label: str, images: torch.Tensor) -> dict:
    """One row of a comparison: its n images side by side in one PNG (a strip, not a grid)."""
    strip = to_pil(images, nrow=images.shape[0])  # one pixel between images
    return {"type": "row", "label": label, "images": [data_url(png_bytes(strip))]}


def finished(images: torch.Tensor, s: Settings) -> list[str]:
    """The final images as PNG data URLs, each at the model's own size and carrying its settings."""
    pixels = to_uint8(images)
    out = []
    for i, array in enumerate(pixels):
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        out.append(data_url(png_bytes(picture, s, i)))
    return out


# --- the forward process -------------------------------------------------------------------------
def schedule_curves(entry: Model, points: int = 101) -> dict:
    """alpha_bar(u) and log SNR(u) over the model's time u in [0, 1], for the page's plots."""
    schedule = _schedule(entry)
    u = torch.linspace(0, 1, points, dtype=torch.float64)
    alpha_bar = schedule.alpha_bar_at(u).clamp(1e-12, 1 - 1e-12)
    return {
        "u": u.tolist(),
        "alpha_bar": alpha_bar.tolist(),
        "log_snr": (alpha_bar / (1 - alpha_bar)).log().tolist(),
        "kind": schedule.kind,
    }


def _schedule(entry: Model):
    if entry.kind == "sd":
        return entry.parts()[0].denoiser.schedule
    return entry.parts()[0].schedule


def forward(entry: Model, upload, u: float, seed: int) -> dict:
    """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps at time u of the model's schedule (in
    its latent space for a latent run, shown decoded), with alpha_bar, SNR and sigma."""
    if entry.kind == "sd":
        raise NanodiffError("the forward-process view works on nanodiffusion runs")
    from nanodiffusion.inference.pipelines import image_shape

    cfg, _, autoencoder, _, _ = entry.parts()
    c, h, w = image_shape(cfg, autoencoder)
    x0 = load_image(decode_upload(upload, "image", "RGB" if c == 3 else "L"), (w, h), c)
    z0 = autoencoder.encode_images(x0) if autoencoder is not None else x0
    alpha_bar = float(_alpha_bar(cfg.schedule, u))
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = math.sqrt(alpha_bar) * z0 + math.sqrt(1 - alpha_bar) * eps
    picture = autoencoder.decode_images(x_t) if autoencoder is not None else x_t
    snr = alpha_bar / max(1 - alpha_bar, 1e-12)
    return {
        "image": data_url(png_bytes(to_pil(picture.clamp(-1, 1), padding=0))),
        "alpha_bar": alpha_bar,
        "snr": snr,
        "sigma": math.sqrt(1 / max(snr, 1e-24)),
        "u": u,
    }


def _alpha_bar(schedule, u: float) -> float:
    return float(schedule.alpha_bar_at(torch.tensor([u], dtype=torch.float64))[0].clamp(0, 1))
