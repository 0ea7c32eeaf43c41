import pytest

from vitkit.errors import ConfigError
from vitkit.validate import check_bool, check_choice, check_int, check_ints, check_number


def test_int_bounds_and_bool_refused():
    assert check_int(3, "X.n", low=1) == 3
    assert check_int(None, "X.n", low=1, optional=True) is None
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ConfigError, match=r"X\.n must be a positive int, got"):
            check_int(bad, "X.n", low=1)
    with pytest.raises(ConfigError, match=r"in \[2, 8\]"):
        check_int(9, "X.bits", low=2, high=8)


def test_number_open_bounds_and_nan():
    assert check_number(0.5, "X.r", low=0.0, high=1.0, high_open=True) == 0.5
    for bad in (1.0, -0.1, float("nan"), False, "0.5"):
        with pytest.raises(ConfigError, match=r"X\.r must be in \[0, 1\), got"):
            check_number(bad, "X.r", low=0.0, high=1.0, high_open=True)


def test_choice_bool_and_lists():
    assert check_choice("a", "X.m", ("a", "b")) == "a"
    with pytest.raises(ConfigError, match=r"X\.m must be one of \['a', 'b'\], got 'c'"):
        check_choice("c", "X.m", ("a", "b"))
    with pytest.raises(ConfigError, match="true or false"):
        check_bool(1, "X.flag")
    assert check_ints([1, 2], "X.l", low=1) == (1, 2)
    for bad in ([], [0], "12", [True], 3):
        with pytest.raises(ConfigError, match=r"X\.l must be a non-empty list of ints"):
            check_ints(bad, "X.l", low=1)
