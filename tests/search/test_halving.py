import pytest

from vitkit.errors import ConfigError
from vitkit.search.halving import first_rung_size, rung_sizes, successive_halving

from .fakes import FakeEvaluator, make_candidates


def test_schedule_fits_budget():
    for budget in range(2, 40):
        n0 = first_rung_size(100, budget, 2, 2)
        assert sum(rung_sizes(n0, 2, 2)) <= budget < sum(rung_sizes(n0 + 1, 2, 2))
    assert first_rung_size(5, 100, 3, 3) == 5  # a big budget is capped by the space
    with pytest.raises(ConfigError, match="--budget 2 is too small for 3"):
        first_rung_size(10, 2, 3, 2)


def run(truth, cands, *, noise=0.0, budget=20, max_drop=1.0, images=(50, 100, 200)):
    ev = FakeEvaluator(truth, noise=noise)
    hist = successive_halving(
        cands,
        lambda c, k: ev(c, type("F", (), {"images": images[k]})()),
        images=list(images),
        eta=2,
        budget=budget,
        objective="throughput",
        max_drop=max_drop,
    )
    return hist, ev


def test_promotes_the_fastest_within_budget_and_never_an_infeasible_one_over_a_feasible():
    cands = make_candidates(8)
    # speed-up grows with i, but the three fastest lose 8 pt of accuracy
    truth = {c.cid: (8.0 if i >= 5 else 0.2, 1.0 + i) for i, c in enumerate(cands)}
    hist, ev = run(truth, cands, budget=14)
    sizes = [len(r) for r in hist]
    assert sizes == [8, 4, 2]
    assert len(ev.calls) == sum(sizes) <= 14
    rung1 = {c.cid for c, _ in hist[1]}
    # the four fastest within budget, although 5, 6, 7 are faster
    assert rung1 == {cands[i].cid for i in (4, 3, 2, 1)}
    assert [c.cid for c, _ in hist[2]] == [cands[4].cid, cands[3].cid]


def test_low_fidelity_slack_keeps_a_borderline_candidate():
    cands = make_candidates(4)
    # 1.5 pt drop: outside a 1 pt budget, but within it + 200/50 = 4 pt slack at the 50-image rung
    truth = {cands[0].cid: (1.5, 9.0), cands[1].cid: (0.0, 2.0), cands[2].cid: (0.0, 1.0), cands[3].cid: (9, 10)}
    hist, _ = run(truth, cands, budget=7, images=(50, 500))
    assert cands[0].cid in {c.cid for c, _ in hist[1]}


def test_samples_when_space_exceeds_budget_deterministically():
    cands = make_candidates(30)
    truth = {c.cid: (0.0, 1.0 + i) for i, c in enumerate(cands)}
    h1, _ = run(truth, cands, budget=9, images=(50, 100))
    h2, _ = run(truth, cands, budget=9, images=(50, 100))
    assert len(h1[0]) == 6 and [c.cid for c, _ in h1[0]] == [c.cid for c, _ in h2[0]]
