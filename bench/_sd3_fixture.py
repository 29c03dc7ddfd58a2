"""Stable Diffusion 3-shaped pipelines with random weights, for the tests: diffusers' own
StableDiffusion3Pipeline in SD3's layout (a joint-attention transformer over 16-channel latents,
CLIP-L and CLIP-G text models with projections, an optional T5 encoder, the flow scheduler with
shift 3) at toy size, built from configs with nothing downloaded."""

from __future__ import annotations

import tempfile
from pathlib import Path

import diffusers
import torch
import transformers

from _sd_fixture import SD_LETTERS, write_tokenizer

# CLIP-L and CLIP-G at toy size: hidden 16 + 24 = 40 channels of tokens, padded to the joint
# width 48; projections 32 + 40 = 72 pooled channels, wider than a token (two rows when packed)
CLIP_L = dict(hidden_size=16, projection_dim=32)
CLIP_G = dict(hidden_size=24, projection_dim=40)
JOINT_DIM, POOLED_DIM = 48, 72


def t5_tokenizer() -> transformers.T5Tokenizer:
    """A T5 (Unigram) tokenizer over single letters and a few words, built in memory."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(w, -1.0) for w in ("\u2581red", "\u2581cat", "\u2581blue", "\u2581a")]
    pieces += [(c, -3.0) for c in SD_LETTERS] + [("\u2581" + c, -3.5) for c in SD_LETTERS]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip(dims: dict) -> transformers.CLIPTextModelWithProjection:
    config = transformers.CLIPTextConfig(
        vocab_size=49408,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **dims,
    )
    return transformers.CLIPTextModelWithProjection(config)


def random_sd3_pipeline(t5: bool = False, seed: int = 0) -> diffusers.StableDiffusion3Pipeline:
    """A diffusers StableDiffusion3Pipeline with random weights: 16x16 images, 8x8x16 latents
    (scaling and shift factors as SD3's autoencoder), a 2-block transformer with 2x2 patches.
    t5 False leaves text_encoder_3 out (diffusers then feeds 256 zero tokens); True adds a
    one-layer T5 encoder whose width is the joint width."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(Path(tmp))
    torch.manual_seed(seed)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=JOINT_DIM,
        caption_projection_dim=32,  # = heads x head dim
        pooled_projection_dim=POOLED_DIM,
        pos_embed_max_size=8,  # latents up to 16 x 16
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16,
        scaling_factor=1.5305,  # SD3's
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    text_encoder_3 = tokenizer_3 = None
    if t5:
        config = transformers.T5Config(
            vocab_size=64, d_model=JOINT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=2
        )
        text_encoder_3, tokenizer_3 = transformers.T5EncoderModel(config), t5_tokenizer()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=_clip(CLIP_L),
        tokenizer=tokenizer,
        text_encoder_2=_clip(CLIP_G),
        tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
