"""The claim rules that decide confirmed / refuted."""

import math

import pytest

from experiments.runtime.claims import Claim, claims_markdown, evaluate_rule


@pytest.mark.parametrize("rule, value, expected", [
    ("< 0.01", 0.005, True), ("< 0.01", 0.01, False), ("<= 0.01", 0.01, True),
    ("> 10", 759.7, True), (">= 10", 9.99, False), ("in [0.5, 2]", 2.0, True),
    ("in [0.5, 2]", 0.49, False), ("== true", True, True), ("== false", True, False),
    ("> 1e-3", 2e-3, True),
])
def test_rules(rule, value, expected):
    assert evaluate_rule(rule, value) is expected


def test_missing_or_nan_measurements_never_confirm():
    assert Claim("x", None, "> 0").verdict == "refuted"
    assert Claim("x", math.nan, "< 1").verdict == "refuted"


def test_unparseable_rule_is_an_error():
    with pytest.raises(ValueError, match="cannot parse"):
        evaluate_rule("about 3", 3)


def test_markdown_table_escapes_pipes():
    table = claims_markdown([Claim("a | b", 0.0, "< 1e-5", "max |w|")])
    row = table.splitlines()[-1]
    assert row.count(" | ") == 3 and "a \\| b" in row and "max \\|w\\|" in row
