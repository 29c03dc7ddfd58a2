"""The UNet's text conditioning: cross-attention to the prompt's tokens, padding masked."""

import pytest
import torch

from nanodiffusion.core.guidance import ClassifierFreeGuidance
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import build_denoiser
from nanodiffusion.io.config import Config
from nanodiffusion.nets.unet import UNet, UNetConfig, split_context
from prompts import D, L
from prompts import prompt as _prompt


def _text_unet() -> UNet:
    torch.manual_seed(0)
    net = UNet(
        UNetConfig(
            in_channels=3,
            channels=16,
            channel_mults=[1, 2],
            blocks_per_level=1,
            attn_resolutions=[4],
            head_dim=16,
            dropout=0.0,
            image_size=8,
            context_dim=D,
        )
    )
    with torch.no_grad():  # the zero-initialised output layers would hide the prompt's effect
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return net.eval()


def test_the_prompt_changes_the_output_and_padding_does_not():
    net = _text_unet()
    x, c = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.7])
    a, b = _prompt(2, 3, 0), _prompt(2, 3, 1)
    with torch.no_grad():
        out_a, out_b = net(x, c, a), net(x, c, b)
        padded = a.clone()
        padded[:, 3:, :-1] = torch.randn(2, L - 3, D)  # other values under the padding only
        out_padded = net(x, c, padded)
    assert (out_a - out_b).abs().max() > 1e-3
    assert torch.allclose(out_a, out_padded, atol=1e-6)
    tokens, mask = split_context(a)
    assert tokens.shape == (2, L, D) and mask.tolist() == [[True] * 3 + [False] * 3] * 2


def test_cross_attention_reaches_every_transformer_block():
    net = _text_unet()
    blocks = [m for m in net.modules() if type(m).__name__ == "TransformerBlock"]
    assert len(blocks) == 4  # one down at 4x4, the middle, two up at 4x4
    seen = []
    hooks = [b.cross_attn.register_forward_hook(lambda m, i, o: seen.append(i[1].shape)) for b in blocks]
    with torch.no_grad():
        net(torch.randn(1, 3, 8, 8), torch.tensor([0.5]), _prompt(1, 2, 0))
    for h in hooks:
        h.remove()
    assert seen == [(1, L, D)] * 4


@pytest.mark.slow
def test_guidance_batches_prompts_like_labels():
    """Classifier-free guidance with the empty prompt as the unconditional input: one forward pass."""
    net = _text_unet()
    cfg = Config(model=net.cfg, schedule=Schedule(kind="edm"))
    cfg.diffusion.parameterization = "edm"
    denoiser = build_denoiser(cfg, net).eval()
    cond, empty = _prompt(2, 4, 0), _prompt(1, 1, 5)[0]
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        guided = ClassifierFreeGuidance(denoiser, 3.0, empty)(x, sigma, cond)
        d_c, d_u = denoiser(x, sigma, cond), denoiser(x, sigma, empty.expand(2, L, D + 1))
    assert torch.allclose(guided, d_u + 3.0 * (d_c - d_u), atol=1e-5)
    with torch.no_grad():  # scale 1 with the empty prompt is the conditional model
        assert torch.allclose(ClassifierFreeGuidance(denoiser, 1.0, empty)(x, sigma, cond), d_c, atol=1e-6)


def test_text_unet_errors():
    net = _text_unet()
    x, c = torch.randn(1, 3, 8, 8), torch.tensor([0.5])
    with pytest.raises(NanodiffError, match="needs a prompt"):
        net(x, c)
    with pytest.raises(NanodiffError, match="expects 12"):
        net(x, c, torch.ones(1, L, 8))
    with pytest.raises(NanodiffError, match="not both"):
        UNetConfig(num_classes=10, context_dim=D)
