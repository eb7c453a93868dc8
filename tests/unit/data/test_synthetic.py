"""The synthetic captioned dataset: deterministic, varied, captions and labels describe the image."""

import numpy as np
import pytest

from microdit.data import synthetic_sample
from microdit.data.synthetic import BACKGROUNDS, COLOURS, SHAPES


def test_synthetic_is_deterministic_and_varied():
    a, b = synthetic_sample(5, 17), synthetic_sample(5, 17)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.labels == b.labels
    assert not np.array_equal(synthetic_sample(5, 18).image, a.image)
    assert not np.array_equal(synthetic_sample(6, 17).image, a.image)
    samples = [synthetic_sample(0, i) for i in range(600)]
    classes = np.bincount([s.labels["class"] for s in samples], minlength=10)
    assert classes.min() > 30  # all ten shape classes appear, roughly uniformly
    assert len({s.caption for s in samples}) > 400
    assert 0.25 < np.mean([s.labels["count"] == 2 for s in samples]) < 0.45


@pytest.mark.parametrize("index", range(40))
def test_synthetic_caption_and_labels_describe_the_image(index):
    s = synthetic_sample(1, index, size=32)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    for obj in s.labels["objects"]:
        assert obj["colour"] in s.caption and obj["shape"] in s.caption
    assert SHAPES[s.labels["class"]] == s.labels["shape"]
    background = np.array(BACKGROUNDS[s.labels["background"]])
    foreground = np.abs(s.image.astype(int) - background).sum(-1) > 60  # (32, 32) object pixels
    rows, cols = np.nonzero(foreground)
    assert len(rows) > 5
    first = s.labels["objects"][0]
    colour = np.array(COLOURS[first["colour"]])
    assert (np.abs(s.image.astype(int) - colour).sum(-1) < 60).any()  # the named colour is drawn
    if s.labels["count"] == 1:  # the object sits where the caption says
        centre_r, centre_c = rows.mean() / 32, cols.mean() / 32
        expected = {"left": centre_c < 0.4, "right": centre_c > 0.6, "top": centre_r < 0.4,
                    "bottom": centre_r > 0.6, "center": abs(centre_r - 0.5) < 0.12 and abs(centre_c - 0.5) < 0.12}
        assert expected[first["position"]]
    else:
        assert "left of" in s.caption or "right of" in s.caption or "above" in s.caption or "below" in s.caption


def test_synthetic_rejects_tiny_images():
    with pytest.raises(ValueError, match="size must be >= 8"):
        synthetic_sample(0, 0, size=4)

