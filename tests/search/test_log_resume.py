import json

import pytest

from vitkit.errors import ConfigError
from vitkit.search import model_fingerprint
from vitkit.search.core import search
from vitkit.search.log import SearchLog, data_fingerprint
from vitkit.search.space import Fidelity

from ..conftest import make_tiny
from .fakes import FakeEvaluator, make_candidates

FIDS = (Fidelity(50, 1), Fidelity(100, 2), Fidelity(200, 3))
HEADER = {"model": "m", "data": "d", "model_fingerprint": "aaaa", "data_fingerprint": "bbbb"}


def _search(log, ev, cands):
    return search(cands, ev, log, fidelities=FIDS, eta=2, budget=14, objective="throughput", max_drop=1.0)


def _truth(cands):
    return {c.cid: (0.5 * (i % 3), 1.0 + i) for i, c in enumerate(cands)}


def test_resume_skips_finished_evaluations(tmp_path):
    cands = make_candidates(8)
    full_ev = FakeEvaluator(_truth(cands))
    full = _search(SearchLog.open(tmp_path / "full.jsonl", HEADER), full_ev, cands)
    total = len(full_ev.calls)
    assert full.evaluations == total == 14

    path = tmp_path / "killed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _search(SearchLog.open(path, HEADER), FakeEvaluator(_truth(cands), fail_after=9), cands)
    assert len(path.read_text().splitlines()) == 1 + 9  # header + the finished evaluations
    again = FakeEvaluator(_truth(cands))
    resumed = _search(SearchLog.open(path, HEADER), again, cands)
    assert len(again.calls) == total - 9 == resumed.evaluations
    assert resumed.logged == 9
    assert resumed.best["cid"] == full.best["cid"]
    assert [r["cid"] for r in resumed.rows] == [r["cid"] for r in full.rows]
    # a third run measures nothing
    third = FakeEvaluator(_truth(cands))
    _search(SearchLog.open(path, HEADER), third, cands)
    assert third.calls == []


def test_torn_last_line_is_redone(tmp_path):
    cands = make_candidates(4)
    path = tmp_path / "log.jsonl"
    _search(SearchLog.open(path, HEADER), FakeEvaluator(_truth(cands)), cands)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    ev = FakeEvaluator(_truth(cands))
    _search(SearchLog.open(path, HEADER), ev, cands)
    assert len(ev.calls) == 1
    assert all(json.loads(x) for x in path.read_text().splitlines())


@pytest.mark.parametrize("what", ["model", "data"])
def test_foreign_log_is_refused(tmp_path, what):
    path = tmp_path / "log.jsonl"
    SearchLog.open(path, HEADER)
    other = {**HEADER, what: "other", f"{what}_fingerprint": "cccc"}
    with pytest.raises(ConfigError, match=f"another {what}.*refusing to resume"):
        SearchLog.open(path, other)
    path.write_text('{"type": "eval"}\n')
    with pytest.raises(ConfigError, match="not a vitkit search log"):
        SearchLog.open(path, HEADER)


def test_fingerprints_see_weights_and_data():
    from vitkit.data import load_dataset

    a, b = make_tiny(seed=0), make_tiny(seed=1)
    assert model_fingerprint(a) == model_fingerprint(make_tiny(seed=0)) != model_fingerprint(b)
    val, test = load_dataset("digits", "val", model=a), load_dataset("digits", "test", model=a)
    assert data_fingerprint(val) == data_fingerprint(load_dataset("digits", "val", model=a)) != data_fingerprint(test)
