"""Classifier-free guidance: the formula, one batched pass, and its effect on exact denoisers."""

import pytest
import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.guidance import ClassifierFreeGuidance, class_guidance
from nanodiffusion.core.samplers import CountingDenoiser, sample_dpmpp_2m
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError


class TwoClassDenoiser(torch.nn.Module):
    """Exact denoisers for 1-D data: class 0 ~ N(-1, s^2), class 1 ~ N(+1, s^2), and label 2
    ("no class") the equal mixture of the two, as a model trained with label dropout learns."""

    s2 = 0.2**2

    def forward(self, x, sigma, cond):
        v = sigma.reshape(-1, 1) ** 2
        means = torch.tensor([-1.0, 1.0], dtype=x.dtype)
        # per-class posterior means, and the mixture's via responsibilities p(class | x)
        post = means + self.s2 / (self.s2 + v) * (x - means)  # [B, 2]
        logits = -((x - means) ** 2) / (2 * (self.s2 + v))
        mix = (logits.softmax(1) * post).sum(1, keepdim=True)
        cond = cond.reshape(-1, 1)
        return torch.where(cond == 2, mix, post.gather(1, cond.clamp(max=1)))


def test_guidance_is_the_extrapolation_in_one_batched_call():
    inner = CountingDenoiser(TwoClassDenoiser())
    x, sigma = torch.randn(6, 1, dtype=torch.float64), torch.full((6,), 0.7, dtype=torch.float64)
    c = torch.tensor([0, 1, 0, 1, 1, 0])
    d_c, d_u = inner(x, sigma, c), inner(x, sigma, torch.full_like(c, 2))
    for w in [0.0, 1.0, 2.5, 7.0]:
        inner.calls = 0
        guided = ClassifierFreeGuidance(inner, w, torch.tensor(2))(x, sigma, c)
        assert torch.allclose(guided, d_u + w * (d_c - d_u), atol=1e-12)
        assert inner.calls == 1  # one pass (over a doubled batch when 0 < w != 1)


def test_guiding_x0_equals_guiding_eps():
    """eps = (x - D) / sigma is affine in D, so guiding either gives the same step."""

    class Net(torch.nn.Module):  # any net whose output depends on the condition
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3).double()

        def forward(self, x, t, c):
            return self.lin(x) * (1 + c.reshape(-1, 1))

    model = Denoiser(Net(), Schedule(), "eps")
    x, sigma = torch.randn(4, 3, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float64)
    c, u = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        D = ClassifierFreeGuidance(model, 3.0, torch.tensor(0.0, dtype=torch.float64))(x, sigma, c)
        eps_c, eps_u = ((x - model(x, sigma, v)) / 2.0 for v in (c, u))
    assert torch.allclose((x - D) / 2.0, eps_u + 3.0 * (eps_c - eps_u), atol=1e-12)


def test_guidance_sharpens_the_requested_class():
    """On exact denoisers, guided samples of class 1 land on class 1's side more often as w grows,
    and w = 1 reproduces the class's own distribution (mean +1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=g, dtype=torch.float64) * 80
    sigmas = Schedule(kind="edm").sampling_sigmas(40)
    c = torch.ones(4000, dtype=torch.long)
    right, spread = [], []
    for w in [0.0, 1.0, 3.0]:
        out = sample_dpmpp_2m(ClassifierFreeGuidance(TwoClassDenoiser(), w, torch.tensor(2)), x, sigmas, c)
        right.append((out > 0).double().mean().item())
        spread.append(out.std().item())
        if w == 1:
            assert abs(out.mean().item() - 1) < 0.02 and abs(out.std().item() - 0.2) < 0.02
    assert 0.4 < right[0] < 0.6 and right[1] > 0.99 and right[2] >= right[1]
    assert spread[2] < spread[1]  # w > 1 trades diversity for fidelity


def test_guidance_needs_a_condition_and_a_conditional_model():
    with pytest.raises(NanodiffError, match="needs a condition"):
        ClassifierFreeGuidance(TwoClassDenoiser(), 3.0, torch.tensor(2))(
            torch.zeros(2, 1), torch.ones(2), None
        )
    with pytest.raises(NanodiffError, match="class-conditional"):
        class_guidance(TwoClassDenoiser(), 3.0, 0)
