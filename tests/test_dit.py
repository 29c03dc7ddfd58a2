"""The DiT backbone (Peebles & Xie 2023): patches, position code, adaLN-Zero, conditioning, training."""

import math

import pytest
import torch

from _common import forward_flops  # bench/_common.py, on the path through conftest.py
from live_weights import live
from nanodiffusion.core.denoisers import Denoiser, ImageConditioned
from nanodiffusion.core.guidance import ClassifierFreeGuidance
from nanodiffusion.core.losses import LossConfig, diffusion_loss, sample_sigmas
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.nets.dit import FREQ_DIM, DiT, DiTConfig, patchify, sincos_position_code, unpatchify
from one_line import error_of
from prompts import D, L
from prompts import prompt as _prompt


@pytest.mark.parametrize(
    ("shape", "patch"),
    [((2, 3, 8, 12), (2, 4)), ((2, 3, 12), (3,)), ((2, 2, 4, 6, 8), (2, 3, 2)), ((1, 1, 5, 5), (5, 5))],
)
def test_unpatchify_inverts_patchify_exactly(shape, patch):
    x = torch.randn(shape)
    grid = tuple(s // p for s, p in zip(shape[2:], patch, strict=True))
    tokens = patchify(x, patch)
    assert tokens.shape == (shape[0], math.prod(grid), math.prod(patch) * shape[1])
    assert torch.equal(unpatchify(tokens, patch, grid), x)


def test_a_token_holds_its_patch_in_row_major_order():
    x = torch.arange(2 * 4 * 6).float().reshape(1, 2, 4, 6)  # C=2, H=4, W=6, patch 2x3: a 2x2 grid
    tokens = patchify(x, (2, 3))
    # token 1 is grid row 0, column 1: rows 0-1, columns 3-5; values ordered (row, column, channel)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 3:6].permute(1, 2, 0).reshape(-1))


def test_sincos_position_code_matches_a_hand_computed_value():
    code = sincos_position_code((2, 3), 8)  # 6 tokens; 4 channels per axis: frequencies 1 and 1/100
    assert code.shape == (6, 8)
    row, col = 1, 2  # token 5 in row-major order
    expected = [math.cos(row), math.cos(row / 100), math.sin(row), math.sin(row / 100)]
    expected += [math.cos(col), math.cos(col / 100), math.sin(col), math.sin(col / 100)]
    assert torch.allclose(code[5], torch.tensor(expected), atol=1e-7)
    assert torch.equal(code[0], torch.tensor([1.0, 1, 0, 0, 1, 1, 0, 0]))  # index 0 on both axes


@pytest.mark.parametrize("kind", ["unconditional", "class", "text"])
def test_every_block_starts_as_the_identity_and_the_output_at_zero(kind):
    torch.manual_seed(0)
    extra = {"class": {"num_classes": 10}, "text": {"context_dim": D}}.get(kind, {})
    net = DiT(DiTConfig(in_channels=3, image_size=8, width=64, depth=3, pos="learned", **extra)).eval()
    x, c_noise = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0])
    cond = {"class": torch.tensor([1, 10]), "text": _prompt(2, 3, 0)}.get(kind)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for b in net.blocks]
    with torch.no_grad():
        out = net(x, c_noise, cond)
    for h in hooks:
        h.remove()
    assert len(seen) == 3 and all(torch.equal(block_in, block_out) for block_in, block_out in seen)
    assert seen[0][0].abs().max() > 0  # the tokens themselves are not zero
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))


def test_the_class_label_and_the_no_class_index_change_the_output():
    torch.manual_seed(0)
    net = live(DiT(DiTConfig(image_size=8, width=32, depth=2, num_classes=10)))
    x, c_noise = torch.randn(1, 1, 8, 8).expand(3, 1, 8, 8), torch.full((3,), 100.0)
    with torch.no_grad():
        out = net(x, c_noise, torch.tensor([3, 7, 10]))
        unconditional = net(x, c_noise)
    assert (out[0] - out[1]).abs().max() > 1e-2
    assert (out[0] - out[2]).abs().max() > 1e-2
    assert torch.equal(unconditional[0], out[2])  # cond None is the "no class" index


