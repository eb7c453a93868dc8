"""CLIP score and Inception feature paths on random-init networks of the real architectures."""

import pytest
import torch

from microdit.eval.features import ClipModel, InceptionFeatures


@pytest.fixture(scope="module")
def small_clip(small_clip_arch):
    return ClipModel(small_clip_arch)


def test_clip_score_on_a_random_init_model(small_clip):
    images = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8)
    captions = ["a red circle", "a blue square", "two shapes"]
    scores = small_clip.clip_score(images, captions)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and scores.abs().max() <= 100
    image_f = small_clip.model.encode_image(small_clip._prepare(images))
    text_f = small_clip.model.encode_text(small_clip.tokenizer(captions))
    expected = 100 * torch.nn.functional.cosine_similarity(image_f, text_f, dim=-1)
    torch.testing.assert_close(scores, expected.detach())
    assert small_clip(images).shape == (3, 32)  # Clip-FID features


def test_inception_path_with_random_init_weights(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_net.state_dict(), tmp_path / "inception-random.pt")
    monkeypatch.undo()
    extractor = InceptionFeatures(str(tmp_path / "inception-random.pt"))  # the real loading path, local weights
    features = extractor(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (3, 2048) and torch.isfinite(features).all()

