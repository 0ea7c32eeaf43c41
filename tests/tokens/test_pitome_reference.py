"""PiToMe against the paper (Tran et al., NeurIPS 2024, Eq. 4, Alg. 1) and the published code's rules.

The oracle below is written from the algorithm's description (plain Python loops, one image at a time), not
from vitkit's vectorised ops, so the two implementations only agree if both follow the same rules.
"""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.errors import ConfigError
from vitkit.ops.token_merging import pitome_energy, pitome_matching
from vitkit.tokens import PiToMeConfig
from vitkit.tokens.pitome import apply_pitome

from ..conftest import make_tiny


def test_energy_equals_eq4_on_a_hand_computed_example():
    # three unit vectors: cos(v0, v1) = 0.8, cos(v0, v2) = 0, cos(v1, v2) = 0.6
    v = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]])
    m, a = 0.5, 1.0
    below = lambda x: a * (math.exp(x - m) - 1)  # noqa: E731
    # "elu" (published code): x − m at or above the margin; the diagonal (cos = 1) is included
    elu = [
        ((1 - m) + (0.8 - m) + below(0.0)) / 3,
        ((0.8 - m) + (1 - m) + (0.6 - m)) / 3,
        (below(0.0) + (0.6 - m) + (1 - m)) / 3,
    ]
    # "eq4" (as printed): x itself at or above the margin
    eq4 = [(1 + 0.8 + below(0.0)) / 3, (0.8 + 1 + 0.6) / 3, (below(0.0) + 0.6 + 1) / 3]
    got_elu, sim = pitome_energy(v, m, a)
    got_eq4, _ = pitome_energy(v, m, a, form="eq4")
    assert torch.allclose(got_elu[0], torch.tensor(elu), atol=1e-6)
    assert torch.allclose(got_eq4[0], torch.tensor(eq4), atol=1e-6)
    assert torch.allclose(sim[0, 0], torch.tensor([1.0, 0.8, 0.0]), atol=1e-6)
    # the elu form is torch's ELU of (cos − m), averaged
    assert torch.allclose(got_elu, torch.nn.functional.elu(sim - m, alpha=a).mean(-1), atol=1e-6)


def _oracle(metric, x, r, P, margin, split):
    """One image: ``metric`` [N, C], ``x`` [N, D]. Returns the merged tokens as a list, in reference order."""
    T = metric.shape[0] - P
    pm = [metric[P + i] / metric[P + i].norm() for i in range(T)]
    cos = [[float(pm[i] @ pm[j]) for j in range(T)] for i in range(T)]
    energy = [sum((c - margin) if c >= margin else math.expm1(c - margin) for c in row) / T for row in cos]
    order = sorted(range(T), key=lambda i: -energy[i])
    toks = {i: (x[P + i].clone(), 1.0) for i in range(T)}  # patch index -> (sum of x, size)
    if split == "pitome":
        protected, pool = order[2 * r :], order[: 2 * r]
        a, b = pool[0::2], pool[1::2]
        merges = [(s, max(b, key=lambda j, s=s: cos[s][j])) for s in a]
        unmerged_a = []
    else:
        protected, a, b = [], order[0::2], order[1::2]
        best = {s: max(b, key=lambda j, s=s: cos[s][j]) for s in a}
        ranked = sorted(a, key=lambda s: -cos[s][best[s]])
        merges = [(s, best[s]) for s in ranked[:r]]
        unmerged_a = ranked[r:]
    for s, d in merges:
        toks[d] = (toks[d][0] + toks[s][0], toks[d][1] + 1)
    out = [x[i] for i in range(P)]
    out += [toks[i][0] / toks[i][1] for i in protected + unmerged_a + b]
    return torch.stack(out)


@pytest.mark.parametrize("split", ["pitome", "bsm"])
@pytest.mark.parametrize("r", [1, 3, 5])
def test_matching_matches_the_reference_rules(split, r):
    g = torch.Generator().manual_seed(r)
    B, N, P = 2, 13, 1
    metric = torch.randn(B, N, 6, generator=g, dtype=torch.float64)
    x = torch.randn(B, N, 4, generator=g, dtype=torch.float64)
    red = pitome_matching(metric, r, P, margin=0.1, split=split)
    y, size = red.merge(x)
    assert y.shape == (B, N - r, 4) and size.sum(dim=1).flatten().tolist() == [N] * B
    for i in range(B):
        assert torch.allclose(y[i], _oracle(metric[i], x[i], r, P, 0.1, split), atol=1e-10)


def test_most_isolated_token_is_protected_in_pitome_split():
    base = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(0))
    cluster = base + 0.01 * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    loner = -base
    metric = torch.cat([torch.randn(1, 1, 8), cluster, loner], dim=1)
    red = pitome_matching(metric, r=4, num_protected=1, margin=0.5)
    assert 9 in red.keep[0].tolist() and 9 not in red.src[0].tolist()


def _reference_counts(num_patches: int, ratios: list[float]) -> list[int]:
    t, counts = num_patches, [num_patches]
    for k in ratios:
        t -= math.floor(t - t * k) if k < 1.0 else 0  # keep ratio applied to the current count
        counts.append(t)
    return counts


@pytest.mark.parametrize("ratio", [0.9, 0.93, 0.75, 0.5])
def test_tokens_per_layer_follow_the_reference_keep_ratio(ratio):
    model = make_tiny("vit")
    d = apply_pitome(model, PiToMeConfig(ratio=ratio), dry_run=True)
    n = d["tokens_per_layer"][0] - 1  # one class token
    expected = _reference_counts(n, [ratio] * len(d["ratio_per_layer"]))
    assert [c - 1 for c in d["tokens_per_layer"]] == expected
    # 196 patches at 0.9 (ViT-B/16 at 224): 19 merged in block 0, 17 in block 1 — geometric, not constant
    assert _reference_counts(196, [0.9, 0.9])[1:] == [177, 160]


def test_reference_matching_schedule_and_margins():
    model = make_tiny("vit")
    d = apply_pitome(model, PiToMeConfig(ratio=0.8), dry_run=True)
    L = len(d["ratio_per_layer"])
    n_bsm = math.ceil(L / 2)
    assert d["matching_per_layer"] == ["bsm"] * n_bsm + ["pitome"] * (L - n_bsm)
    assert d["margin_per_layer"] == [round(0.75 - 0.75 * i / L, 6) for i in range(L)]
    d1 = apply_pitome(model, PiToMeConfig(ratio=0.8, matching="pitome"), dry_run=True)
    assert d1["matching_per_layer"] == ["pitome"] * L


def test_version_1_configs_keep_their_energy_and_matching():
    old = PiToMeConfig.from_dict({"ratio": 0.9, "version": 1})
    assert (old.energy, old.matching, old.prop_attn) == ("eq4", "pitome", True)
    assert PiToMeConfig.from_dict({"ratio": 0.9}, version=1).energy == "eq4"
    assert PiToMeConfig.from_dict({"ratio": 0.9, "energy": "elu"}, version=1).energy == "elu"
    new = PiToMeConfig.from_dict({"ratio": 0.9})
    assert (new.energy, new.matching, new.prop_attn) == ("elu", "reference", False)
    cfg = PiToMeConfig(ratio=0.85, energy="eq4", matching="bsm")
    assert PiToMeConfig.from_dict(cfg.to_dict(), version=PiToMeConfig.version) == cfg
    with pytest.raises(ConfigError, match="energy"):
        PiToMeConfig(energy="gauss")
    with pytest.raises(ConfigError, match="matching"):
        PiToMeConfig(matching="tome")
