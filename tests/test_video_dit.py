"""A space-time DiT on video [B, C, F, H, W]: joint or factorised attention (Latte, Ma et al. 2024;
Ho et al. 2022), training, and image-to-video, prediction and interpolation as frame-axis inpainting."""

import pytest
import torch

from live_weights import live
from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.core.losses import LossConfig, diffusion_loss, sample_sigmas
from nanodiffusion.core.samplers import SAMPLERS
from nanodiffusion.core.schedules import Schedule
from nanodiffusion.inference.sampling import sample_images
from nanodiffusion.io.config import Config
from nanodiffusion.io.validation import dit_activation_bytes
from nanodiffusion.nets.dit import DiT, DiTConfig
from one_line import error_of

FRAMES, SIDE = 4, 8
VIDEO = (1, FRAMES, SIDE, SIDE)  # [C, F, H, W]


def _video_cfg(attention: str = "factorised", **kw) -> DiTConfig:
    base = {"in_channels": 1, "image_size": [FRAMES, SIDE, SIDE], "patch_size": [1, 2, 2]}
    return DiTConfig(**{**base, "width": 48, "head_dim": 24, "depth": 2, "attention": attention, **kw})


def _moving_squares(n: int, g: torch.Generator) -> torch.Tensor:
    """Videos [n, 1, F, 8, 8] in [-1, 1]: a bright 3x3 square on a dark ground, from a random
    place, moving one pixel right per frame."""
    video = -torch.ones(n, *VIDEO)
    top = torch.randint(0, SIDE - 2, (n,), generator=g)
    left = torch.randint(0, SIDE - 2 - FRAMES + 1, (n,), generator=g)
    for i in range(n):
        for f in range(FRAMES):
            t, l = int(top[i]), int(left[i]) + f
            video[i, 0, f, t : t + 3, l : l + 3] = 1
    return video


@pytest.mark.parametrize("attention", ["joint", "factorised"])
def test_every_block_starts_as_the_identity_and_the_output_at_zero(attention):
    torch.manual_seed(0)
    net = DiT(_video_cfg(attention, in_channels=3, pos="learned")).eval()
    x, c_noise = torch.randn(2, 3, FRAMES, SIDE, SIDE), torch.tensor([3.0, 700.0])
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for b in net.blocks]
    with torch.no_grad():
        out = net(x, c_noise)
    for h in hooks:
        h.remove()
    assert len(seen) == 2 and all(torch.equal(block_in, block_out) for block_in, block_out in seen)
    assert seen[0][0].abs().max() > 0
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))
    randomised = live(net)(x, c_noise)
    assert randomised.shape == x.shape and randomised.abs().max() > 1e-2


def _changed(block, gates_off: list[int], at: tuple[int, int]) -> torch.Tensor:
    """Which tokens [F, S] of one factorised block's output change when the input token at
    (frame, place) `at` is perturbed, with the adaLN gates numbered `gates_off` (of the 9 chunks:
    2 spatial, 5 MLP, 8 temporal) set to zero."""
    D = 48
    with torch.no_grad():
        for k in gates_off:
            block.modulation[-1].weight[k * D : (k + 1) * D] = 0
            block.modulation[-1].bias[k * D : (k + 1) * D] = 0
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, FRAMES * 16, D, generator=g), torch.randn(1, D, generator=g)
    moved = x.clone().view(1, FRAMES, 16, D)
    moved[0, at[0], at[1]] += torch.randn(D, generator=g)  # not a constant: LayerNorm removes those
    with torch.no_grad():
        difference = block(moved.view(1, -1, D), c) - block(x, c)
    return difference.abs().amax(-1).view(FRAMES, 16) > 1e-6


def test_factorised_attention_mixes_a_frame_spatially_and_a_place_temporally():
    """Spatial attention alone (temporal gate 0) moves information only within the frame; temporal
    alone (spatial gate 0) only along the place's column of frames; both, in turn, reach every
    token (two hops: within frame f1, then across frames). Joint attention's one hop reaches all."""
    at, frame, place = (1, 5), torch.arange(FRAMES)[:, None], torch.arange(16)[None]
    spatial_only = _changed(live(DiT(_video_cfg())).blocks[0], [8], at)
    assert torch.equal(spatial_only, (frame == at[0]).expand(FRAMES, 16))
    temporal_only = _changed(live(DiT(_video_cfg())).blocks[0], [2], at)
    assert torch.equal(temporal_only, (place == at[1]).expand(FRAMES, 16))
    assert _changed(live(DiT(_video_cfg())).blocks[0], [], at).all()
    assert _changed(live(DiT(_video_cfg("joint"))).blocks[0], [], at).all()


