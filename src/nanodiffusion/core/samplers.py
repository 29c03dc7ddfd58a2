"""Samplers: pure functions over a denoiser D(x, sigma, cond) -> x0_hat and a noise-level sequence.

Each takes x at sigmas[0] in sigma form (x = x0 + sigma eps), walks a strictly decreasing
sequence of noise levels, and returns x at its last level: the sample when the sequence ends
at 0 (as every schedule's does), a partial run otherwise (RePaint's jumps in
``nanodiffusion.core.editing``). No integer timesteps, no hidden state: ``sigmas`` is a tensor you
can print.

Two views of the same thing run through this file:

* the denoiser view: the probability-flow ODE (Song et al. 2021; Karras et al. 2022, eq. 4)
  in sigma form is ``dx/dsigma = (x - D(x, sigma)) / sigma``;
* the score view: ``score(x, sigma) = grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2``,
  so the same ODE is ``dx/dsigma = -sigma score(x, sigma)``, and the reverse-time SDE is
  ``dx = -2 sigma score dsigma + sqrt(2 sigma) dw`` (``sample_sde`` and ``sample_pf_ode``).

Every sampler has the signature
    fn(denoiser, x, sigmas, cond=None, *, generator=None, callback=None, progress=False, **options)
Stochastic ones draw their noise on the CPU from ``generator`` (so a seed gives the same
images on every device). A callback, if given, is called once per step with a dict:
i, x, sigma, sigma_next, x0_hat. ``SAMPLERS[name].nfe(steps)`` is the number of network
evaluations a run of ``steps`` steps costs; ``CountingDenoiser`` measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from nanodiffusion.errors import NanodiffError

Callback = Callable[[dict], None]


def check_sigmas(sigmas: torch.Tensor) -> list[float]:
    """Validate a sampling sequence: strictly decreasing, ending at 0 or above (a partial run)."""
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        raise NanodiffError("a sampling sequence needs at least two noise levels")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise NanodiffError(f"sampling sigmas must strictly decrease, got {values[:4]}...")
    if values[-1] < 0 or not math.isfinite(values[0]):
        raise NanodiffError(
            f"sampling sigmas must be finite and end at 0 or above, got {values[0]} ... {values[-1]}"
        )
    return values


def _steps(sigmas: torch.Tensor, progress: bool) -> Iterator[tuple[int, float, float]]:
    """(i, sigma, sigma_next) over a validated sequence, with an optional progress bar."""
    levels = check_sigmas(sigmas)
    for i in tqdm(range(len(levels) - 1), disable=not progress, desc="sampling", leave=False):
        yield i, levels[i], levels[i + 1]


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like x, drawn on the CPU so the seed means the same on every device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


class _Model:
    """Calls D at a float sigma and reports each step to the callback."""

    def __init__(self, denoiser: Callable, x: torch.Tensor, cond: Any, callback: Callback | None):
        self.denoiser, self.cond, self.callback = denoiser, cond, callback
        self.ones = x.new_ones(x.shape[0])

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.denoiser(x, sigma * self.ones, self.cond)

    def report(self, i: int, x: torch.Tensor, sigma: float, sigma_next: float, x0_hat: torch.Tensor):
        if self.callback is not None:
            self.callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x0_hat})


# --- DDPM and DDIM ----------------------------------------------------------------------------
@torch.no_grad()
def sample_ddim(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in sigma form.

    With eps_hat = (x - x0_hat) / sigma, the step to sigma_next is
        x <- x0_hat + sqrt(sigma_next^2 - sigma_up^2) eps_hat + sigma_up z,
        sigma_up = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2),
    the paper's sigma_t(eta) divided by sqrt(alpha_bar_next). eta = 0 is deterministic and
    is exactly Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma;
    eta = 1 is the DDPM posterior (ancestral sampling).
    """
    if not 0 <= eta <= 1:
        raise NanodiffError(f"eta must be in [0, 1], got {eta}")
    model = _Model(denoiser, x, cond, callback)
    for i, sigma, sigma_next in _steps(sigmas, progress):
        x0_hat = model(x, sigma)
        model.report(i, x, sigma, sigma_next, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        eps_hat = (x - x0_hat) / sigma
        sigma_up = eta * sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x0_hat + sigma_down * eps_hat
        if sigma_up > 0:
            x = x + sigma_up * noise_like(x, generator)
    return x


def sample_ddpm(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance.

    Over the model's own T steps this is the paper's sampler; over a subsequence it is the
    respaced sampler of Nichol & Dhariwal (2021): the posterior q(x_s | x_t, x0_hat) between
    consecutive levels, which is DDIM with eta = 1.
    """
    return sample_ddim(
        denoiser, x, sigmas, cond, eta=1.0, generator=generator, callback=callback, progress=progress
    )


# --- EDM: Euler, Heun, and the stochastic sampler ---------------------------------------------
@torch.no_grad()
def sample_euler(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, first order).

    d_i = (x_i - D(x_i; sigma_i)) / sigma_i,    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i
    """
    return sample_heun(denoiser, x, sigmas, cond, callback=callback, progress=progress, order=1)


@torch.no_grad()
def sample_heun(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    order: int = 2,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1), with Algorithm 2's churn.

    Per step, with gamma_i = min(S_churn / N, sqrt(2) - 1) when S_tmin <= sigma_i <= S_tmax:
        sigma_hat = (1 + gamma_i) sigma_i
        x_hat     = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z          (add noise: churn)
        d_i       = (x_hat - D(x_hat; sigma_hat)) / sigma_hat                (Euler step)
        x_{i+1}   = x_hat + (sigma_{i+1} - sigma_hat) d_i
        d'_i      = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}        (2nd-order correction,
        x_{i+1}   = x_hat + (sigma_{i+1} - sigma_hat) (d_i + d'_i) / 2        skipped at sigma = 0)
    S_churn = 0 is the deterministic Heun sampler; order = 1 drops the correction (Euler).
    NFE = 2 N - 1 for N steps.
    """
    if order not in (1, 2):
        raise NanodiffError(f"Heun's order must be 1 or 2, got {order}")
    if s_churn < 0 or s_noise < 0:
        raise NanodiffError(f"s_churn and s_noise must be non-negative, got {s_churn}, {s_noise}")
    model = _Model(denoiser, x, cond, callback)
    n = len(sigmas) - 1
    for i, sigma, sigma_next in _steps(sigmas, progress):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise_like(x, generator)
        x0_hat = model(x, sigma_hat)
        model.report(i, x, sigma_hat, sigma_next, x0_hat)
        d = (x - x0_hat) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if order == 2 and sigma_next > 0:
            d_next = (x_next - model(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x


def sample_edm(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    s_churn: float = 40.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.003,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2). Defaults: the paper's
    ImageNet-64 settings (Table 5), a starting point; tune S_churn per model."""
    return sample_heun(
        denoiser,
        x,
        sigmas,
        cond,
        generator=generator,
        callback=callback,
        progress=progress,
        s_churn=s_churn,
        s_tmin=s_tmin,
        s_tmax=s_tmax,
        s_noise=s_noise,
    )


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler-ancestral (k-diffusion; Karras et al. 2022 discuss it as ancestral sampling).

    Split the move to sigma_next into a deterministic part down to sigma_down and fresh noise
    of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2:
        sigma_up   = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))
        x          = x + (sigma_down - sigma) d + sigma_up S_noise z,   d = (x - D(x; sigma)) / sigma
    At eta = 1 this is the DDPM posterior step (the same sigma_up), so it equals ``ddpm``.
    """
    if eta < 0:
        raise NanodiffError(f"eta must be non-negative, got {eta}")
    model = _Model(denoiser, x, cond, callback)
    for i, sigma, sigma_next in _steps(sigmas, progress):
        x0_hat = model(x, sigma)
        model.report(i, x, sigma, sigma_next, x0_hat)
        sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x + (sigma_down - sigma) * (x - x0_hat) / sigma
        if sigma_up > 0:
            x = x + sigma_up * s_noise * noise_like(x, generator)
    return x


# --- the score-SDE view -----------------------------------------------------------------------
def score_from(denoiser: Callable, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None):
    """score(x, sigma) = grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2 (Tweedie's formula)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (denoiser(x, sigma, cond) - x) / s**2


@torch.no_grad()
def sample_pf_ode(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The probability-flow ODE written through the score (Song et al. 2021, eq. 13).

    For x = x0 + sigma(t) eps, the ODE dx = -1/2 d[sigma^2]/dt score dt is, in sigma,
        dx/dsigma = -sigma score(x, sigma);
    this is Euler's method on it. The score view gives exactly ``euler`` (the tests check it).
    The last step, to sigma = 0 where the score is undefined, returns Tweedie's estimate
    x + sigma^2 score = D(x, sigma), which is what the Euler step gives too.
    """
    ones = x.new_ones(x.shape[0])
    for i, sigma, sigma_next in _steps(sigmas, progress):
        score = score_from(denoiser, x, sigma * ones, cond)
        if callback is not None:
            callback(
                {"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x + sigma**2 * score}
            )
        x = x + (sigma_next - sigma) * (-sigma * score)
    return x


@torch.no_grad()
def sample_sde(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The reverse-time SDE with Euler-Maruyama (Song et al. 2021, eq. 6 and Appendix E).

    For the variance-exploding SDE dx = sqrt(d[sigma^2]/dt) dw, the reverse process is
        dx = -d[sigma^2] score(x, sigma) + sqrt(d[sigma^2]) dw_bar   (run backwards in sigma^2);
    one Euler-Maruyama step from sigma to sigma_next (Delta = sigma^2 - sigma_next^2) is
        x <- x + Delta score(x, sigma) + sqrt(Delta) z.
    The last step, to sigma = 0, returns the denoised mean D(x, sigma) without fresh noise
    (Song et al.'s "denoising at the last step"; otherwise sigma_last z would remain).
    """
    ones = x.new_ones(x.shape[0])
    for i, sigma, sigma_next in _steps(sigmas, progress):
        score = score_from(denoiser, x, sigma * ones, cond)
        if callback is not None:
            callback(
                {"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "x0_hat": x + sigma**2 * score}
            )
        if sigma_next == 0:
            x = x + sigma**2 * score
            continue
        delta = sigma**2 - sigma_next**2
        x = x + delta * score + math.sqrt(delta) * noise_like(x, generator)
    return x


# --- DPM-Solver++ -----------------------------------------------------------------------------
@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2M), the multistep second-order data-prediction solver (Lu et al. 2022,
    Algorithm 2), in sigma form where alpha_t = 1 and lambda_t = -log sigma_t.

    With h_i = lambda_{i+1} - lambda_i, r_i = h_{i-1} / h_i and x0_i = D(x_i; sigma_i):
        D_i     = x0_i + (x0_i - x0_{i-1}) / (2 r_i)                   (x0_i on the first step)
        x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-(1 + eta) h}) D_i
                  + sigma_{i+1} sqrt(1 - e^{-2 eta h}) S_noise z
    eta = 0 is the ODE solver, x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h} - 1) D_i;
    eta = 1 is SDE-DPM-Solver++(2M) (its 'midpoint' form, as in diffusers). The last step,
    to sigma = 0 (h infinite), is first order and returns x0_i.
    """
    if eta < 0:
        raise NanodiffError(f"eta must be non-negative, got {eta}")
    model = _Model(denoiser, x, cond, callback)
    prev = None  # (x0_hat, h) of the previous step
    for i, sigma, sigma_next in _steps(sigmas, progress):
        x0_hat = model(x, sigma)
        model.report(i, x, sigma, sigma_next, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        h = math.log(sigma / sigma_next)
        d = x0_hat if prev is None else x0_hat + (x0_hat - prev[0]) / (2 * prev[1] / h)
        x = (sigma_next / sigma) * math.exp(-eta * h) * x - math.expm1(-(1 + eta) * h) * d
        if eta > 0:
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise * noise_like(x, generator)
        prev = (x0_hat, h)
    return x


def sample_dpmpp_2m_sde(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022): ``sample_dpmpp_2m`` with eta = 1."""
    return sample_dpmpp_2m(
        denoiser,
        x,
        sigmas,
        cond,
        generator=generator,
        callback=callback,
        progress=progress,
        eta=1.0,
        s_noise=s_noise,
    )


