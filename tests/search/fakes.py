"""A cheap fake evaluator: each candidate has a hidden true (drop, speed-up); low fidelity adds bounded noise."""

from __future__ import annotations

import random

from vitkit.search.space import Candidate, Fidelity


def make_candidates(n: int) -> list[Candidate]:
    return [Candidate(({"tome": {"r": i + 1, "_knob": i + 1}},), "torch") for i in range(n)]


class FakeEvaluator:
    def __init__(self, truth: dict[str, tuple[float, float]], *, noise: float = 0.0, fail_after: int | None = None):
        self.truth, self.noise, self.fail_after = truth, noise, fail_after
        self.calls: list[tuple[str, int]] = []

    def __call__(self, cand: Candidate, fid: Fidelity, data=None) -> dict:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")  # what a killed search looks like to the caller
        self.calls.append((cand.cid, fid.images))
        drop, speed = self.truth[cand.cid]
        jitter = random.Random(f"{cand.cid}{fid.images}").uniform(-1, 1) * self.noise * 100 / fid.images
        return {
            "top1": 0.9 - drop / 100,
            "base_top1": 0.9,
            "drop_pt": drop,
            "speedup": speed + jitter,
            "latency_ratio": speed,
            "size_bytes": int(1000 / speed),
            "images": fid.images,
        }
