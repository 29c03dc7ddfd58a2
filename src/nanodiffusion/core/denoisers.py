"""Parameterisations: turn a raw network F into the denoiser D(x, sigma, cond) -> x0_hat.

All five are one formula with different coefficients (Karras et al. 2022, eq. 7):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

where x = x0 + sigma eps is in sigma (variance-exploding) form. For the VP-trained
targets c_in = 1 / sqrt(1 + sigma^2) = sqrt(alpha_bar), so F sees exactly the course's
x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps. The network's regression target is
then F_target = (x0 - c_skip x) / c_out, which is eps, v or x0 respectively.

    target  c_skip                 c_out                          c_in
    eps     1                      -sigma                         1/sqrt(1+s^2)
    v       1/(1+s^2)              -sigma/sqrt(1+s^2)             1/sqrt(1+s^2)
    x0      0                      1                              1/sqrt(1+s^2)
    edm     sd^2/(s^2+sd^2)        s sd/sqrt(s^2+sd^2)            1/sqrt(s^2+sd^2)
    flow    1/(1+s)                -s/(1+s)                       1/(1+s)

flow is rectified flow (Lipman et al. 2023; Liu et al. 2023): with t = s/(1+s) the network sees
x_t = c_in x = (1-t) x0 + t eps and predicts the velocity v = eps - x0, and x0 = x_t - t v.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nanodiffusion.core.schedules import Schedule, interpolate_t
from nanodiffusion.errors import NanodiffError

PARAMETERIZATIONS = ("eps", "v", "x0", "edm", "flow")


def expand_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] (or scalar) sigma -> [B, 1, 1, ...] broadcastable against x of any rank."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def coefficients(parameterization: str, sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in) for a parameterisation at noise level sigma (any shape)."""
    s2 = sigma**2
    if parameterization == "eps":
        return torch.ones_like(sigma), -sigma, (1 + s2).rsqrt()
    if parameterization == "v":
        return 1 / (1 + s2), -sigma * (1 + s2).rsqrt(), (1 + s2).rsqrt()
    if parameterization == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), (1 + s2).rsqrt()
    if parameterization == "edm":
        sd2 = sigma_data**2
        return sd2 / (s2 + sd2), sigma * sigma_data * (s2 + sd2).rsqrt(), (s2 + sd2).rsqrt()
    if parameterization == "flow":
        return 1 / (1 + sigma), -sigma / (1 + sigma), 1 / (1 + sigma)
    raise NanodiffError(
        f"unknown parameterization {parameterization!r}; choose one of {', '.join(PARAMETERIZATIONS)}"
    )


def convert(
    pred: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
    source: str,
    target: str,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """Re-express a network output for `source` as the output for `target` (exact, via x0)."""
    s = expand_sigma(sigma, x)
    c_skip, c_out, _ = coefficients(source, s, sigma_data)
    x0 = c_skip * x + c_out * pred
    c_skip, c_out, _ = coefficients(target, s, sigma_data)
    return (x0 - c_skip * x) / c_out


class Denoiser(nn.Module):
    """D(x, sigma, cond) -> x0_hat around a raw network ``net(x_in, c_noise, cond)``.

    c_noise is the trained step index t (fractional between table entries) for discrete
    schedules, 250 ln(sigma) for the continuous EDM schedule (EDM's ln(sigma) / 4, scaled by
    1000 into the range the sinusoidal embedding resolves), and 1000 t = 1000 sigma / (1 + sigma)
    for the flow schedule (SD3's timestep).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        parameterization: str = "eps",
        sigma_data: float = 0.5,
    ):
        super().__init__()
        coefficients(parameterization, torch.ones(1))  # validates the name
        self.net = net
        self.schedule = schedule
        self.parameterization = parameterization
        self.sigma_data = sigma_data
        if schedule.discrete:
            self.register_buffer("log_sigmas", schedule.sigmas().log().float(), persistent=False)

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.schedule.kind == "flow":
            return 1000 * sigma / (1 + sigma)
        if not self.schedule.discrete:
            return 250 * sigma.clamp(min=1e-12).log()
        return interpolate_t(self.log_sigmas, sigma)

    def raw(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None):
        """The network output F and the coefficients (c_skip, c_out), each broadcastable to x."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        s = expand_sigma(sigma, x)
        c_skip, c_out, c_in = coefficients(self.parameterization, s, self.sigma_data)
        F = self.net(c_in * x, self.c_noise(sigma), cond)
        return F, c_skip, c_out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        F, c_skip, c_out = self.raw(x, sigma, cond)
        return c_skip * x + c_out * F.to(x.dtype)

    def score(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The score-matching view: grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2."""
        return (self(x, sigma, cond) - x) / expand_sigma(sigma, x) ** 2

    def conditioned_on(self, image: torch.Tensor) -> Denoiser:
        """This denoiser with an image condition bound: its network sees [c_in x, image] stacked
        on the channel axis (a UNet with cond_channels = the image's channels). The image is not
        scaled by c_in: it is a clean input, as in SR3 and latent-diffusion inpainting."""
        return Denoiser(
            ImageConditioned(self.net, image), self.schedule, self.parameterization, self.sigma_data
        )


class ImageConditioned(nn.Module):
    """net(x, c_noise, cond) with an image condition [B or 1, C', ...] concatenated to x's
    channels; a batch that guidance doubled ([x, x]) gets the image twice."""

    def __init__(self, net: nn.Module, image: torch.Tensor):
        super().__init__()
        self.net, self.image = net, image

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        image = batch_rows(self.image, x, "an image condition")
        return self.net(torch.cat([x, image], dim=1), c_noise, cond)


def batch_rows(t: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """A per-image input `t` ([B or 1, ...]) on x's device and dtype with x's number of rows:
    repeated whole when guidance doubled the batch ([x, x]) or one row serves all."""
    t = t.to(x.device, x.dtype)
    if len(t) != len(x):
        if len(x) % len(t):
            raise NanodiffError(f"{what} of {len(t)} rows cannot serve a batch of {len(x)}")
        t = t.repeat(len(x) // len(t), *[1] * (t.ndim - 1))
    return t
