"""Stable Diffusion-shaped pipelines with random weights, for the tests and bench/sd_speed.py:
diffusers' own StableDiffusionPipeline in Stable Diffusion 1.x's layout, built from configs with
nothing downloaded (tests/conftest.py puts bench/ on the tests' path)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import diffusers
import torch
import transformers

SD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_tokenizer(folder: Path):
    """A CLIP tokenizer from a letters-and-a-few-merges vocabulary written to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in SD_LETTERS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["r e", "re d</w>", "c a", "ca t</w>", "b l", "bl u", "blu e</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # without model_max_length the tokenizer pads to an effectively unbounded length
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def random_pipeline(dims: str = "tiny", prediction_type: str = "epsilon", seed: int = 0):
    """A diffusers StableDiffusionPipeline with random weights and Stable Diffusion 1.x's layout
    and scheduler config. dims 'tiny': 16x16 images, 8x8x4 latents, a 2-level UNet (tests);
    'sd15': Stable Diffusion 1.5's real dimensions (CLIP ViT-L/14's text model, 77 tokens, the
    ~860M-parameter UNet, 64x64x4 latents, the 512x512 autoencoder; benchmarks). The tokenizer
    knows letters and a few words only."""
    if dims not in ("tiny", "sd15"):
        raise ValueError(f"dims must be tiny or sd15, got {dims!r}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(Path(tmp))
    torch.manual_seed(seed)
    if dims == "tiny":
        text = dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2
        )
        unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        vae_channels, size = (32, 64), 16
    else:
        text = dict(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            hidden_act="quick_gelu",
        )
        unet = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.x otherwise
        vae_channels, size = (128, 256, 512, 512), 512
    text_model = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1, **text
        )
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=vae_channels,
        layers_per_block=1 if dims == "tiny" else 2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        sample_size=size,
    )
    scheduler = diffusers.PNDMScheduler(  # Stable Diffusion 1.x's scheduler config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_model,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
