"""Parameter validation and parameters-cell parsing.  Run: .venv/bin/python -m pytest tests/test_params.py"""

import pytest

from ftlab.core import params as P

GOOD = {
    "run_name": "r1",
    "base_model": "tiny-random",
    "chat_check": False,
    "require_gpu": False,
    "bnb_smoke_test": True,
    "min_free_disk_gb": 1,
    "min_ram_gb": 2.5,
}


def test_valid_params_pass_and_ints_widen_to_float():
    out = P.validate("00_check_environment", GOOD)
    assert out["min_free_disk_gb"] == 1.0 and isinstance(out["min_free_disk_gb"], float)


def test_unknown_name_lists_valid_names():
    with pytest.raises(P.ParamError) as e:
        P.validate("00_check_environment", {**GOOD, "lora_rnak": 8})
    msg = str(e.value)
    assert "unknown parameter 'lora_rnak'" in msg and "valid names: base_model" in msg


@pytest.mark.parametrize(
    "name, value, expect",
    [
        ("require_gpu", 1, "expected bool"),  # an int is not a bool
        ("min_ram_gb", True, "expected float"),  # a bool is not a number
        ("min_ram_gb", -1, "in [0, inf]"),
        ("min_ram_gb", "8", "found str"),
        ("run_name", "../../etc", "run_name must be"),
        ("run_name", "a/b", "run_name must be"),
        ("run_name", None, "found NoneType"),
    ],
)
def test_bad_values_name_what_was_expected(name, value, expect):
    with pytest.raises(P.ParamError) as e:
        P.validate("00_check_environment", {**GOOD, name: value})
    assert expect in str(e.value) and name in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(P.ParamError) as e:
        P.validate("00_check_environment", {**GOOD, "require_gpu": "yes", "min_ram_gb": -3, "x": 1})
    assert "3 parameter problem(s)" in str(e.value)


def test_missing_parameter_is_an_error():
    bad = dict(GOOD)
    del bad["chat_check"]
    with pytest.raises(P.ParamError, match="missing parameter 'chat_check'"):
        P.validate("00_check_environment", bad)


def test_parse_parameters_cell_with_comments():
    src = (
        'run_name = "x"  # the folder\nlr = 2e-4  # learning rate; higher trains faster, less stably\nt = ["q", "v"]\n'
    )
    got = P.parse_parameters_source(src)
    assert [(d.name, d.default) for d in got] == [("run_name", "x"), ("lr", 2e-4), ("t", ["q", "v"])]
    assert got[1].comment.startswith("learning rate")


@pytest.mark.parametrize("src", ["x = foo()\n", "import os\n", "a = b = 1\n", "x = 1 + y\n"])
def test_parameters_cell_rejects_non_literals(src):
    with pytest.raises(P.ParamError):
        P.parse_parameters_source(src)
