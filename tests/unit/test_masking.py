"""Token masking: keep counts, sortedness, determinism, block structure, round trips, MaskConfig errors."""

import pytest
import torch

from microdit.masking import MaskConfig, gather_tokens, keep_mask, num_kept, sample_keep_ids, scatter_tokens


@pytest.mark.parametrize("ratio,expected", [(0.0, 256), (0.25, 192), (0.5, 128), (0.75, 64), (0.875, 32)])
def test_random_keep_count(ratio, expected):
    assert num_kept((16, 16), MaskConfig(ratio)) == expected
    ids = sample_keep_ids(4, (16, 16), MaskConfig(ratio))
    if ratio == 0:
        assert ids is None
        return
    assert ids.shape == (4, expected)
    for row in ids:
        assert torch.equal(row, row.unique())  # sorted, distinct
        assert 0 <= row.min() and row.max() < 256


def test_random_masks_differ_per_sample_and_follow_generator():
    a = sample_keep_ids(8, (8, 8), MaskConfig(0.75), generator=torch.Generator().manual_seed(1))
    b = sample_keep_ids(8, (8, 8), MaskConfig(0.75), generator=torch.Generator().manual_seed(1))
    c = sample_keep_ids(8, (8, 8), MaskConfig(0.75), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) > 1


def test_random_mask_is_uniform():
    ids = sample_keep_ids(20000, (4, 4), MaskConfig(0.75), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids.flatten(), minlength=16).float() / ids.shape[0]
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.02)


@pytest.mark.parametrize("b", [2, 4, 8])
def test_block_masking_keeps_whole_blocks(b):
    grid = (16, 16)
    ids = sample_keep_ids(3, grid, MaskConfig(0.75, "block", b))
    groups = (16 // b) ** 2
    assert ids.shape == (3, int(groups * 0.25) * b * b)
    for row in ids:
        rows, cols = row // 16, row % 16
        blocks = set(zip((rows // b).tolist(), (cols // b).tolist(), strict=True))
        assert len(blocks) * b * b == len(row)  # every kept block is kept in full
        for br, bc in blocks:
            members = ((rows // b == br) & (cols // b == bc)).sum().item()
            assert members == b * b


def test_block_size_one_equals_random_count():
    assert num_kept((16, 16), MaskConfig(0.75, "block", 1)) == num_kept((16, 16), MaskConfig(0.75))


def test_gather_scatter_round_trip():
    x = torch.randn(3, 64, 5)
    ids = sample_keep_ids(3, (8, 8), MaskConfig(0.5))
    kept = gather_tokens(x, ids)
    assert kept.shape == (3, 32, 5)
    back = scatter_tokens(kept, ids, 64, fill=-7.0)
    mask = keep_mask(ids, 3, 64)
    assert torch.equal(back[mask], x[mask])
    assert torch.all(back[~mask] == -7.0)
    assert mask.sum().item() == 3 * 32


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(ratio=1.0), r"ratio must be in \[0, 1\), got 1.0"),
        (dict(ratio=-0.1), r"ratio must be in \[0, 1\), got -0.1"),
        (dict(ratio=0.5, strategy="grid"), "strategy must be one of"),
        (dict(ratio=0.5, strategy="block", block_size=3), r"block_size 3 does not divide the token grid \(8, 8\)"),
        (dict(ratio=0.5, strategy="block", block_size=0), "block_size must be >= 1"),
        (dict(ratio=0.99), "ratio 0.99 keeps no token of a"),
    ],
)
def test_bad_mask_config(kwargs, message):
    mask = MaskConfig(**kwargs)
    assert len(mask.problems((8, 8))) == 1
    with pytest.raises(ValueError, match=message):
        sample_keep_ids(2, (8, 8), mask)


def test_every_mask_problem_at_once_and_grid_checks_only_with_a_grid():
    assert len(MaskConfig(ratio=2.0, strategy="grid", block_size=0).problems()) == 3
    assert MaskConfig(0.5, "block", 3).problems() == []  # no grid given: the block size cannot be judged yet
    assert MaskConfig().problems((16, 16)) == [] and MaskConfig() == MaskConfig(0.75, "random", 1)
