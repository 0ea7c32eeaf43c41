"""Patch corruption and one-pixel shift consistency (vitkit.bench.robustness)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vitkit.bench.robustness import RobustnessSpec, corrupt_patches, robustness, shift_pixels


class MeanIntensity(nn.Module):
    """A classifier invariant to circular shifts: logits from the mean of each channel."""

    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return torch.cat([m, -m], dim=1)


class TopLeftPixel(nn.Module):
    """A classifier that only looks at one pixel: any shift changes what it sees."""

    def forward(self, x):
        v = x[:, 0, 0, 0:1]
        return torch.cat([v, -v], dim=1)


class Tensors(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = (self.x.mean(dim=(1, 2, 3)) < 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_corrupts_exactly_the_requested_cells():
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    out = corrupt_patches(x, (4, 4), 0.25, torch.Generator().manual_seed(0))
    cells = (out != x).view(3, 4, 4, 4, 4)  # (B, grid_h, patch_h, grid_w, patch_w)
    assert cells.any(4).any(2).flatten(1).sum(1).tolist() == [4, 4, 4]
    assert (cells.any(4).any(2) == cells.all(4).all(2)).all()  # 25 % of the 16 cells, whole cells only
    assert torch.equal(x, before)  # input untouched


def test_shift_is_one_pixel_circular():
    x = torch.arange(2 * 16).float().view(2, 1, 4, 4)
    out = shift_pixels(x, 1, torch.Generator().manual_seed(0))
    for i in range(2):
        assert any(torch.equal(out[i], torch.roll(x[i], s, d)) for s in (1, -1) for d in (1, 2))


def test_shift_invariant_model_is_fully_consistent_and_pixel_model_is_not():
    data = Tensors()
    inv, pix = robustness([MeanIntensity(), TopLeftPixel()], data, RobustnessSpec(), patch=(4, 4))
    assert inv["shift_consistency"] == 1.0
    assert pix["shift_consistency"] < 0.9
    assert 0.0 <= inv["patch_corrupt_top1"] <= 1.0


def test_same_model_twice_gives_identical_numbers():
    data = Tensors()
    a, b = robustness([MeanIntensity(), MeanIntensity()], data, RobustnessSpec(patch_fraction=0.5), patch=(4, 4))
    assert a == b


@pytest.mark.parametrize("kwargs", [{"patch_fraction": 0}, {"patch_fraction": 1.5}, {"shift": 0}])
def test_bad_spec(kwargs):
    with pytest.raises(ValueError):
        RobustnessSpec(**kwargs)
