"""Pretrained weights that cannot be fetched (a machine without network, no cached copy) end in one
line naming them and what to do offline, through each loader that fetches: open_clip text encoders
and CLIP models, diffusers autoencoders, FID's InceptionV3. The network's failure is made here the
way each library raises it, so the test does not depend on this machine's network."""

import urllib.error

import pytest

from microdit.encoders import load_autoencoder, load_text_encoder
from microdit.eval.features import ClipModel, InceptionFeatures
from microdit.pretrained import WeightsUnavailable, fetching

OPEN_CLIP_ERROR = RuntimeError("Failed to download weights for tag 'openai': Failed to download file "
                               "(open_clip_pytorch_model.bin) for timm/vit_base_patch32_clip_224.openai.")


def test_a_failed_fetch_is_one_line_and_anything_else_passes_through():
    for err in (urllib.error.URLError("[Errno -2] Name or service not known"), OSError("no config.json"),
                OPEN_CLIP_ERROR):
        with pytest.raises(WeightsUnavailable) as info, fetching("weights W", "cache C", "do L"):
            raise err
        message = str(info.value)
        assert "\n" not in message and message.startswith("weights W: the pretrained weights cannot be fetched (")
        assert message.endswith("copy cache C, or do L") and " ".join(str(err).split())[:40] in message
        assert isinstance(info.value, ValueError)  # every command already ends a ValueError in one line
    for err in (RuntimeError("size mismatch for weight"), KeyError("state_dict"), ValueError("bad arch")):
        with pytest.raises(type(err)) as info, fetching("weights W", "cache C", "do L"):
            raise err
        assert info.value is err
    with pytest.raises(WeightsUnavailable, match=r"\(x{297}\.\.\.\)"), fetching("W", "C", "L"):
        raise OSError("x" * 1000)  # a library's long reason is cut, the advice kept


def test_open_clip_loaders_name_the_weights(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OPEN_CLIP_ERROR

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(WeightsUnavailable, match=r"^text encoder openclip:ViT-B-32:openai: .*HF_HOME.*ARCH:/path"):
        load_text_encoder("openclip:ViT-B-32:openai")
    with pytest.raises(WeightsUnavailable, match=r"^open_clip ViT-L-14:openai: .*Failed to download weights"):
        ClipModel("ViT-L-14:openai")


def test_diffusers_and_inception_loaders_name_the_weights(monkeypatch, tmp_path):
    import diffusers
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise OSError("stabilityai/stable-diffusion-xl-base-1.0 does not appear to have a file named config.json.")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", offline)
    with pytest.raises(WeightsUnavailable, match=r"^autoencoder sdxl \(stabilityai/stable-diffusion-xl-base-1.0, "
                       r"subfolder vae\): .*config.json.*--autoencoder FOLDER"):
        load_autoencoder("sdxl")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailable, match=r"^FID's InceptionV3 .*Name or service.*TORCH_HOME.*--inception"):
        InceptionFeatures()
    with pytest.raises(WeightsUnavailable, match=r"^--inception-weights .*nope.pth is not a file"):
        InceptionFeatures(str(tmp_path / "nope.pth"))
