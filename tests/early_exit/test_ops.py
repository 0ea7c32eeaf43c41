"""Pure early-exit math: scores, first exit, threshold calibration."""

from __future__ import annotations

import math

import torch

from vitkit.ops.early_exit import (
    ExitCosts,
    calibrate_per_exit,
    calibrate_threshold,
    exit_score_row,
    exit_scores,
    first_exit,
    simulate,
)


def test_scores_are_in_unit_interval_and_ordered():
    logits = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
    conf = exit_scores(logits, "confidence")
    ent = exit_scores(logits, "entropy")
    assert math.isclose(conf[0].item(), 1 / 3, rel_tol=1e-6) and abs(ent[0].item()) < 1e-6
    assert conf[1] > conf[2] > conf[0] and ent[1] > ent[2] > ent[0]
    assert ((ent >= 0) & (ent <= 1)).all()


def test_first_exit_and_simulate():
    scores = torch.tensor([[0.9, 0.2, 0.2], [0.1, 0.8, 0.3]])  # [E=2, N=3]
    idx = first_exit(scores, torch.tensor([0.5, 0.5]))
    assert idx.tolist() == [0, 1, 2]
    correct = torch.tensor([[True, False, False], [False, True, False], [False, False, True]])
    _, hit = simulate(scores, correct, torch.tensor([0.5, 0.5]))
    assert hit.tolist() == [True, True, True]
    costs = ExitCosts(embed=1.0, block_costs=(1.0, 1.0, 1.0), exits=(0, 1), heads=(0.5, 0.5), final=0.5)
    assert costs.path().tolist() == [2.5, 4.0, 5.5] and costs.full == 4.5
    assert costs.path([False, True]).tolist() == [2.0, 3.5, 5.0]  # an inactive head is not paid


def test_calibration_respects_the_drop_budget():
    g = torch.Generator().manual_seed(0)
    E, N = 3, 400
    scores = torch.rand(E, N, generator=g)
    # confident exits are right more often; the final head is right 95 % of the time
    correct = torch.cat([torch.rand(E, N, generator=g) < scores, torch.rand(1, N, generator=g) < 0.95])
    base = correct[-1].float().mean().item()
    prev_t = 1.0
    for budget in (0.0, 1.0, 5.0, 100.0):
        t, info = calibrate_threshold(scores, correct, budget)
        assert 0 < t < 1
        assert info["drop_pts"] <= budget + 1e-9
        assert math.isclose(info["top1_full"], base)
        assert sum(info["exits"]) == N
        assert t <= prev_t + 1e-12  # a larger budget never needs a higher threshold
        prev_t = t
    t, info = calibrate_threshold(scores, correct, 100.0)
    assert info["exits"][0] == N  # unlimited budget: everything leaves at the first exit


def test_row_score_matches_tensor_score():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(3)) * 3
    for crit in ("confidence", "entropy"):
        ref = exit_scores(logits, crit)
        row = torch.tensor([exit_score_row(r, crit) for r in logits.tolist()])
        torch.testing.assert_close(row, ref, rtol=1e-5, atol=1e-6)


def _table(seed: int = 0, E: int = 3, N: int = 400):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(E, N, generator=g)
    correct = torch.cat([torch.rand(E, N, generator=g) < scores, torch.rand(1, N, generator=g) < 0.95])
    return scores, correct


def test_per_exit_calibration_fits_the_budget_and_never_costs_more_than_one_threshold():
    scores, correct = _table()
    costs = ExitCosts(embed=2.0, block_costs=(1.0,) * 6, exits=(1, 2, 3), heads=(0.3, 0.3, 0.3), final=0.2)
    for budget in (0.0, 1.0, 3.0):
        t, _ = calibrate_threshold(scores, correct, budget)
        single_idx, _ = simulate(scores, correct, torch.full((3,), t))
        single_cost = costs.path()[single_idx].mean().item()
        thr, active, info = calibrate_per_exit(scores, correct, budget, costs)
        eff = torch.tensor([x if a else 2.0 for x, a in zip(thr, active, strict=True)])
        idx, hit = simulate(scores, correct, eff)
        drop = 100 * (correct[-1].float().mean() - hit.float().mean()).item()
        assert drop <= budget + 1e-9 and abs(drop - info["drop_pts"]) < 1e-6
        assert all(0 < x < 1 for x in thr)
        cost = costs.path(active)[idx].mean().item()
        assert cost <= single_cost + 1e-9
        assert abs(info["cost_ratio"] - costs.full / cost) < 1e-6
        assert sum(info["exits"]) == scores.shape[1]


def test_per_exit_calibration_switches_off_an_exit_that_never_pays():
    scores, correct = _table(1)
    scores[1] = 0.0  # the middle exit is never confident: evaluating its head is pure cost
    costs = ExitCosts(embed=0.0, block_costs=(1.0,) * 5, exits=(0, 1, 2), heads=(0.5, 0.5, 0.5), final=0.0)
    _, active, info = calibrate_per_exit(scores, correct, 2.0, costs)
    assert active[1] is False and info["exits"][1] == 0