# --- UniPC ------------------------------------------------------------------------------------
def _unipc_coefficients(rks: list[float], h: float, variant: str):
    """The predictor/corrector weights of UniPC (Zhao et al. 2023, Algorithm 1 and eq. 9-10).

    For the data-prediction form with hh = -h: phi_1 = e^{hh} - 1 and phi_{k+1} = phi_k / hh - 1/k!
    (scaled to h phi_k); B(h) = hh (bh1) or e^{hh} - 1 (bh2); the order-p system is
    R rho = b with R_{ik} = r_k^(i-1) and b_i = h phi_{i+1}(hh) i! / B(h).
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial, b = 1, []
    for i in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.tensor(rks, dtype=torch.float64)
    R = torch.stack([r ** (i - 1) for i in range(1, len(rks) + 1)])
    return h_phi_1, b_h, R, torch.tensor(b, dtype=torch.float64)


@torch.no_grad()
def sample_unipc(
    denoiser: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023): the UniP-p multistep predictor and the UniC corrector, in
    the data-prediction form, sigma form (alpha = 1, lambda = -log sigma).

    Per step from sigma_i (h = lambda_{i+1} - lambda_i, r_k = (lambda_{i-k} - lambda_i) / h,
    D_k = (x0_{i-k} - x0_i) / r_k, hh = -h, B(h) from ``variant``):
        predictor  x_{i+1} = (sigma_{i+1}/sigma_i) x_i - (e^{hh} - 1) x0_i - B(h) sum_k rho^p_k D_k
    After the model is evaluated at x_{i+1} (which the next step needs anyway), the corrector
    redoes the step with that new evaluation as one more difference, for free:
        corrector  x_{i+1} = ... - B(h) (sum_k rho^c_k D_k + rho^c_last (x0_{i+1} - x0_i))
    The model output at the uncorrected point is kept (UniPC's trick: no extra NFE). The order
    drops to what the history allows at the start and near the end (as diffusers does).
    """
    if order not in (1, 2, 3):
        raise NanodiffError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise NanodiffError(f"UniPC variant must be bh1 or bh2, got {variant!r}")
    model = _Model(denoiser, x, cond, callback)
    levels = check_sigmas(sigmas)
    n = len(levels) - 1
    lambdas = [-math.log(s) if s > 0 else math.inf for s in levels]
    outputs: list[torch.Tensor] = []  # x0_hat at each visited level, oldest first
    last = None  # (x_i, order used) of the previous predictor step, for the corrector
    for i, sigma, sigma_next in _steps(sigmas, progress):
        x0_hat = model(x, sigma)
        model.report(i, x, sigma, sigma_next, x0_hat)
        if corrector and last is not None:
            x = _unic(last[0], x0_hat, outputs, lambdas, i, last[1], variant)
        outputs.append(x0_hat)
        p = min(order, n - i, len(outputs))
        last = (x, p)
        x = _unip(x, outputs, lambdas, i, p, variant)
        outputs = outputs[-order:]
    return x


