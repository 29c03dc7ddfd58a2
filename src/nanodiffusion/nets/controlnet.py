"""ControlNet (Zhang, Rao & Agrawala 2023): steer a trained, frozen UNet with a control image.

A trainable copy of the base UNet's encoder and middle block (initialised from the base's own
weights) reads the noisy input, the noise level and the prompt like the base does, plus the
control image, which a small hint encoder brings to the network's resolution (a latent run's
8x8 from a 32x32 edge map) and adds after the copy's first convolution. Every activation the
copy's encoder hands to a skip connection, and its middle block's output, pass through a 1x1
convolution initialised to zero ("zero convolution") and are added to the frozen base's skips
and middle output. At the zeros the controlled model is the base model exactly; training moves
only the copy, the hint encoder and the zero convolutions.

Controls here are edge maps: Sobel gradient magnitude (of every colour channel, the largest)
thresholded, white edges on black as ControlNet's Canny maps. `edge_f1` scores how well an
image's edges follow a control's, with a pixel of tolerance.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nanodiffusion.core.denoisers import Denoiser, batch_rows
from nanodiffusion.errors import NanodiffError
from nanodiffusion.nets.unet import UNet

CONTROL_JSON, CONTROL_WEIGHTS = "controlnet.json", "controlnet.safetensors"


class HintEncoder(nn.Module):
    """Control image [B, c, H, W] -> features [B, width, H / factor, W / factor]: convolutions with
    a stride-2 one per factor of 2, the last initialised to zero (ControlNet's input hint block)."""

    def __init__(self, control_channels: int, width: int, factor: int):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise NanodiffError(
                f"the control image must be a power-of-2 multiple of the network's size, "
                f"got a factor {factor}"
            )
        layers, ch = [nn.Conv2d(control_channels, 16, 3, padding=1), nn.SiLU()], 16
        for _ in range(int(math.log2(factor))):
            layers += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.SiLU()]
            ch *= 2
        layers.append(nn.Conv2d(ch, width, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        return self.net(control)


def _zero_conv(ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(ch, ch, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def check_base(base: nn.Module) -> None:
    """One line for a base network a ControlNet cannot copy."""
    if not isinstance(base, UNet):
        kind = getattr(getattr(base, "cfg", None), "kind", type(base).__name__)
        raise NanodiffError(
            f"ControlNet works on UNet runs only; this run's model.kind is {kind!r} (a DiT's "
            "ControlNet, as in PixArt-delta, copies its first blocks: not built here)"
        )


class ControlNet(nn.Module):
    """The trainable copy: controlnet(x, c_noise, cond, control) -> (skip residuals, middle residual)."""

    def __init__(self, base: UNet, control_channels: int = 1, factor: int = 1):
        super().__init__()
        check_base(base)
        if base.cfg.cond_channels:
            raise NanodiffError("a ControlNet needs a base UNet without an image condition")
        self.copy = copy.deepcopy(base)  # the decoder goes: only the encoder and middle are used
        del self.copy.up, self.copy.norm_out, self.copy.conv_out
        self.copy.requires_grad_(True)
        self.hint = HintEncoder(control_channels, base.cfg.channels, factor)
        self.zero = nn.ModuleList(_zero_conv(w) for w in base.skip_widths())
        self.zero_mid = _zero_conv(base.skip_widths()[-1])
        self.control_channels, self.factor = control_channels, factor

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond, control: torch.Tensor):
        x = self.copy.pad(x)
        emb, context = self.copy.embed(x, c_noise, cond)
        hint = self.hint(control.to(x.dtype))
        hint = F.pad(hint, (0, x.shape[-1] - hint.shape[-1], 0, x.shape[-2] - hint.shape[-2]))
        h, hs = self.copy.encode(x, emb, context, hint)
        return [z(a) for z, a in zip(self.zero, hs, strict=True)], self.zero_mid(h)


class Controlled(nn.Module):
    """net(x, c_noise, cond) of the base UNet steered by a ControlNet and its control image
    ([1 or B, c, H, W]; a batch that guidance doubled gets it twice), residuals times `scale`."""

    def __init__(self, base: UNet, controlnet: ControlNet, control: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.base, self.controlnet, self.control, self.scale = base, controlnet, control, scale
        self.cfg = base.cfg

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
        control = batch_rows(self.control, x, "a control image")
        skips, mid = self.controlnet(x, c_noise, cond, control)
        if self.scale != 1:
            skips, mid = [self.scale * s for s in skips], self.scale * mid
        return self.base(x, c_noise, cond, residuals=(skips, mid))


def controlled(denoiser, controlnet: ControlNet, control: torch.Tensor, scale: float = 1.0):
    """The denoiser with its UNet steered by `controlnet` towards `control` (a new Denoiser)."""
    return Denoiser(
        Controlled(denoiser.net, controlnet, control, scale),
        denoiser.schedule,
        denoiser.parameterization,
        denoiser.sigma_data,
    )


def save_controlnet(controlnet: ControlNet, folder: str | Path, about: dict) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in controlnet.state_dict().items()},
        str(folder / CONTROL_WEIGHTS),
    )
    info = {"control_channels": controlnet.control_channels, "factor": controlnet.factor, **about}
    (folder / CONTROL_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def load_controlnet(folder: str | Path, base: UNet) -> tuple[ControlNet, dict]:
    """(the ControlNet saved in `folder`, its description) for the base UNet it was trained on."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONTROL_JSON).is_file() or not (folder / CONTROL_WEIGHTS).is_file():
        raise NanodiffError(f"no ControlNet in {folder} (train_controlnet writes one)")
    info = json.loads((folder / CONTROL_JSON).read_text())
    controlnet = ControlNet(base, info["control_channels"], info["factor"])
    try:
        controlnet.load_state_dict(load_file(str(folder / CONTROL_WEIGHTS)))
    except RuntimeError as e:
        raise NanodiffError(
            f"the ControlNet in {folder} does not fit this run's UNet: {str(e).splitlines()[0]}"
        ) from None
    return controlnet.to(next(base.parameters()).device).eval(), info


def control_factor(cfg, control_size: int) -> int:
    """How many control pixels make one network pixel (4 for a latent run's 8x8 from 32x32)."""
    if control_size % cfg.model.image_size:
        raise NanodiffError(
            f"a {control_size}-pixel control does not fit a {cfg.model.image_size}-pixel network"
        )
    return control_size // cfg.model.image_size
