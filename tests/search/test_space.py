import pytest

from vitkit.errors import ConfigError, OrderError
from vitkit.search.space import DEFAULT_SPACE, parse_space


def test_default_space():
    space = parse_space(None)
    cands = space.candidates()
    assert len(cands) == 34 and len({c.cid for c in cands}) == 34
    for c in cands:
        names = [next(iter(s)) for s in c.steps]
        assert names  # the all-off point is the baseline, not a candidate
        assert not (c.deploy == "ort_int8" and "ptq" in names)
        if "prune" in names:
            assert names[names.index("prune") + 1] == "distill"  # recovery right after pruning
        else:
            assert "distill" not in names


def test_ort_int8_skips_ptq_steps():
    data = dict(DEFAULT_SPACE, axes=[{"transform": "ptq", "param": "w_bits", "values": [4, 8]}])
    labels = [c.label for c in parse_space(data).candidates()]
    assert labels == ["ptq=4@torch", "ptq=8@torch"]  # ORT int8 would replace the fake-quant step


def test_out_of_order_space_names_both_steps():
    data = dict(DEFAULT_SPACE, axes=[DEFAULT_SPACE["axes"][2], DEFAULT_SPACE["axes"][0]])  # tome before prune
    with pytest.raises(OrderError, match="'prune' \\(structure\\) cannot come after 'tome' \\(runtime\\)"):
        parse_space(data)


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"colour": 1}, "unknown search space key"),
        ({"deploy": ["tensorrt"]}, "'deploy' values"),
        ({"eta": 1}, "eta"),
        ({"fidelity": {"images": [500, 100], "repeats": [1, 2]}}, "must not decrease"),
        ({"axes": [{"transform": "tome", "param": "r", "values": [-3]}]}, "ToMeConfig.r"),
        ({"axes": [{"transform": "tomee", "param": "r", "values": [2]}]}, "unknown transform"),
    ],
)
def test_bad_space_is_one_clear_error(patch, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(dict(DEFAULT_SPACE, **patch))