def _history(outputs, lambdas, i, p, h, newest):
    """r_k and D_k for k = 1 .. p-1, from the outputs before `newest` (the step's x0_i)."""
    m0 = outputs[newest]
    rks, ds = [], []
    for k in range(1, p):
        rk = (lambdas[i - k] - lambdas[i]) / h
        rks.append(rk)
        ds.append((outputs[newest - k] - m0) / rk)
    return rks, ds


def _unip(x, outputs, lambdas, i, p, variant):
    sigma_ratio = math.exp(lambdas[i] - lambdas[i + 1])  # sigma_{i+1} / sigma_i (0 at the end)
    h = lambdas[i + 1] - lambdas[i]
    m0 = outputs[-1]
    if math.isinf(h):  # to sigma = 0: the first-order step returns x0_i
        return m0
    rks, ds = _history(outputs, lambdas, i, p, h, -1)
    h_phi_1, b_h, R, b = _unipc_coefficients(rks + [1.0], h, variant)
    x_next = sigma_ratio * x - h_phi_1 * m0
    if ds:
        rhos = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_next = x_next - b_h * sum(rho * d for rho, d in zip(rhos, ds, strict=True))
    return x_next


def _unic(x, model_t, outputs, lambdas, i, p, variant):
    """Correct the step from level i-1 to i, given x at i-1 and the new output model_t at i."""
    j = i - 1
    h = lambdas[i] - lambdas[j]
    m0 = outputs[-1]
    rks, ds = _history(outputs, lambdas, j, p, h, -1)
    h_phi_1, b_h, R, b = _unipc_coefficients(rks + [1.0], h, variant)
    rhos = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
    res = sum((rho * d for rho, d in zip(rhos[:-1], ds, strict=True)), torch.zeros_like(x))
    return math.exp(lambdas[j] - lambdas[i]) * x - h_phi_1 * m0 - b_h * (res + rhos[-1] * (model_t - m0))


