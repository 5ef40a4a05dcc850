"""Tests of vgym/rewards.py: text normalisation, the verifiers and the composite reward (values worked by
hand)."""

from __future__ import annotations

import math

import pytest

from vgym.errors import InvalidConfigError
from vgym.rewards import (
    RewardConfig,
    RewardParts,
    composite_reward,
    exact_match_reward,
    multiple_choice_reward,
    normalize_text,
    numeric_reward,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  The Red.  ", "red"),  # case, article, punctuation and outer spaces
        ("A  big\tDOG!", "big dog"),  # inner whitespace collapses
        ("an apple, the pear", "apple pear"),
        ("theatre", "theatre"),  # "the" only as a whole word
        ("Hello,World", "helloworld"),  # punctuation is deleted, not replaced by a space
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "prediction, gold, aliases, expected",
    [
        ("red", "Red.", (), 1.0),
        ("The red", "red", (), 1.0),
        ("dark red", "red", (), 0.0),
        ("", "red", (), 0.0),
        ("crimson", "red", ("scarlet", "Crimson"), 1.0),
        ("blue", "red", ("scarlet", "crimson"), 0.0),
    ],
)
def test_exact_match_reward(prediction: str, gold: str, aliases: tuple[str, ...], expected: float) -> None:
    assert exact_match_reward(prediction, gold, aliases) == expected


OPTIONS = ["cat", "dog", "bird"]  # lettered A, B, C; gold is B = "dog"


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("B", 1.0),
        ("b", 1.0),
        ("(b)", 1.0),
        ("B.", 1.0),
        ("B)", 1.0),
        ("B:", 1.0),
        ("  B ", 1.0),
        ("dog", 1.0),  # the option text
        ("The dog.", 1.0),  # normalised option text
        ("A", 0.0),
        ("(C)", 0.0),
        ("D", 0.0),  # a letter past the options
        ("cat", 0.0),
        ("B or C", 0.0),
        ("", 0.0),
    ],
)
def test_multiple_choice_reward(prediction: str, expected: float) -> None:
    assert multiple_choice_reward(prediction, OPTIONS, gold_index=1) == expected


@pytest.mark.parametrize("gold_index", [-1, 3])
def test_multiple_choice_gold_out_of_range_raises(gold_index: int) -> None:
    with pytest.raises(ValueError, match=rf"gold_index {gold_index} outside the 3 options"):
        multiple_choice_reward("A", OPTIONS, gold_index)


@pytest.mark.parametrize(
    "prediction, gold, rel_tol, abs_tol, expected",
    [
        ("12", 12, 0.0, 0.0, 1.0),
        ("about 12.5 m", 12.5, 0.0, 0.0, 1.0),
        ("12.4", 12.5, 0.0, 0.0, 0.0),  # exact by default
        ("12.4", 12.5, 0.0, 0.2, 1.0),  # |12.4-12.5| = 0.1 <= 0.2
        ("12.2", 12.5, 0.0, 0.2, 0.0),  # |12.2-12.5| = 0.3 >  0.2
        ("105", 100, 0.05, 0.0, 1.0),  # |5| <= 0.05 * max(105, 100) = 5.25
        ("106", 100, 0.05, 0.0, 0.0),  # |6| >  0.05 * max(106, 100) = 5.3
        ("1,000", 1000, 0.0, 0.0, 1.0),  # thousands separators removed
        ("1,000,000 people", 1e6, 0.0, 0.0, 1.0),
        ("-2", -2, 0.0, 0.0, 1.0),
        ("+2", 2, 0.0, 0.0, 1.0),
        (".5", 0.5, 0.0, 0.0, 1.0),
        ("1e3", 1000, 0.0, 0.0, 1.0),
        ("3 or 4", 3, 0.0, 0.0, 0.0),  # two numbers: ambiguous
        ("12 apples and 3 pears", 12, 0.0, 0.0, 0.0),
        ("no idea", 3, 0.0, 0.0, 0.0),  # no number
        ("", 0, 0.0, 0.0, 0.0),
        ("nan", math.nan, 0.0, 0.0, 0.0),  # "nan" is not a number to the parser
        ("inf", math.inf, 0.0, 0.0, 0.0),
        ("1e999", math.inf, 0.0, 0.0, 0.0),  # parses to inf, which is never a valid answer
        ("3", math.nan, 0.0, 1e9, 0.0),  # a nan gold matches nothing, whatever the tolerance
    ],
)
def test_numeric_reward(
    prediction: str, gold: float, rel_tol: float, abs_tol: float, expected: float
) -> None:
    assert numeric_reward(prediction, gold, rel_tol=rel_tol, abs_tol=abs_tol) == expected


@pytest.mark.parametrize("format_weight, tool_weight", [(0.0, 0.0), (0.1, 0.0), (0.1, 0.2), (0.0, 0.99)])
def test_reward_config_accepts_valid_weights(format_weight: float, tool_weight: float) -> None:
    assert RewardConfig(format_weight, tool_weight).tool_weight == tool_weight


