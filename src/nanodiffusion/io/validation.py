"""The one validation pass of a run's Config: `validate(cfg)` before any network is built.

It checks every field's type and range (NaN and inf refused), the enums, the rules between fields
that the UNet, the schedules, the tasks and the trainer rely on, and that the model fits the
machine's memory. Every refusal is one NanodiffError line naming the key as ``section.key``, the
value and what is allowed. Callers: ``Config.from_dict`` (files, overrides, run folders),
``build_denoiser`` (every network a config describes) and the trainer (before loading data and
again on the config the data completed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nanodiffusion.data.datasets import MODALITIES
from nanodiffusion.data.files import physical_memory
from nanodiffusion.errors import NanodiffError

if TYPE_CHECKING:
    from nanodiffusion.nets.dit import DiTConfig
    from nanodiffusion.nets.unet import UNetConfig

Config = Any  # io.config's Config, not imported: io.config imports this module to check its values

MAX_T = 100_000  # discrete schedules build their table with a Python loop of T steps
MAX_SEED = 2**32 - 1
MAX_TOKENS = 512  # MiniLM's (and BERT's) position embeddings
MAX_SIGMA = 1e19  # sigma^2 overflows float32 (3.4e38) beyond this
SAMPLE_BATCH = 256  # sample_images' default batch: the grids draw at most this many images at once


# --- one field at a time --------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    if not (isinstance(v, float) or _is_int(v)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int too large for a float
        return False


def _int(lo: int, hi: int | None = None, none: bool = False) -> tuple[Callable[[Any], bool], str]:
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return (
        lambda v: (none and v is None) or (_is_int(v) and v >= lo and (hi is None or v <= hi)),
        text + (" or null" if none else ""),
    )


def _real(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    def ok(v: Any) -> bool:
        return _is_real(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    if lo == -math.inf:
        text = "a finite number"
    elif hi == math.inf:
        text = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        text = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return ok, text


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _ints(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (
        lambda v: isinstance(v, list) and all(_is_int(x) and x >= lo for x in v)
    ), f"a list of integers >= {lo}"


def _sizes(note: str = "") -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        values = v if isinstance(v, list) else [v]
        return 1 <= len(values) <= 3 and all(_is_int(x) and x >= 1 for x in values)

    return ok, "an integer >= 1 or a list of 1 to 3 of them" + (f" {note}" if note else "")


SIZE_KEYS = ("model.image_size", "model.patch_size")  # an int, or (a DiT's) a list of one per axis
POSITIVE, NON_NEGATIVE = _int(1), _int(0)
UNIT = _real(0, 1)  # a probability or a ratio
POSITIVE_REAL, NON_NEGATIVE_REAL = _real(0, lo_open=True), _real(0)
MULTIPLE_OF_8 = (lambda v: _is_int(v) and v > 0 and v % 8 == 0), "a positive multiple of 8"

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.name": ((lambda v: bool(v.strip())), "a dataset name, an image folder or a .npz file"),
    "data.image_size": _int(1, none=True),
    "data.frames": _int(2, none=True),
    "data.channels": ((lambda v: v in (None, 1, 3)), "1 (grey), 3 (RGB) or null (the data's own)"),
    "data.modality": (
        (lambda v: v in ("", *MODALITIES)),
        f"one of {', '.join(MODALITIES)} (filled in from the data)",
    ),
    "data.sample_rate": NON_NEGATIVE,
    "data.p_uncond": UNIT,
    "data.max_tokens": _int(1, MAX_TOKENS),
    "data.autoencoder_steps": POSITIVE,
    "data.autoencoder_channels": MULTIPLE_OF_8,
    "data.autoencoder_batch_size": POSITIVE,
    "data.low_res": NON_NEGATIVE,
    "data.noise_aug": NON_NEGATIVE_REAL,
    "data.residual_scale": NON_NEGATIVE_REAL,
    "data.crop": NON_NEGATIVE,
    "model.in_channels": POSITIVE,
    "model.out_channels": _int(1, none=True),  # null: in_channels
    "model.blocks_per_level": POSITIVE,
    "model.attn_resolutions": _ints(1),
    "model.dropout": _real(0, 1, hi_open=True),
    "model.num_classes": NON_NEGATIVE,
    "model.image_size": _sizes("(a UNet's: an integer)"),  # a DiT's: the size of each of 1 to 3 axes
    "model.patch_size": _sizes(),
    "model.width": POSITIVE,
    "model.depth": POSITIVE,
    "model.mlp_ratio": _real(0, 64, lo_open=True),
    "model.pos": ((lambda v: v in ("sincos", "learned")), "sincos or learned"),
    "model.attention": ((lambda v: v in ("joint", "factorised")), "joint or factorised"),
    "model.kind": ((lambda v: v in ("unet", "dit", "egnn")), "unet, dit or egnn"),
    "model.max_atoms": POSITIVE,
    "model.coords_range": POSITIVE_REAL,
    "model.rbf": NON_NEGATIVE,
    "model.normalization": NON_NEGATIVE_REAL,
    "data.property_bins": _int(2, 100),
    "data.property": (
        (lambda v: v in ("", "qed", "logp", "heavy_atoms")),
        "'', 'qed', 'logp' or 'heavy_atoms'",
    ),
    "model.context_dim": NON_NEGATIVE,
    "model.cond_channels": NON_NEGATIVE,
    "schedule.T": _int(1, MAX_T),
    "schedule.beta_start": _real(0, 1, lo_open=True, hi_open=True),
    "schedule.beta_end": _real(0, 1, lo_open=True, hi_open=True),
    "schedule.cosine_s": NON_NEGATIVE_REAL,
    "schedule.sigmoid_start": _real(),
    "schedule.sigmoid_end": _real(),
    "schedule.sigmoid_tau": POSITIVE_REAL,
    "schedule.sigma_min": POSITIVE_REAL,
    "schedule.sigma_max": _real(0, MAX_SIGMA, lo_open=True, hi_open=True),
    "schedule.rho": POSITIVE_REAL,
    "schedule.shift": _real(0, 100, lo_open=True),  # flow's resolution shift (SD3: 3)
    "diffusion.sigma_data": POSITIVE_REAL,
    "loss.min_snr_gamma": POSITIVE_REAL,
    "loss.p_mean": _real(),
    "loss.p_std": POSITIVE_REAL,
    "loss.mode_scale": _real(-1, 2 / (math.pi - 2)),  # f_mode is monotone in this range (SD3, eq. 20)
    "optim.lr": _real(0, 10, lo_open=True),  # AdamW moves each weight by about lr a step: above 10 is a typo
    "optim.weight_decay": NON_NEGATIVE_REAL,
    "optim.beta1": _real(0, 1, hi_open=True),  # AdamW refuses 1
    "optim.beta2": _real(0, 1, hi_open=True),
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.decay": ((lambda v: v in ("cosine", "constant")), "cosine or constant"),
    "optim.min_lr_ratio": UNIT,
    "optim.grad_clip": NON_NEGATIVE_REAL,  # 0: no clipping
    "optim.batch_size": POSITIVE,
    "optim.grad_accum": POSITIVE,
    "ema.power": POSITIVE_REAL,
    "ema.max_decay": UNIT,
    "run.steps": POSITIVE,
    "run.seed": _int(0, MAX_SEED),
    "run.log_every": POSITIVE,
    "run.sample_every": NON_NEGATIVE,  # 0: only at the end
    "run.checkpoint_every": NON_NEGATIVE,  # 0: only at the end
    "run.keep_checkpoints": NON_NEGATIVE,  # 0: keep them all
    "run.sample_n": POSITIVE,
    "run.sample_guidance": NON_NEGATIVE_REAL,
    "run.sample_steps": POSITIVE,
    "run.device": ((lambda v: v in ("auto", "cpu", "cuda")), "auto, cpu or cuda"),
}


# data.task -> the task: nanodiffusion.tasks fills this registry (tasks sit above io, so the
# registry lives here, where configs are checked, and tasks/ registers into it)
TASKS: dict[str, Any] = {}


def _enums() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """The enums whose choices live in their modules (imported here, when first needed)."""
    from nanodiffusion.core.denoisers import PARAMETERIZATIONS
    from nanodiffusion.core.losses import SIGMA_SAMPLINGS, WEIGHTINGS
    from nanodiffusion.core.samplers import SAMPLERS
    from nanodiffusion.core.schedules import KINDS

    return {
        "data.task": _one_of(*TASKS),
        "schedule.kind": _one_of(*KINDS),
        "diffusion.parameterization": _one_of(*PARAMETERIZATIONS),
        "loss.sigma_sampling": _one_of(*SIGMA_SAMPLINGS),
        "loss.weighting": _one_of(*WEIGHTINGS),
        "run.sampler": _one_of(*SAMPLERS),
    }


def check_type(key: str, value: Any, default: Any) -> None:
    """A value must have its default's type (an int may stand for a float); a key whose default
    is None (the data's own) takes None or any value, no other key takes None."""
    if default is None:
        return
    expected = float if isinstance(default, float) else type(default)
    ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
    ok = ok or (expected is float and _is_int(value)) or (key in SIZE_KEYS and isinstance(value, list))
    if isinstance(value, list) and ok:
        ok = all(_is_int(v) for v in value)
    if not ok:
        raise NanodiffError(
            f"config value {key} = {value!r} should be of type "
            f"{'list of int' if expected is list else expected.__name__}"
        )


def check_value(key: str, value: Any, default: Any) -> None:
    """One field's type and range (`key` is section.key; `default` its default value)."""
    check_type(key, value, default)
    rule = RULES.get(key) or _enums().get(key)
    if rule and not rule[0](value):
        raise NanodiffError(f"{key} must be {rule[1]}, got {value!r}")


def _fields(cfg: Config):
    """(section.key, value, default) of every field of cfg."""
    import dataclasses

    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        defaults = type(part)()
        for f in dataclasses.fields(part):
            yield f"{section.name}.{f.name}", getattr(part, f.name), getattr(defaults, f.name)


# --- the pass -------------------------------------------------------------------------------------
def validate(cfg: Config, *, prepared: bool = True, training: bool = False) -> Config:
    """Check cfg and return it; the first problem found raises a one-line NanodiffError.

    prepared=False skips the rules on what the data decides (the model's image size, channels and
    classes, filled in when training starts): a config from a file or from overrides; training=True
    adds the memory of training (gradients, EMA, AdamW's moments, one batch's activations)."""
    for key, value, default in _fields(cfg):
        check_value(key, value, default)
    _check_between_fields(cfg)
    check_model_memory(cfg, prepared=prepared, training=training)
    if prepared:
        _check_what_the_data_decides(cfg)
    return cfg


def _check_between_fields(cfg: Config) -> None:
    m, s, o, d = cfg.model, cfg.schedule, cfg.optim, cfg.data
    m.check()  # channels, channel_mults, head_dim, class- or text-conditional
    if d.class_conditional and d.text_encoder:
        raise NanodiffError(
            f"data.class_conditional = true and data.text_encoder = {d.text_encoder!r}: train on labels "
            "or on captions, not both"
        )
    if o.batch_size % o.grad_accum:
        raise NanodiffError(
            f"optim.batch_size must divide by optim.grad_accum ({o.grad_accum}), got {o.batch_size}"
        )
    beta_key, beta = max(
        ("schedule.beta_end", s.beta_end), ("schedule.beta_start", s.beta_start), key=lambda kv: kv[1]
    )
    if s.kind == "linear" and beta * 1000 / s.T >= 1:  # the linear schedule scales its betas by 1000 / T
        raise NanodiffError(
            f"{beta_key} must be below schedule.T / 1000 = {s.T / 1000:g} for the linear schedule "
            f"(it scales the betas by 1000 / T), got {beta:g}"
        )
    if s.kind == "sigmoid" and s.sigmoid_start >= s.sigmoid_end:
        raise NanodiffError(
            f"schedule.sigmoid_end must be above schedule.sigmoid_start ({s.sigmoid_start:g}), "
            f"got {s.sigmoid_end:g}"
        )
    if s.sigma_min >= s.sigma_max:
        raise NanodiffError(
            f"schedule.sigma_max must be above schedule.sigma_min ({s.sigma_min:g}), got {s.sigma_max:g}"
        )
    loss = cfg.loss
    if loss.sigma_sampling == "mode" and s.kind != "flow":
        raise NanodiffError(
            "loss.sigma_sampling = 'mode' samples flow times t: it needs schedule.kind = 'flow', "
            f"got {s.kind!r}"
        )
    if loss.sigma_sampling == "lognormal" and loss.p_mean + 6 * loss.p_std >= math.log(MAX_SIGMA):
        raise NanodiffError(
            f"loss.p_mean + 6 loss.p_std must be below {math.log(MAX_SIGMA):.1f} (ln of the sigma whose "
            f"square overflows float32), got {loss.p_mean + 6 * loss.p_std:g}"
        )
    if s.discrete and cfg.run.sample_steps > s.T:  # the grids pick that many trained steps
        raise NanodiffError(
            f"run.sample_steps must be at most schedule.T ({s.T}), got {cfg.run.sample_steps}"
        )


def feature_sizes(m: UNetConfig) -> list[int]:
    """The side of the UNet's feature maps at each level (the input padded as UNet.pad does)."""
    stride = 2 ** (len(m.channel_mults) - 1)
    padded = -(-m.image_size // stride) * stride
    return [padded >> level for level in range(len(m.channel_mults))]


def _check_what_the_data_decides(cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    if m.kind == "unet":
        _check_unet_levels(m)
    if d.class_conditional and not m.num_classes:
        raise NanodiffError("model.num_classes must be positive when data.class_conditional = true, got 0")
    if d.text_encoder and not m.context_dim:
        raise NanodiffError(
            f"model.context_dim must be positive when data.text_encoder = {d.text_encoder!r}, got 0"
        )
    if d.task == "upscale":
        size = m.image_size if isinstance(m.image_size, int) else 0
        low = d.low_res or size // 2
        if not (0 < low < size and size % low == 0):
            raise NanodiffError(
                f"data.low_res must divide model.image_size ({m.image_size}) and be smaller "
                f"(0: half of it), got {d.low_res}"
            )


def _check_unet_levels(m: UNetConfig) -> None:
    levels = len(m.channel_mults)
    if 2 ** (levels - 1) > m.image_size:
        most = m.image_size.bit_length()
        raise NanodiffError(
            f"model.channel_mults must have at most {most} levels for model.image_size = {m.image_size} "
            f"(each level halves it), got {m.channel_mults}"
        )
    sizes = feature_sizes(m)
    unreachable = [r for r in m.attn_resolutions if r not in sizes]
    if unreachable:
        raise NanodiffError(
            f"model.attn_resolutions must be feature-map sizes of this UNet ({', '.join(map(str, sizes))} "
            f"for model.image_size = {m.image_size}), got {m.attn_resolutions}"
        )


# --- memory ---------------------------------------------------------------------------------------
def unet_parameters(m: UNetConfig) -> dict[str, int]:
    """The number of parameters of UNet(m), exactly, in closed form (huge configs cost nothing):
    {"class embedding": ..., "text": ... (the prompt's projections), "total": ...}."""
    ch, emb, ctx, B = m.channels, 4 * m.channels, m.context_dim, m.blocks_per_level
    widths, sizes = [ch * k for k in m.channel_mults], feature_sizes(m)

    def res(cin: int, cout: int) -> int:  # ResBlock: two GroupNorms, two 3x3 convs, the scale/shift
        norms, convs = 2 * cin + 2 * cout, 9 * cin * cout + cout + 9 * cout * cout + cout
        return norms + convs + 2 * emb * cout + 2 * cout + (cin * cout + cout if cin != cout else 0)

    def attn(c: int) -> int:  # Attention (norm, qkv, proj), or a TransformerBlock of a text UNet
        self_attention = 2 * c + 3 * c * c + 3 * c + c * c + c
        if not ctx:
            return self_attention
        cross = 2 * c + c * c + c + 2 * ctx * c + 2 * c + c * c + c  # norm, q, kv from the tokens, proj
        feed_forward = 2 * c + 4 * c * c + 4 * c + 4 * c * c + c
        return self_attention + cross + feed_forward

    text = (ctx * emb + emb) if ctx else 0
    total = ch * emb + emb + emb * emb + emb + 9 * (m.in_channels + m.cond_channels) * ch + ch
    cur = ch
    for level, (w, s) in enumerate(zip(widths, sizes, strict=True)):
        has = int(s in m.attn_resolutions)
        total += res(cur, w) + (B - 1) * res(w, w) + B * has * attn(w)
        text += B * has * 2 * ctx * w
        cur = w
        if level < len(widths) - 1:
            total += 9 * w * w + w  # the downsampling conv
    total += 2 * res(cur, cur) + (attn(cur) if m.mid_attention else 0)
    text += 2 * ctx * cur if m.mid_attention else 0
    for level in reversed(range(len(widths))):
        w, has, below = (
            widths[level],
            int(sizes[level] in m.attn_resolutions),
            widths[level - 1] if level else ch,
        )
        total += res(cur + w, w) + (B - 1) * res(2 * w, w) + res(w + below, w) + (B + 1) * has * attn(w)
        text += (B + 1) * has * 2 * ctx * w
        cur = w
        if level:
            total += 9 * w * w + w  # the upsampling conv
    total += 2 * cur + 9 * cur * m.out_channels + m.out_channels
    classes = (m.num_classes + 1) * emb if m.num_classes else 0
    return {
        "class embedding": classes,
        "text": text,
        "total": total + classes + (ctx * emb + emb if ctx else 0),
    }


def activation_bytes(m: UNetConfig, size: int, batch: int) -> dict[str, int]:
    """A rough estimate (within a factor of about 2) of the float32 activations that training on
    `batch` images of side `size` keeps for the backward pass: {"total", "attention maps" (those
    at model.attn_resolutions), "middle attention map"}. A ResBlock keeps about its input and 7
    tensors of its output's width; an attention layer 6 of its width and its [heads, HW, HW]
    weights twice (CPU attention materialises them)."""
    B, last = m.blocks_per_level, len(m.channel_mults) - 1
    floats = maps = middle = 0
    for level, k in enumerate(m.channel_mults):
        w, side = m.channels * k, -(-size >> level)  # ceil(size / 2**level), cheap for any level
        pixels, heads = side * side, max(1, w // m.head_dim)
        blocks = 2 * B + 1 + 2 * (level == last)  # B down, B + 1 up (twice as wide in), 2 in the middle
        floats += blocks * 9 * w * pixels
        layers = (2 * B + 1) * (side in m.attn_resolutions)
        mid = int(level == last and m.mid_attention)
        floats += (layers + mid) * (6 + 10 * bool(m.context_dim)) * w * pixels
        maps += layers * 2 * heads * pixels * pixels
        middle += mid * 2 * heads * pixels * pixels
    return {
        "total": 4 * batch * (floats + maps + middle),
        "attention maps": 4 * batch * maps,
        "middle attention map": 4 * batch * middle,
    }


def dit_parameters(m: DiTConfig) -> dict[str, int]:
    """The number of parameters of DiT(m), exactly, in closed form: the same keys as unet_parameters."""
    D, ctx, hidden = m.width, m.context_dim, round(m.mlp_ratio * m.width)
    patch = math.prod(m.patch)
    linear = lambda cin, cout: cin * cout + cout  # noqa: E731
    block = linear(D, 3 * D) + linear(D, D) + linear(D, hidden) + linear(hidden, D) + linear(D, 6 * D)
    if m.attention == "factorised":  # a temporal attention and its adaLN shift, scale and gate
        block += linear(D, 3 * D) + linear(D, D) + 3 * D * D + 3 * D
    cross = linear(D, D) + linear(ctx, 2 * D) + linear(D, D) if ctx else 0
    total = linear(patch * (m.in_channels + m.cond_channels), D) + linear(256, D) + linear(D, D)
    total += math.prod(m.grid) * D if m.pos == "learned" else 0
    total += m.depth * (block + cross) + linear(D, 2 * D) + linear(D, patch * m.out_channels)
    classes = (m.num_classes + 1) * D if m.num_classes else 0
    text = linear(ctx, D) + m.depth * linear(ctx, 2 * D) if ctx else 0
    return {
        "class embedding": classes,
        "text": text,
        "total": total + classes + (linear(ctx, D) if ctx else 0),
    }


def dit_activation_bytes(m: DiTConfig, size: int | list[int], batch: int) -> dict[str, int]:
    """A rough estimate of the float32 activations a DiT keeps for the backward pass, in
    activation_bytes' form: per block and token about 12 tensors of the width and 2 of the MLP's,
    and each head's [N, N] attention weights twice (CPU attention materialises them); factorised
    attention keeps 6 more of the width and [S, S] per frame and [F, F] per place instead."""
    sizes = [size] * len(m.patch) if isinstance(size, int) else size
    tokens = math.prod(-(-s // p) for s, p in zip(sizes, m.patch, strict=False))
    heads, hidden = max(1, m.width // m.head_dim), round(m.mlp_ratio * m.width)
    factorised = m.attention == "factorised"
    extra = (6 * m.width if m.context_dim else 0) + (6 * m.width if factorised else 0)
    floats = m.depth * tokens * (12 * m.width + 2 * hidden + extra)
    frames = -(-sizes[0] // m.patch[0]) if factorised else 0
    scores = tokens // frames + frames if factorised else tokens  # keys per query
    maps = m.depth * 2 * heads * tokens * scores
    return {
        "total": 4 * batch * (floats + maps),
        "attention maps": 4 * batch * maps,
        "middle attention map": 0,
    }


def autoencoder_bytes(channels: int, size: int, batch: int) -> int:
    """A rough estimate of the float32 activations of training nets.autoencoder's default shape
    (widths channels x [1, 2, 2] at sides size, size / 2, size / 4, a block a level) on `batch`
    images: about 16 tensors of each level's width, encoder and decoder together, so
    16 x (1 + 2 / 4 + 2 / 16) = 26 of the first level's size."""
    return 4 * batch * 26 * channels * size * size


def _gb(n: int) -> str:
    if n >= 10**24:  # a number of digits no one reads (nor a float holds)
        return f"more than 10^{len(str(n // 10**9)) - 1} GB"
    return f"{n // 10**9:,} GB" if n >= 10 * 10**9 else f"{n / 1e9:.1f} GB"


def check_model_memory(cfg: Config, *, prepared: bool = True, training: bool = False) -> None:
    """Refuse a config whose model (and, training, its optimiser state and one batch's activations)
    needs more than the machine's physical memory, naming the key that makes it large and the
    number. Rough on purpose: it catches the orders of magnitude that crash (the presets need
    well under 1 GB); on a GPU the limit is its own memory, which this does not see."""
    memory = physical_memory()
    if not memory:
        return
    m, have = cfg.model, f"this machine has {_gb(memory)}"
    if m.kind == "egnn":
        _check_egnn_memory(cfg, memory, training)
        return
    dit = m.kind == "dit"
    params = dit_parameters(m) if dit else unet_parameters(m)
    if 4 * params["class embedding"] > memory:
        raise NanodiffError(
            f"model.num_classes = {m.num_classes} would need about {_gb(4 * params['class embedding'])} "
            f"for the class embedding alone; {have}"
        )
    if 4 * params["text"] > memory:
        raise NanodiffError(
            f"model.context_dim = {m.context_dim} would need about {_gb(4 * params['text'])} for the "
            f"prompt's projections alone; {have}"
        )
    copies = 5 if training else 1  # weights, and for training gradients, EMA and AdamW's two moments
    weights = 4 * copies * params["total"]
    if weights > memory:
        size_keys = (
            f"model.width = {m.width} (with model.depth = {m.depth}, model.mlp_ratio = {m.mlp_ratio:g})"
            if dit
            else f"model.channels = {m.channels} (with model.channel_mults = {m.channel_mults}, "
            f"model.blocks_per_level = {m.blocks_per_level})"
        )
        raise NanodiffError(
            f"{size_keys} would need about {_gb(weights)} for the "
            f"{params['total']:,} parameters{' with gradients, EMA and AdamW state' if training else ''}; "
            f"{have}"
        )
    # before the data completes the config, a pixel run's size is data.image_size's
    key, size = "model.image_size", m.image_size
    if not prepared and cfg.data.image_size and not cfg.data.autoencoder:
        key, size = "data.image_size", cfg.data.image_size
    sides = [size, size] if isinstance(size, int) else size  # a DiT's may have 1 to 3 axes
    if training:  # the grids hold run.sample_n images, their noise and a copy
        grid = weights + 3 * 4 * cfg.run.sample_n * m.in_channels * math.prod(sides)
        if grid > memory:
            raise NanodiffError(
                f"run.sample_n = {cfg.run.sample_n} would need about {_gb(grid)} for the sample grid "
                f"of {'x'.join(map(str, sides))} images; {have}"
            )
        d = cfg.data
        if d.autoencoder == "train":  # trained first, on pixels at data.image_size
            side = d.image_size or m.image_size
            ae = autoencoder_bytes(d.autoencoder_channels, side, d.autoencoder_batch_size)
            if ae > memory:
                raise NanodiffError(
                    f"data.autoencoder_batch_size = {d.autoencoder_batch_size} would need about {_gb(ae)} "
                    f"for the autoencoder's training on {side}x{side} images "
                    f"(data.autoencoder_channels = {d.autoencoder_channels}); {have}"
                )
        o = cfg.optim
        batch, what = o.batch_size // o.grad_accum, "the activations of one training batch"
        batch_key = "optim.batch_size / optim.grad_accum"
        if min(cfg.run.sample_n, SAMPLE_BATCH) > batch:  # the grids draw sample_n images (no gradients)
            batch, what, batch_key = min(cfg.run.sample_n, SAMPLE_BATCH), "the sample grid", "run.sample_n"
    else:
        batch, what, batch_key = 1, "the activations of one image", ""
    acts = dit_activation_bytes(m, size, batch) if dit else activation_bytes(m, size, batch)
    need = weights + acts["total"]
    if need > memory:
        # blame attention where the rest would fit, else the size (attention grows as its square)
        maps, middle = acts["attention maps"], acts["middle attention map"]
        if dit:
            key, value = ("model.patch_size", m.patch_size) if need - maps <= memory else (key, size)
        elif need - maps - middle <= memory:
            key, value = (
                ("model.attn_resolutions", m.attn_resolutions)
                if maps >= middle
                else ("model.mid_attention", "true")
            )
        else:
            value = size
        of = f" ({batch} images, {batch_key})" if batch_key else ""
        raise NanodiffError(
            f"{key} = {value} would need about {_gb(need)} for the model and {what}{of}; {have}"
        )


def _check_egnn_memory(cfg: Config, memory: int, training: bool) -> None:
    """An EGNN's weights (about 6 W^2 a layer) and its messages: ~8 tensors [B, N, N, W] a layer."""
    m, o = cfg.model, cfg.optim
    weights = 4 * (5 if training else 1) * (m.depth * 6 * m.width**2 + 4 * m.width**2)
    batch = o.batch_size // o.grad_accum if training else 1
    need = weights + 4 * 8 * m.depth * batch * m.max_atoms**2 * m.width
    if need > memory:
        raise NanodiffError(
            f"model.max_atoms = {m.max_atoms} with model.width = {m.width} and a batch of {batch} "
            f"would need about {_gb(need)}; this machine has {_gb(memory)}"
        )
