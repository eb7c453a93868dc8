"""Feature extractors for FID (Inception-v3 through torch-fidelity, the standard FID network),
Clip-FID and CLIP score (open_clip). Both are imported lazily; both take uint8 images (N, 3, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from microdit.pretrained import HUB_CACHE, OPEN_CLIP_LOCAL, TORCH_CACHE, WeightsUnavailable, fetching
from microdit.progress import progress

CLIP_FID_MODEL = "ViT-B-32:openai"  # clean-fid's Clip-FID network
CLIP_SCORE_MODEL = "ViT-L-14:openai"  # the usual CLIP-score network


class InceptionFeatures:
    """2048-d pool features of torch-fidelity's InceptionV3 (downloads its weights unless
    ``weights_path`` points to a converted state dict)."""

    name = "inception"

    def __init__(self, weights_path: str | None = None, device: str | torch.device = "cpu") -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if weights_path is not None and not Path(weights_path).is_file():
            raise WeightsUnavailable(f"--inception-weights {weights_path} is not a file (FID's InceptionV3 weights)")
        with fetching("FID's InceptionV3 (torch-fidelity's pt_inception-2015-12-05)", TORCH_CACHE,
                      "give the weights file with --inception-weights FILE"):
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=weights_path).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> (N, 2048) float32."""
        return torch.cat([self.net(images[i:i + batch].to(self.device))[0].cpu()
                          for i in progress(range(0, len(images), batch), desc=f"{self.name} features", unit="batch")])


class ClipModel:
    """An open_clip model for image and caption features (``ARCH:PRETRAINED`` or ``ARCH`` for
    random initialisation, e.g. in tests)."""

    def __init__(self, spec: str = CLIP_FID_MODEL, device: str | torch.device = "cpu") -> None:
        import open_clip

        arch, _, pretrained = spec.partition(":")
        with fetching(f"open_clip {spec}", HUB_CACHE, OPEN_CLIP_LOCAL):
            self.model = open_clip.create_model(arch, pretrained=pretrained or None, device=device).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = self.model.visual.preprocess_cfg
        self.size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        self.device, self.name = device, f"clip-{spec.replace(':', '-').replace('/', '-')}"

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        h, w = x.shape[2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True)
        top, left = (x.shape[2] - self.size) // 2, (x.shape[3] - self.size) // 2
        x = x[:, :, top:top + self.size, left:left + self.size]
        return ((x.clamp(0, 1) - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> image features (N, D) float32 (not normalised)."""
        return torch.cat([self.model.encode_image(self._prepare(images[i:i + batch])).float().cpu()
                          for i in progress(range(0, len(images), batch), desc=f"{self.name} features", unit="batch")])

    @torch.no_grad()
    def text(self, captions: list[str], batch: int = 256) -> torch.Tensor:
        """Captions -> text features (N, D) float32."""
        return torch.cat([self.model.encode_text(self.tokenizer(captions[i:i + batch]).to(self.device)).float().cpu()
                          for i in range(0, len(captions), batch)])

    def clip_score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """100 x cosine similarity of each image with its caption, (N,)."""
        return 100 * F.cosine_similarity(self(images), self.text(captions), dim=-1)