def test_classifier_free_guidance_batches_the_no_class_index():
    """Guidance runs [cond, uncond] as one batch through the DiT: D_u + w (D_c - D_u)."""
    torch.manual_seed(0)
    net = live(DiT(DiTConfig(image_size=8, width=32, depth=2, num_classes=10)))
    denoiser = Denoiser(net, Schedule(kind="edm"), "edm")
    x, sigma, labels = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 2.0]), torch.tensor([3, 7])
    with torch.no_grad():
        guided = ClassifierFreeGuidance(denoiser, 2.5, torch.tensor(10))(x, sigma, labels)
        d_c, d_u = denoiser(x, sigma, labels), denoiser(x, sigma)
    assert (d_c - d_u).abs().max() > 1e-3
    assert torch.allclose(guided, d_u + 2.5 * (d_c - d_u), atol=1e-5)


def test_the_prompt_changes_the_output_and_padding_does_not():
    torch.manual_seed(0)
    net = live(DiT(DiTConfig(in_channels=3, image_size=8, width=32, depth=2, context_dim=D)))
    x, c_noise = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    a, b = _prompt(2, 3, 0), _prompt(2, 3, 1)
    padded = a.clone()
    padded[:, 3:, :-1] = torch.randn(2, L - 3, D)  # other values under the padding only
    with torch.no_grad():
        out_a, out_b, out_padded = net(x, c_noise, a), net(x, c_noise, b), net(x, c_noise, padded)
    assert (out_a - out_b).abs().max() > 1e-2
    assert torch.allclose(out_a, out_padded, atol=1e-6)


def test_an_image_condition_changes_the_output():
    torch.manual_seed(0)
    net = live(DiT(DiTConfig(in_channels=1, cond_channels=2, image_size=8, width=32, depth=2)))
    x, c_noise, image = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        out = ImageConditioned(net, image)(x, c_noise)
        other = ImageConditioned(net, image.flip(-1))(x, c_noise)
        direct = net(torch.cat([x, image.expand(2, 2, 8, 8)], 1), c_noise)
    assert out.shape == x.shape and torch.equal(out, direct)
    assert (out - other).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("shape", "extra"),
    [
        ((3, 8, 12), {"patch_size": [2, 4], "mlp_ratio": 2.5}),
        ((1, 8, 8), {"context_dim": D}),
        ((2, 16), {"patch_size": 4}),  # 1-D: audio-like [B, C, T]
        ((1, 4, 8, 8), {"patch_size": [2, 4, 4], "width": 48, "head_dim": 48}),  # 3-D: video [B, C, F, H, W]
        ((3, 4, 8, 8), {"patch_size": [1, 2, 2], "width": 48, "head_dim": 24, "attention": "factorised"}),
        ((3, 8, 8), {"cond_channels": 2}),  # x and a 2-channel image condition: 5 channels in, 3 out
    ],
)
def test_flops_match_torch_flop_counter_on_1d_2d_and_3d_inputs(shape, extra):
    torch.manual_seed(0)
    cfg = DiTConfig(
        **{"in_channels": shape[0], "image_size": list(shape[1:]), "width": 32, "depth": 2, **extra}
    )
    net = DiT(cfg)
    x, cond = torch.randn(1, *shape), _prompt(1, 4, 0) if cfg.context_dim else None
    net_input = torch.cat([x, torch.randn(1, cfg.cond_channels, *shape[1:])], 1)
    counted = forward_flops(lambda: net(net_input, torch.ones(1), cond))
    assert net.flops(context_tokens=L if cfg.context_dim else 0) == counted
    assert net(net_input, torch.ones(1), cond).shape == x.shape


@pytest.mark.parametrize("name", ["latents", "pixels"])
def test_the_speed_benchmark_compares_equal_dits_but_for_diffusers_per_block_embedding(name):
    """bench/dit_speed.py's two models do the same work, except that every diffusers block computes
    the noise level's and the label's embedding again (stored depth times, run depth + 1 times)."""
    pytest.importorskip("diffusers")
    import dit_speed

    shape = dit_speed.SHAPES[name]
    ours, theirs = dit_speed.nanodiffusion_trainer(shape), dit_speed.diffusers_trainer(shape)
    embedding_flops = 2 * (FREQ_DIM * shape.width + shape.width**2)  # the noise level's MLP
    extra_flops = forward_flops(theirs.forward_one) - forward_flops(ours.forward_one)
    assert extra_flops == shape.depth * embedding_flops

    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for module in modules for p in module.parameters())

    extra_params = count(theirs.net) - count(ours.net)
    assert extra_params == (shape.depth - 1) * count(ours.net.noise_mlp, ours.net.class_emb)


