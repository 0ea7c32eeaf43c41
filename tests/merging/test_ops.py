"""Unit tests of the pure merging ops (vitkit.ops.merging)."""

import pytest
import torch

from vitkit.ops import merging as ops


def test_opcm_reduced_svd_equals_full():
    g = torch.Generator().manual_seed(0)
    for shape in [(30, 12), (12, 30), (20, 20)]:
        d = torch.randn(*shape, generator=g, dtype=torch.float64)
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        for alpha in (0.1, 0.5, 0.9):
            assert torch.allclose(ops.opcm_project(d, t, alpha), ops.opcm_project_full(d, t, alpha), atol=1e-12)


def test_opcm_projection_removes_dominant_subspace():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(16, 8, generator=g, dtype=torch.float64)
    t = torch.randn(16, 8, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    r = ops.opcm_split_rank(s, 0.5)
    out = ops.opcm_project(d, t, 0.5)
    p = u.T @ out @ vh.T
    assert torch.allclose(p.diagonal(), torch.zeros(8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p[:r, :r], torch.zeros(r, r, dtype=torch.float64), atol=1e-12)
    assert torch.equal(ops.opcm_project(torch.zeros(4, 3), t[:4, :3].float(), 0.5), t[:4, :3].float())


def test_ties_trim_elect_disjoint_mean():
    tau = torch.tensor([0.1, -3.0, 2.0, 0.5, -0.2])
    assert torch.equal(ops.ties_trim(tau, 0.4), torch.tensor([0.0, -3.0, 2.0, 0.0, 0.0]))
    taus = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, 0.0], [-1.0, -2.0, 0.0]])
    sign = ops.ties_elect_sign(taus)
    assert torch.equal(sign, torch.tensor([1.0, -1.0, 0.0]))
    merged = ops.ties_disjoint_merge(taus, sign)
    assert torch.allclose(merged, torch.tensor([2.0, -2.0, 0.0]))
    assert torch.allclose(ops.ties_disjoint_merge(taus, sign, aggregate="sum"), torch.tensor([4.0, -4.0, 0.0]))


def test_dare_seeded_and_rescaled():
    tau = torch.ones(10000)
    a = ops.dare_drop(tau, 0.5, torch.Generator().manual_seed(3))
    b = ops.dare_drop(tau, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 2.0}
    assert abs(float(a.mean()) - 1.0) < 0.05  # unbiased in expectation
    assert torch.equal(ops.dare_drop(tau, 0.0, torch.Generator()), tau)


def test_regmean_identical_and_equal_grams():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=g)
    x = torch.randn(50, 4, generator=g)
    gram = x.T @ x
    assert torch.allclose(ops.regmean_merge([w, w], [gram, gram]), w, atol=1e-5)
    w2 = torch.randn(5, 4, generator=g)
    # identical Gram matrices → the plain average (the reduced G̃ is the same for both)
    assert torch.allclose(ops.regmean_merge([w, w2], [gram, gram]), (w + w2) / 2, atol=1e-5)


def test_match_permutation_recovers_shuffle():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 12, generator=g)
    perm = torch.randperm(12, generator=g)
    b = torch.empty_like(a)
    b[:, perm] = a  # unit j of a is unit perm[j] of b
    found = ops.match_permutation(a, b)
    assert torch.equal(b[:, found], a)


def test_least_squares_fit_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g)
    w, b = torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    wf, bf = ops.least_squares_fit(x, x @ w.T + b, ridge=0.0)
    assert torch.allclose(wf, w, atol=1e-4) and torch.allclose(bf, b, atol=1e-4)


def test_frank_wolfe_step():
    assert ops.frank_wolfe_gamma(0) == 1.0 and ops.frank_wolfe_gamma(2, 0.5) == 0.25
    th, v = torch.zeros(3), torch.ones(3)
    assert torch.equal(ops.frank_wolfe_step(th, v, 0.25), torch.full((3,), 0.25))


def test_bad_arguments():
    with pytest.raises(ValueError):
        ops.ties_trim(torch.ones(3), 0.0)
    with pytest.raises(ValueError):
        ops.dare_drop(torch.ones(3), 1.0, torch.Generator())
    with pytest.raises(ValueError):
        ops.weighted_average([torch.ones(2)], [1.0, 2.0])