@pytest.mark.parametrize(
    "format_weight, tool_weight", [(-0.1, 0.0), (0.0, -0.1), (0.5, 0.5), (0.6, 0.5), (1.0, 0.0)]
)
def test_reward_config_rejects_invalid_weights(format_weight: float, tool_weight: float) -> None:
    with pytest.raises(InvalidConfigError, match=r"format_weight \+ tool_weight < 1"):
        RewardConfig(format_weight, tool_weight)


@pytest.mark.parametrize(
    "accuracy, format_ok, tool_used, total",
    [
        # weights 0.1 (format) / 0.2 (tool) leave 1 - 0.1 - 0.2 = 0.7 for accuracy
        (1.0, True, True, 1.0),  # 0.7*1 + 0.1 + 0.2
        (1.0, True, False, 0.8),  # 0.7 + 0.1; no tool bonus without a tool
        (1.0, False, False, 0.7),  # accuracy alone
        (0.0, True, True, 0.1),  # tool used but the answer is wrong: the tool part is not paid
        (0.0, False, True, 0.0),
        (0.5, True, True, 0.65),  # 0.7*0.5 + 0.1 + 0.2 (partial credit still unlocks the tool part)
    ],
)
def test_composite_reward_by_hand(accuracy: float, format_ok: bool, tool_used: bool, total: float) -> None:
    parts = composite_reward(accuracy, format_ok, tool_used, RewardConfig(format_weight=0.1, tool_weight=0.2))
    assert parts.total == pytest.approx(total)
    assert parts.accuracy == accuracy
    assert parts.format == float(format_ok)
    assert parts.tool == float(tool_used)  # the part records use even when it is not paid


def test_composite_reward_default_weights() -> None:
    # Defaults: format 0.1, tool 0 -> 0.9 * accuracy + 0.1 * format.
    assert composite_reward(1.0, True, False, RewardConfig()).total == pytest.approx(1.0)
    assert composite_reward(1.0, False, True, RewardConfig()).total == pytest.approx(0.9)
    assert composite_reward(0.0, True, True, RewardConfig()).total == pytest.approx(0.1)


def test_reward_parts_as_dict() -> None:
    parts = RewardParts(accuracy=1.0, format=0.0, tool=1.0, total=0.9)
    assert parts.as_dict() == {"accuracy": 1.0, "format": 0.0, "tool": 1.0, "total": 0.9}


def test_box_iou_reward_hand_computed() -> None:
    from vgym.rewards import box_iou_reward

    # [0,0,10,10] vs [5,0,15,10]: intersection 5*10 = 50, union 100 + 100 - 50 = 150 -> 1/3
    assert box_iou_reward("[0, 0, 10, 10]", [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert box_iou_reward("the box is [5, 0, 15, 10].", [5, 0, 15, 10]) == pytest.approx(1.0)
    assert box_iou_reward("[1, 2, 3]", [0, 0, 1, 1]) == 0.0  # three numbers
    assert box_iou_reward("[10, 0, 0, 10]", [0, 0, 10, 10]) == 0.0  # inverted
    assert box_iou_reward("[20, 20, 30, 30]", [0, 0, 10, 10]) == 0.0  # disjoint


def test_interval_iou_reward_hand_computed() -> None:
    from vgym.rewards import interval_iou_reward

    # [1, 3] vs [2, 4]: intersection 1, union 2 + 2 - 1 = 3 -> 1/3
    assert interval_iou_reward("[1.0, 3.0]", [2, 4]) == pytest.approx(1 / 3)
    assert interval_iou_reward("from 2 to 4 s", [2, 4]) == pytest.approx(1.0)
    assert interval_iou_reward("[3, 1]", [1, 3]) == 0.0
    assert interval_iou_reward("[nan, 3]", [1, 3]) == 0.0


def test_parse_numbers_reads_a_dash_after_a_digit_as_a_range() -> None:
    from vgym.rewards import parse_numbers

    assert parse_numbers("1.2-2.5 s") == [1.2, 2.5]  # a range, not 1.2 and -2.5
    assert parse_numbers("[-3, 4]") == [-3.0, 4.0]  # a leading minus is still a sign
    assert parse_numbers("[1e-3, 2]") == [0.001, 2.0]  # exponent signs stay inside their number


def test_box_reward_reads_the_last_bracketed_group_and_ignores_digits_in_names() -> None:
    from vgym.rewards import box_iou_reward, parse_numbers

    assert box_iou_reward("image 0: [10, 20, 30, 40]", [10, 20, 30, 40]) == 1.0
    assert box_iou_reward("x1=10, y1=20, x2=30, y2=40", [10, 20, 30, 40]) == 1.0
    assert parse_numbers("x1=10 t0 5") == [10.0, 5.0]


def test_multiple_choice_accepts_a_letter_with_its_own_option_text() -> None:
    from vgym.rewards import multiple_choice_reward

    options = ["red square", "blue circle", "green triangle"]
    assert multiple_choice_reward("A. red square", options, 0) == 1.0
    assert multiple_choice_reward("(B) blue circle", options, 0) == 0.0  # a consistent but wrong pick
    assert multiple_choice_reward("A. blue circle", options, 0) == 0.0  # letter and text disagree
