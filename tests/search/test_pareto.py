import random

from vitkit.search.pareto import dominates, front_of, pareto_front


def test_known_front():
    pts = [(1, 1), (2, 0), (0, 2), (0.5, 0.5), (1, 1), (2, -1)]
    # (0.5, 0.5) is dominated by (1, 1); (2, -1) by (2, 0); the duplicate (1, 1) stays
    assert pareto_front(pts) == [0, 1, 2, 4]


def test_front_matches_brute_force_and_is_mutually_non_dominated():
    rng = random.Random(0)
    for _ in range(20):
        pts = [(rng.randint(0, 5), rng.randint(0, 5), rng.random()) for _ in range(15)]
        front = pareto_front(pts)
        for i, p in enumerate(pts):
            dominated = any(dominates(q, p) for q in pts)
            assert (i in front) == (not dominated)
        assert not any(dominates(pts[a], pts[b]) for a in front for b in front)


def _row(label, top1, speed, size):
    return {"label": label, "top1": top1, "speedup": speed, "size_bytes": size, "drop_pt": 100 * (0.9 - top1)}


def test_front_of_respects_objective_direction():
    rows = [_row("a", 0.90, 1.0, 100), _row("b", 0.85, 2.0, 50), _row("c", 0.80, 1.5, 10), _row("d", 0.80, 3.0, 200)]
    # throughput: maximize speed-up → c is dominated by b
    assert [r["label"] for r in front_of(rows, "throughput")] == ["d", "b", "a"]
    # size: minimize bytes → d (largest, least accurate) is dominated; c is the smallest
    assert [r["label"] for r in front_of(rows, "size")] == ["c", "b", "a"]
