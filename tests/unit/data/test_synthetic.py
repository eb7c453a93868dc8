"""The synthetic captioned dataset: deterministic, varied, captions and labels describe the image."""

import numpy as np
import pytest

from microdit.data import synthetic_sample
from microdit.data.synthetic import BACKGROUNDS, COLOURS, SHAPES, synthetic_samples, synthetic_source


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


def test_synthetic_rejects_tiny_images_and_unknown_scenes():
    for size in (4, 7, 1025, 100_000):  # a side of 1e5 was a MemoryError traceback (a terabyte asked for)
        with pytest.raises(ValueError, match=rf"size must be in \[8, 1024\] .*got {size}$"):
            synthetic_sample(0, 0, size=size)
    assert synthetic_sample(0, 0, size=8).image.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="scene must be one of .*'mixed', 'one_object'.*got 'circles'"):
        synthetic_sample(0, 0, scene="circles")


def test_one_object_scene_varies_only_shape_and_colour():
    samples = [synthetic_sample(2, i, scene="one_object") for i in range(400)]
    for s in samples:
        assert (s.labels["count"], s.labels["size"], s.labels["position"], s.labels["background"]) == (
            1, "large", "center", "white")
        assert s.labels["shape"] in s.caption and s.labels["colour"] in s.caption
        assert s.image[0, 0].tolist() == s.image[-1, -1].tolist() == list(BACKGROUNDS["white"])
    assert np.bincount([s.labels["class"] for s in samples], minlength=10).min() > 20
    assert {s.labels["colour"] for s in samples} == set(COLOURS)
    # the object covers more pixels than a mixed scene's object on average: the shape is what the loss sees
    def area(s):
        return (np.abs(s.image.astype(int) - np.array(BACKGROUNDS[s.labels["background"]])).sum(-1) > 60).sum()
    assert min(area(s) for s in samples) > 40
    mixed = [synthetic_sample(2, i) for i in range(400)]
    assert np.mean([area(s) for s in samples]) > 1.3 * np.mean([area(s) for s in mixed if s.labels["count"] == 1])


def test_samples_and_source_name_the_scene():
    rows = list(synthetic_samples(4, 3, 16, "one_object"))
    assert [key for key, *_ in rows] == ["00000000", "00000001", "00000002"]
    one = synthetic_sample(4, 2, 16, "one_object")
    assert np.array_equal(rows[2][1], one.image) and rows[2][2:] == (one.caption, one.labels)
    assert synthetic_source(4) == "synthetic(seed=4)"  # the mixed scene's name is the one datasets already record
    assert synthetic_source(4, "one_object") == "synthetic(seed=4, scene=one_object)"

