"""Noise schedules: maps between a step t, alpha_bar and sigma.

Every schedule here is described in two equivalent ways:

* variance-preserving (the course form): ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``
* variance-exploding (the sigma form):   ``x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps``

with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``. The engine works in the sigma form;
the discrete schedules (linear, cosine, sigmoid) keep their table of T trained noise
levels so that sampling happens exactly at the steps a model was trained on.

The flow (rectified-flow) path of Lipman et al. 2023 and Liu et al. 2023,
``x_t = (1 - t) x0 + t eps`` for t in [0, 1], is the same family in the sigma form:
``x_t / (1 - t) = x0 + sigma eps`` with ``sigma = t / (1 - t)`` (and ``t = sigma / (1 + sigma)``).
Its resolution shift t' = shift t / (1 + (shift - 1) t) (Esser et al. 2024, SD3) is, in sigma,
just ``sigma' = shift * sigma``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from nanodiffusion.errors import NanodiffError

KINDS = ("linear", "scaled_linear", "cosine", "sigmoid", "edm", "flow")
CONTINUOUS = ("edm", "flow")  # no table of trained steps
TIME_SPACINGS = ("leading", "trailing", "linspace")  # subsets of a discrete model's trained steps
SPACINGS = TIME_SPACINGS + ("karras", "exponential", "flow")  # flow: uniform in t, then shifted


def flow_t(sigma):
    """The flow time t = sigma / (1 + sigma) of a noise level (inf -> 1)."""
    return sigma / (1 + sigma)


def flow_sigma(t):
    """The noise level sigma = t / (1 - t) of a flow time t in [0, 1)."""
    return t / (1 - t)


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + sigma**2)


def _alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, dim=0)


def _betas_for_alpha_bar_fn(fn: Callable[[float], float], T: int, max_beta: float = 0.999):
    """Discretise a continuous alpha_bar(t), t in [0, 1], into T betas (Nichol & Dhariwal 2021, eq. 17)."""
    betas = [min(1 - fn((i + 1) / T) / fn(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02 at T = 1000, rescaled for other T."""
    scale = 1000 / T
    return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Latent/Stable Diffusion (Rombach et al. 2022): sqrt(beta) linear, i.e. betas on a parabola.

    Taken at face value for any T (no rescaling), as diffusers' ``scaled_linear`` does.
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2)."""
    return _betas_for_alpha_bar_fn(lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2, T)


def sigmoid_betas(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023, Algorithm 1), discretised like the cosine one."""

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)

    def alpha_bar(t: float) -> float:
        return max((v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start), 1e-12)

    return _betas_for_alpha_bar_fn(alpha_bar, T)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM (Karras et al. 2022, eq. 5): n noise levels from sigma_max down to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n noise levels uniform in log sigma (equal steps in DPM-Solver's lambda = -log sigma), then 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def interpolate_t(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Fractional index of sigma in an increasing table of log sigmas (linear in log sigma)."""
    log_sigma = sigma.clamp(min=1e-12).log().to(log_sigmas.dtype)
    idx = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
    return idx - 1 + ((log_sigma - lo) / (hi - lo)).clamp(0, 1)


@functools.lru_cache(maxsize=16)
def _betas_table(s: Schedule) -> torch.Tensor:
    """The betas of a discrete schedule, built once per schedule (training asks every step)."""
    if s.kind == "linear":
        return linear_betas(s.T, s.beta_start, s.beta_end)
    if s.kind == "scaled_linear":
        return scaled_linear_betas(s.T, s.beta_start, s.beta_end)
    if s.kind == "cosine":
        return cosine_betas(s.T, s.cosine_s)
    return sigmoid_betas(s.T, s.sigmoid_start, s.sigmoid_end, s.sigmoid_tau)


@dataclass(frozen=True)
class Schedule:
    """A noise schedule. Discrete kinds hold T trained levels; ``edm`` and ``flow`` are
    continuous in sigma (flow: between 0 and sigma_max, t = sigma_max / (1 + sigma_max) at the
    noisiest, scaled by ``shift``)."""

    kind: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    sigmoid_start: float = -3.0
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    shift: float = 1.0  # flow: sigma' = shift sigma, SD3's resolution shift (3.0 at 1024 px)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise NanodiffError(f"unknown schedule {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.T < 1:
            raise NanodiffError(f"schedule.T must be an integer >= 1, got {self.T}")

    @property
    def discrete(self) -> bool:
        return self.kind not in CONTINUOUS

    @property
    def vp(self) -> bool:
        """Whether the model sees variance-preserving inputs (all but EDM's VE form and flow)."""
        return self.kind not in CONTINUOUS

    def to_dict(self) -> dict:
        return asdict(self)

    # --- the discrete table -------------------------------------------------------
    def betas(self) -> torch.Tensor:
        if not self.discrete:
            raise NanodiffError(f"the {self.kind} schedule is continuous and has no betas")
        return _betas_table(self).clone()  # a copy: callers may modify it

    def alpha_bar(self) -> torch.Tensor:
        """alpha_bar_t for t = 0 .. T-1 (float64, decreasing)."""
        return _alpha_bar_from_betas(self.betas())

    def sigmas(self) -> torch.Tensor:
        """The T trained noise levels sigma_t for t = 0 .. T-1 (float64, increasing)."""
        return sigma_from_alpha_bar(self.alpha_bar())

    # --- continuous views, for plots and for training-time sampling ----------------
    def alpha_bar_at(self, u: torch.Tensor) -> torch.Tensor:
        """alpha_bar at continuous time u in [0, 1] (discrete kinds: step round(u * (T - 1)))."""
        u = u.to(torch.float64).clamp(0, 1)
        if self.discrete:
            return self.alpha_bar()[(u * (self.T - 1)).round().long()]
        if self.kind == "flow":  # uniform in t up to the noisiest level (sigma_max after the shift)
            return alpha_bar_from_sigma(self.shift * flow_sigma(u * flow_t(self.sigma_max / self.shift)))
        inv_min, inv_max = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return alpha_bar_from_sigma((inv_min + u * (inv_max - inv_min)) ** self.rho)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional step index of sigma, by interpolation in log sigma over the trained table."""
        return interpolate_t(self.sigmas().log().to(sigma.device), sigma.to(torch.float64)).to(sigma.dtype)

    # --- the forward process -------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Closed-form forward process, course form: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
        a = self.alpha_bar().to(x0.device)[t].to(x0.dtype)
        a = a.reshape(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    # --- sampling -------------------------------------------------------------------
    def prior_std(self, sigma: float) -> float:
        """Std of x at the first sampling level in sigma form: VP models start from N(0, I) in x_t."""
        if self.kind == "flow":  # x_t = (1 - t) x0 + t eps is pure noise at t = 1: x = (1 + sigma) eps
            return 1 + sigma
        return math.sqrt(1 + sigma**2) if self.vp else sigma

    def timesteps(self, steps: int, spacing: str = "leading") -> torch.Tensor:
        """Decreasing trained step indices for a `steps`-step sampler (spacings as in diffusers)."""
        if not self.discrete:
            raise NanodiffError(f"the {self.kind} schedule is continuous; use sampling_sigmas")
        if steps < 1:
            raise NanodiffError(f"steps must be positive, got {steps}")
        if steps > self.T:
            raise NanodiffError(f"steps ({steps}) cannot exceed the model's T ({self.T})")
        if spacing == "leading":  # 0, k, 2k, ...: DDIM's choice (and diffusers' default)
            ts = torch.arange(steps) * (self.T // steps)
        elif spacing == "trailing":  # ..., T-1-k, T-1: always starts at the noisiest level
            ts = torch.arange(self.T, 0, -self.T / steps).round().long() - 1
        elif spacing == "linspace":
            ts = torch.linspace(0, self.T - 1, steps).round().long()
        else:
            raise NanodiffError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        return ts.sort(descending=True).values

    def default_spacing(self) -> str:
        """trailing for discrete models (always starts at the noisiest trained level; Lin et al.
        2024 show leading's late start hurts), Karras for EDM."""
        return "trailing" if self.discrete else "flow" if self.kind == "flow" else "karras"

    def sampling_sigmas(self, steps: int, spacing: str | None = None) -> torch.Tensor:
        """steps + 1 strictly decreasing noise levels ending exactly at 0 (float64).

        leading / trailing / linspace pick `steps` of a discrete model's own trained levels
        (as diffusers' timestep spacings do); karras (rho) and exponential (log-uniform) span
        [sigma_min, sigma_max], for discrete models the ends of the trained table.
        """
        spacing = spacing or self.default_spacing()
        if spacing not in SPACINGS:
            raise NanodiffError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        if steps < 1:
            raise NanodiffError(f"steps must be positive, got {steps}")
        if spacing in TIME_SPACINGS:
            if not self.discrete:
                raise NanodiffError(
                    f"spacing {spacing!r} picks trained steps, and the {self.kind} schedule "
                    "is continuous; use karras, exponential or flow"
                )
            sig = self.sigmas()[self.timesteps(steps, spacing)]
            return torch.cat([sig, sig.new_zeros(1)])
        if self.discrete:
            table = self.sigmas()
            lo, hi = float(table[0]), float(table[-1])
        else:
            lo, hi = self.sigma_min, self.sigma_max
        if spacing == "flow":  # t uniform from the noisiest level to 0, then shifted (diffusers' flow Euler)
            t = torch.linspace(flow_t(hi / self.shift), 0, steps + 1, dtype=torch.float64)
            return self.shift * flow_sigma(t)
        if steps == 1:
            return torch.tensor([hi, 0.0], dtype=torch.float64)
        if spacing == "karras":
            return karras_sigmas(steps, lo, hi, self.rho)
        return exponential_sigmas(steps, lo, hi)
