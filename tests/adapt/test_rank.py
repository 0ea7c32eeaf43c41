"""The rank a fine-tuning used: Eckart–Young energy and truncation (ops), per-layer spectrum and truncated model."""

import copy

import pytest
import torch

import vitkit
from vitkit import ConfigError
from vitkit.adapt import LoRAConfig, lora_modules, truncate_to_rank, update_spectrum
from vitkit.api import merge_back
from vitkit.ops.lora import truncate_update, update_energy

from ..conftest import make_tiny


def test_energy_and_truncation_follow_the_singular_values():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 5, generator=g))  # [12, 5] orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(9, 5, generator=g))  # [9, 5]
    s = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5])
    delta = (u * s) @ v.T  # [12, 9], rank 5 with known singular values
    before = delta.clone()
    total = float((s**2).sum())
    got = update_energy(delta, [1, 2, 5, 9])
    assert got == pytest.approx([25 / total, 34 / total, 1.0, 1.0], abs=1e-5)
    best2 = truncate_update(delta, 2)
    assert torch.linalg.matrix_rank(best2) == 2
    torch.testing.assert_close(best2, (u[:, :2] * s[:2]) @ v[:, :2].T, atol=1e-5, rtol=0)
    # the residual's energy is what rank 2 leaves out (Eckart–Young)
    assert float((delta - best2).norm() ** 2) == pytest.approx(total - 34, rel=1e-4)
    assert torch.equal(delta, before)
    assert update_energy(torch.zeros(3, 4), [1, 2]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="rank"):
        truncate_update(delta, 0)


def _tuned_with_rank(base, rank, seed=0):
    """A 'fine-tuned' copy of base whose block-linear updates have exactly rank ``rank`` (via folded LoRA)."""
    tuned = copy.deepcopy(base)
    vitkit.apply_(tuned, LoRAConfig(rank=rank, alpha=rank))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(tuned).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return merge_back(tuned)


def test_spectrum_sees_a_rank_2_update_and_truncation_keeps_it(images):
    base = make_tiny(seed=1)
    tuned = _tuned_with_rank(base, 2)
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    spec = update_spectrum(base, tuned, ranks=(1, 2, 4))
    assert len(spec["layers"]) == 4 * len(base.blocks)
    assert spec["mean"]["energy"][2] == pytest.approx(1.0, abs=1e-5)
    assert spec["mean"]["energy"][1] < 0.999
    assert all(v["relative_norm"] > 0 for v in spec["layers"].values())
    same = truncate_to_rank(base, tuned, 2)
    torch.testing.assert_close(same(images), tuned(images), atol=1e-4, rtol=0)
    cut = truncate_to_rank(base, tuned, 1)
    assert not torch.allclose(cut(images), tuned(images), atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())  # input untouched


def test_spectrum_refuses_unfolded_lora_and_other_architectures():
    base = make_tiny(seed=1)
    with_lora = copy.deepcopy(base)
    vitkit.apply_(with_lora, LoRAConfig(rank=2))
    with pytest.raises(ConfigError, match="merge_back"):
        update_spectrum(base, with_lora)
    other = make_tiny(seed=1, embed_dim=24)
    with pytest.raises(ConfigError, match="not the same architecture"):
        update_spectrum(base, other)