# --- the registry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerInfo:
    """A sampler by name: its function, whether it draws noise, and what a step costs."""

    name: str
    fn: Callable
    stochastic: bool
    evals_per_step: int = 1  # 2 for Heun-type: the last step (to sigma = 0) needs only one
    summary: str = ""

    def nfe(self, steps: int) -> int:
        """Network evaluations for `steps` steps (sequences end at 0)."""
        return steps if self.evals_per_step == 1 else 2 * steps - 1

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose cost fits in `nfe` evaluations (at least one)."""
        return max(1, nfe if self.evals_per_step == 1 else (nfe + 1) // 2)


def _info(name, fn, stochastic, evals=1):
    return SamplerInfo(name, fn, stochastic, evals, (fn.__doc__ or "").strip().splitlines()[0])


SAMPLERS: dict[str, SamplerInfo] = {
    s.name: s
    for s in [
        _info("ddpm", sample_ddpm, True),
        _info("ddim", sample_ddim, False),
        _info("euler", sample_euler, False),
        _info("heun", sample_heun, False, evals=2),
        _info("edm", sample_edm, True, evals=2),
        _info("euler-a", sample_euler_ancestral, True),
        _info("dpm++2m", sample_dpmpp_2m, False),
        _info("dpm++2m-sde", sample_dpmpp_2m_sde, True),
        _info("unipc", sample_unipc, False),
        _info("pf-ode", sample_pf_ode, False),
        _info("sde", sample_sde, True),
    ]
}


# other spellings users bring from diffusers and k-diffusion
ALIASES = {
    "dpmpp-2m": "dpm++2m",
    "dpmpp_2m": "dpm++2m",
    "dpmpp-2m-sde": "dpm++2m-sde",
    "dpmpp_2m_sde": "dpm++2m-sde",
    "euler_a": "euler-a",
    "euler-ancestral": "euler-a",
}


def get_sampler(name: str) -> SamplerInfo:
    name = ALIASES.get(name, name)
    if name not in SAMPLERS:
        raise NanodiffError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


class CountingDenoiser:
    """Wraps a denoiser and counts its calls: the measured NFE of a sampler run."""

    def __init__(self, denoiser: Callable):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.denoiser(x, sigma, cond)