def test_factorised_attention_needs_a_video_grid_and_old_configs_load_as_joint():
    message = error_of(DiTConfig, 8, None, 8, 2, 48, 1, 24, 4.0, 0, 0, "sincos", 0.0, 0, "factorised")
    assert "model.attention 'factorised' needs a video's 3 axes" in message
    assert "model.attention must be one of joint, factorised" in error_of(_video_cfg, "spatial")
    d = Config.from_dict({"model": {"kind": "dit", "image_size": [4, 8, 8], "width": 96}}).to_dict()
    assert list(d["model"])[-2:] == ["attention", "kind"]  # kind stays last
    del d["model"]["attention"]  # a config from before the key
    assert Config.from_dict(d).model.attention == "joint"


def test_a_space_time_dit_learns_moving_squares_with_flow_matching():
    """60 steps of rectified-flow training (batch 16): the mean of the last 5 losses falls below
    0.6x the first 5's (1.75 -> 0.68 seen, 0.39x; the zero network's is 1 + E[x0^2])."""
    torch.manual_seed(0)
    net = DiT(_video_cfg())
    denoiser = Denoiser(net, Schedule(kind="flow"), "flow")
    loss_cfg = LossConfig()
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        x0 = _moving_squares(16, g)
        sigma = sample_sigmas(denoiser.schedule, 16, loss_cfg, g)
        loss = diffusion_loss(denoiser, x0, sigma, torch.randn(x0.shape, generator=g), loss_cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def _frames_known(frames: list[int]) -> torch.Tensor:
    """A mask [1, 1, F, H, W]: 1 on the given frames (kept), 0 on the others (generated)."""
    known = torch.zeros(1, 1, FRAMES, SIDE, SIDE)
    known[:, :, frames] = 1
    return known


@pytest.fixture(scope="module")
def video_denoiser():
    return Denoiser(live(DiT(_video_cfg())), Schedule(kind="flow"), "flow")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_image_to_video_keeps_frame_0_exactly_with_every_sampler(video_denoiser, sampler):
    video = _moving_squares(2, torch.Generator().manual_seed(3))
    out = sample_images(video_denoiser, 2, VIDEO, sampler, 4, init=video, known=_frames_known([0]))
    assert out.shape == (2, *VIDEO) and out.isfinite().all()
    assert torch.equal(out[:, :, 0], video[:, :, 0])
    assert (out[:, :, 1:] - video[:, :, 1:]).abs().max() > 1e-2  # the rest is generated


@pytest.mark.parametrize(
    ("task", "frames"), [("prediction", [0, 1]), ("interpolation", [0, 2]), ("image-to-video", [0])]
)
def test_prediction_and_interpolation_keep_the_given_frames_exactly(video_denoiser, task, frames):
    video = _moving_squares(1, torch.Generator().manual_seed(4))
    known = _frames_known(frames)
    for method in ("replace", "repaint"):
        out = sample_images(
            video_denoiser, 2, VIDEO, "euler", 4, init=video, known=known, inpaint=method, jump=2, resample=2
        )
        assert torch.equal(out[:, :, frames], video[:, :, frames].expand(2, 1, len(frames), SIDE, SIDE))
        others = [f for f in range(FRAMES) if f not in frames]
        assert (out[:, :, others] - video[:, :, others]).abs().max() > 1e-2


def test_the_memory_estimate_counts_factorised_attention_scores():
    """Per query, 16 + 4 keys (its frame's places, its place's frames) instead of all 64 tokens."""
    maps = {
        a: dit_activation_bytes(_video_cfg(a), [FRAMES, SIDE, SIDE], 2)["attention maps"]
        for a in ("joint", "factorised")
    }
    assert maps["factorised"] * 64 == maps["joint"] * (16 + 4)