def _blobs(n: int, g: torch.Generator) -> torch.Tensor:
    """n 8x8 images in [-1, 1]: one Gaussian bump each, its centre uniform in [1.5, 6.5]^2."""
    centre = 1.5 + 5 * torch.rand(n, 2, 1, 1, generator=g)
    row, col = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    return (2 * torch.exp(-((row - centre[:, 0]) ** 2 + (col - centre[:, 1]) ** 2) / 3) - 1)[:, None]


def test_a_tiny_dit_learns_to_denoise_blobs():
    """100 steps of EDM's loss (Karras et al. 2022, eq. 8) lower the loss on a fixed batch of blobs at
    least 2.5x (3.6x seen), from the zero network's, where every block is the identity."""
    torch.manual_seed(0)
    net = DiT(DiTConfig(image_size=8, patch_size=2, width=32, depth=2))
    denoiser = Denoiser(net, Schedule(kind="edm"), "edm", sigma_data=0.5)
    loss_cfg = LossConfig(sigma_sampling="lognormal", weighting="edm")
    g = torch.Generator().manual_seed(0)
    fixed = (
        _blobs(256, g),
        sample_sigmas(denoiser.schedule, 256, loss_cfg, g),
        torch.randn(256, 1, 8, 8, generator=g),
    )

    def held_loss() -> float:
        with torch.no_grad():
            return diffusion_loss(denoiser, *fixed, loss_cfg).item()

    before = held_loss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps this small run faster on one thread, and far faster on a busy machine
    try:
        for _ in range(100):
            x0 = _blobs(32, g)
            sigma = sample_sigmas(denoiser.schedule, 32, loss_cfg, g)
            loss = diffusion_loss(denoiser, x0, sigma, torch.randn(x0.shape, generator=g), loss_cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    after = held_loss()
    assert after < before / 2.5, (before, after)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 0}, "model.width must be an integer >= 1, got 0"),
        ({"depth": -1}, "model.depth must be an integer >= 1, got -1"),
        ({"head_dim": 0}, "model.head_dim must be an integer >= 1, got 0"),
        ({"in_channels": 0}, "model.in_channels must be an integer >= 1"),
        ({"image_size": 10, "patch_size": 4}, "model.image_size 10 must be divisible by model.patch_size 4"),
        (
            {"image_size": [8, 8], "patch_size": [2, 2, 2]},
            "model.patch_size [2, 2, 2] must have one entry per axis",
        ),
        ({"image_size": [8, 8, 8, 8]}, "model.image_size must be an integer >= 1 or a list of 1 to 3"),
        ({"patch_size": 0}, "model.patch_size must be an integer >= 1"),
        ({"width": 96, "head_dim": 64}, "model.head_dim (64) must divide model.width (96)"),
        ({"mlp_ratio": 0}, "model.mlp_ratio must be positive, got 0"),
        ({"mlp_ratio": "4"}, "model.mlp_ratio must be positive, got '4'"),
        ({"num_classes": -2}, "model.num_classes must be an integer >= 0, got -2"),
        ({"cond_channels": -1}, "model.cond_channels must be an integer >= 0, got -1"),
        ({"num_classes": 10, "context_dim": 8}, "a DiT is class-conditional or text-conditional, not both"),
        ({"pos": "rope"}, "model.pos must be one of sincos, learned, got 'rope'"),
        ({"image_size": [6, 6, 6], "width": 64}, "model.width (64) must be divisible by 6 for a sincos"),
        ({"dropout": 1.0}, "model.dropout must be in [0, 1), got 1.0"),
        ({"dropout": None}, "model.dropout must be in [0, 1), got None"),
    ],
)
def test_config_check_messages(overrides, message):
    assert message in error_of(lambda: DiTConfig(**overrides))


def test_forward_errors():
    torch.manual_seed(0)
    net = DiT(DiTConfig(image_size=8, width=32, depth=1, context_dim=D))
    x, c = torch.randn(1, 1, 8, 8), torch.tensor([0.5])
    assert "needs a prompt" in error_of(net, x, c)
    assert "expects 12" in error_of(net, x, c, torch.ones(1, L, 8))
    assert "takes inputs [batch, 1, 8, 8] (model.in_channels + model.cond_channels" in error_of(
        net, x[..., :6], c
    )
    assert "got [1, 2, 8, 8]" in error_of(net, x.expand(1, 2, 8, 8), c)
