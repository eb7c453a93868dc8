"""Learning-rate schedules as functions of images seen: warm-up, cosine, constant."""

import pytest

from microdit.train.schedule import lr_factor


def test_lr_schedule():
    assert lr_factor(0, 1000, 100, "cosine", 0.33) == 0
    assert lr_factor(50, 1000, 100, "cosine", 0.33) == pytest.approx(0.5)
    assert lr_factor(100, 1000, 100, "cosine", 0.33) == pytest.approx(1.0)
    assert lr_factor(550, 1000, 100, "cosine", 0.33) == pytest.approx(0.33 + 0.67 * 0.5)
    assert lr_factor(1000, 1000, 100, "cosine", 0.33) == pytest.approx(0.33)
    assert lr_factor(5000, 1000, 100, "cosine", 0.33) == pytest.approx(0.33)
    assert lr_factor(700, 1000, 0, "constant", 0.33) == 1.0

