"""Gaussian mixtures: data whose ideal denoiser is known in closed form.

For x0 ~ sum_k pi_k N(mu_k, diag(v_k)) and x = x0 + sigma eps, the noisy density is again a
mixture, p(x; sigma) = sum_k pi_k N(x; mu_k, diag(v_k + sigma^2)), and by Bayes' rule within
each component (the Gaussian conditioning formula; e.g. Bishop 2006, eq. 2.116) the ideal
denoiser is

    D(x, sigma) = E[x0 | x] = sum_k r_k(x) (mu_k + v_k / (v_k + sigma^2) (x - mu_k)),

with responsibilities r_k(x) = pi_k N_k(x) / p(x; sigma), computed with a logsumexp. The score
is grad_x log p(x; sigma) = (D - x) / sigma^2 (Tweedie's formula; Efron 2011), which for a
mixture is sum_k r_k (mu_k - x) / (v_k + sigma^2) and stays finite at sigma = 0.

So a sampler's error can be measured without training: ``metrics.sampler_error`` uses these with the
sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015) below.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """sum_k pi_k N(mu_k, diag(v_k)): weights [K], means [K, d], variances [K, d] (or [K] / scalar)."""

    def __init__(self, weights, means, variances, dtype: torch.dtype = torch.float64):
        self.means = torch.as_tensor(means, dtype=dtype)
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {tuple(self.means.shape)}")
        k, d = self.means.shape
        var = torch.as_tensor(variances, dtype=dtype)
        var = var.reshape(k, 1) if var.ndim == 1 else var
        self.variances = var.expand(k, d).clone()
        w = torch.as_tensor(weights, dtype=dtype).reshape(k)
        if (w <= 0).any() or (self.variances <= 0).any():
            raise ValueError("weights and variances must be positive")
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def shifted(self, offset: float) -> GaussianMixture:
        """The same mixture moved by `offset` along every axis (a known-wrong distribution)."""
        return GaussianMixture(self.weights, self.means + offset, self.variances, self.means.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples [n, d]: a component by its weight, then its Gaussian."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.variances[k].sqrt() * z

    # --- the noisy mixture p(x; sigma) -----------------------------------------------------------
    def _prepare(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, ...] as flat [B, d] in the mixture's dtype, and sigma^2 as [1] (one shared level,
        what samplers pass) or [B] (a level per row)."""
        flat = x.reshape(x.shape[0], -1).to(self.means.dtype)
        s2 = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).reshape(-1) ** 2
        if s2.numel() > 1 and bool((s2 == s2[0]).all()):
            s2 = s2[:1]
        return flat, s2

    def _log_joint(self, flat: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(x; mu_k, diag(v_k + sigma^2)) [B, K].

        At a shared level the Mahalanobis term is expanded into matrix products,
        sum_d x^2 / var - 2 x . (mu / var) + sum_d mu^2 / var, so no [B, K, d] tensor is built
        (float64 keeps the cancellation harmless); per-row levels take the direct route.
        """
        if s2.numel() == 1:
            inv = 1 / (self.variances + s2)
            quad = flat**2 @ inv.T - 2 * flat @ (self.means * inv).T + (self.means**2 * inv).sum(-1)
            log_det = -inv.log().sum(-1)
        else:
            var = self.variances + s2.reshape(-1, 1, 1)
            quad = ((flat[:, None, :] - self.means) ** 2 / var).sum(-1)
            log_det = var.log().sum(-1)
        return self.weights.log() - 0.5 * (quad + log_det + self.dim * LOG_2PI)

    def _pull(self, flat: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """sum_k r_k (x - mu_k) / (v_k + sigma^2) [B, d], i.e. minus the score."""
        r = torch.softmax(self._log_joint(flat, s2), dim=-1)
        if s2.numel() == 1:
            inv = 1 / (self.variances + s2)
            return flat * (r @ inv) - r @ (self.means * inv)
        var = self.variances + s2.reshape(-1, 1, 1)
        return (r[..., None] * (flat[:, None, :] - self.means) / var).sum(1)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p(x; sigma) [B]: the mixture convolved with N(0, sigma^2 I)."""
        return torch.logsumexp(self._log_joint(*self._prepare(x, sigma)), dim=-1)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """r_k(x) = P(component k | x) at noise level sigma [B, K]."""
        return torch.softmax(self._log_joint(*self._prepare(x, sigma)), dim=-1)

    def denoiser(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """The ideal denoiser E[x0 | x0 + sigma eps = x], shaped and typed like x.

        Per component the posterior mean is mu_k + v_k / (v_k + s^2) (x - mu_k)
        = x - s^2 (x - mu_k) / (v_k + s^2); the mixture's is their r_k-weighted sum.
        """
        flat, s2 = self._prepare(x, sigma)
        scale = s2 if s2.numel() == 1 else s2[:, None]
        return (flat - scale * self._pull(flat, s2)).reshape(x.shape).to(x.dtype)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """grad_x log p(x; sigma) = sum_k r_k (mu_k - x) / (v_k + sigma^2), shaped like x."""
        return (-self._pull(*self._prepare(x, sigma))).reshape(x.shape).to(x.dtype)


def mixture_2d(n_components: int = 8, radius: float = 0.8, std: float = 0.05) -> GaussianMixture:
    """Equal-weight narrow Gaussians evenly spaced on a ring: the classic 2-D test (data in [-1, 1])."""
    angle = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(torch.ones(n_components), means, std**2)


def mixture_nd(d: int = 64, n_components: int = 10, seed: int = 0) -> GaussianMixture:
    """A seeded mixture in d dims: means uniform in [-0.8, 0.8]^d, per-axis stds in [0.02, 0.1],
    weights uniform in [0.5, 1.5] before normalising. Same seed, same mixture."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_components, d, generator=g, dtype=torch.float64) * 2 - 1) * 0.8
    stds = 0.02 + 0.08 * torch.rand(n_components, d, generator=g, dtype=torch.float64)
    weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds**2)


# --- distances between sample sets --------------------------------------------------------------
def _directions(d: int, n_proj: int, seed: int) -> torch.Tensor:
    """n_proj fixed random unit vectors in R^d [d, n_proj] (uniform on the sphere)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(d, n_proj, generator=g, dtype=torch.float64)
    return dirs / dirs.norm(dim=0, keepdim=True)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size sample sets [N, ...].

    SW2(a, b)^2 = E_theta W2^2(theta . a, theta . b) over unit directions theta (Bonneel et al.
    2015, eq. 9), averaged over `n_proj` fixed directions (seeded, so every call uses the same
    ones). In 1-D, W2 between equal-size empirical sets pairs the sorted values.
    """
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"sample sets must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    dirs = _directions(a.shape[1], n_proj, seed)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def sw_noise_floor(
    mixture: GaussianMixture,
    n: int,
    reference: torch.Tensor | None = None,
    *,
    n_proj: int = 128,
    seed: int = 0,
    repeats: int = 5,
) -> tuple[float, float]:
    """Mean and std over `repeats` of the sliced W2 between two independent sets of n true samples.

    This is what a perfect sampler scores at this n: no sampler's distance is meaningful below
    it. With `reference` (n true samples drawn elsewhere) one side stays fixed, as in a benchmark
    that scores every sampler against the same true set.
    """
    g = torch.Generator().manual_seed(seed + 7919)
    dists = []
    for _ in range(repeats):
        ref = mixture.sample(n, g) if reference is None else reference
        dists.append(sliced_wasserstein(ref, mixture.sample(n, g), n_proj=n_proj, seed=seed))
    t = torch.tensor(dists, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if repeats > 1 else 0.0
