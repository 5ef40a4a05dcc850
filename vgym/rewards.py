"""Reward verifiers and the composite episode reward.

Contents: :func:`normalize_text`, :func:`exact_match_reward`, :func:`multiple_choice_reward`,
:func:`numeric_reward`, :func:`parse_numbers`, :func:`box_iou_reward`, :func:`interval_iou_reward`,
:class:`RewardConfig`, :class:`RewardParts`, :func:`composite_reward`.

Verifiers are pure functions ``(prediction, gold, ...) -> float in [0, 1]``. The composite reward combines the
task's accuracy with a format part and a (conditional) tool-use part and returns every part, so trainers and
evaluation can log them separately.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from vgym.errors import InvalidConfigError

__all__ = [
    "normalize_text",
    "exact_match_reward",
    "multiple_choice_reward",
    "numeric_reward",
    "parse_numbers",
    "box_iou_reward",
    "interval_iou_reward",
    "RewardConfig",
    "RewardParts",
    "composite_reward",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# In lists a sign right after a digit is a range dash ("1.2-2.5"), not a negative number, and digits glued to
# a
# word ("x1", "t0") are names, not numbers.
_LIST_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style normalisation).

    >>> normalize_text("  The Red.  ")
    'red'
    """
    text = text.lower()
    text = text.translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_reward(prediction: str, gold: str, aliases: Iterable[str] = ()) -> float:
    """1.0 if the normalised prediction equals the normalised gold answer or one of its aliases, else 0.0."""
    pred = normalize_text(prediction)
    return float(any(pred == normalize_text(g) for g in (gold, *aliases)))


def multiple_choice_reward(prediction: str, options: Sequence[str], gold_index: int) -> float:
    """Score a multiple-choice answer given as a letter ("B", "(B)", "B.") or as the option text.

    Args:
        prediction: the model's answer.
        options: the option texts, in the order they were lettered A, B, C, ...
        gold_index: index of the correct option.

    Returns:
        1.0 if the prediction picks exactly the gold option, else 0.0.

    Raises:
        ValueError: if ``gold_index`` is outside ``options``.
    """
    if not 0 <= gold_index < len(options):
        raise ValueError(f"gold_index {gold_index} outside the {len(options)} options")
    pred = prediction.strip()
    letter = re.fullmatch(r"\(?([A-Za-z])[).:]?", pred)
    if letter:
        return float(ord(letter.group(1).upper()) - ord("A") == gold_index)
    # "A. red square": a letter followed by that letter's option text counts as the letter.
    labelled = re.fullmatch(r"\(?([A-Za-z])[).:]\s*(.+)", pred, flags=re.DOTALL)
    if labelled:
        index = ord(labelled.group(1).upper()) - ord("A")
        if 0 <= index < len(options) and normalize_text(labelled.group(2)) == normalize_text(options[index]):
            return float(index == gold_index)
    return exact_match_reward(pred, options[gold_index])


def numeric_reward(prediction: str, gold: float, *, rel_tol: float = 0.0, abs_tol: float = 0.0) -> float:
    """1.0 if the single number in ``prediction`` is within tolerance of ``gold``, else 0.0.

    Args:
        prediction: text holding exactly one number ("12", "about 12.5 m"); thousands separators are removed.
        gold: the true value.
        rel_tol: relative tolerance, as in :func:`math.isclose`.
        abs_tol: absolute tolerance, as in :func:`math.isclose`.

    Returns:
        0.0 when the text holds no number or more than one (an ambiguous answer earns nothing).
    """
    numbers = _NUMBER.findall(prediction.replace(",", ""))
    if len(numbers) != 1:
        return 0.0
    value = float(numbers[0])
    return float(math.isfinite(value) and math.isclose(value, gold, rel_tol=rel_tol, abs_tol=abs_tol))


def parse_numbers(text: str) -> list[float]:
    """Every number in ``text`` ("[10, 20.5, 30, 40]" → [10.0, 20.5, 30.0, 40.0]; "1.2-2.5 s" → [1.2, 2.5]).

    Thousands separators are not supported here because commas separate list items; a dash straight after a
    digit is a range, not a minus sign.
    """
    return [float(n) for n in _LIST_NUMBER.findall(text)]


def _answer_numbers(text: str) -> list[float]:
    """The numbers of the last ``[...]`` group in ``text`` when there is one, else of the whole text."""
    groups = re.findall(r"\[([^\[\]]*)\]", text)
    return parse_numbers(groups[-1] if groups else text)


def box_iou_reward(prediction: str, gold: Sequence[float]) -> float:
    """IoU of the box written in ``prediction`` ("[x1, y1, x2, y2]") with ``gold``, in [0, 1].

    The last bracketed group is read when there is one ("image 0: [10, 20, 30, 40]" reads the box).

    Returns:
        0.0 unless that holds exactly four finite numbers forming a non-empty box.
    """
    numbers = _answer_numbers(prediction)
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        return 0.0
    x1, y1, x2, y2 = numbers
    g1, h1, g2, h2 = (float(v) for v in gold)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    iw, ih = max(0.0, min(x2, g2) - max(x1, g1)), max(0.0, min(y2, h2) - max(y1, h1))
    inter = iw * ih
    union = (x2 - x1) * (y2 - y1) + (g2 - g1) * (h2 - h1) - inter
    return inter / union if union > 0 else 0.0


def interval_iou_reward(prediction: str, gold: Sequence[float]) -> float:
    """Temporal IoU of the interval written in ``prediction`` ("[start, end]", seconds) with ``gold``, in [0,
    1].

    The last bracketed group is read when there is one.

    Returns:
        0.0 unless that holds exactly two finite numbers with start < end.
    """
    numbers = _answer_numbers(prediction)
    if len(numbers) != 2 or not all(math.isfinite(v) for v in numbers) or numbers[1] <= numbers[0]:
        return 0.0
    (s, e), (gs, ge) = numbers, (float(gold[0]), float(gold[1]))
    inter = max(0.0, min(e, ge) - max(s, gs))
    union = (e - s) + (ge - gs) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the composite reward; ``accuracy`` gets ``1 - format_weight - tool_weight``."""

    format_weight: float = 0.1
    """Weight of the format part (every turn parsed cleanly and the episode ended with an answer).
    DeepSeek-R1 (arXiv:2501.12948) uses such a format reward; 0 disables it."""
    tool_weight: float = 0.0
    """Weight of the tool part, paid only when the answer is correct (DeepEyes' conditional tool bonus,
    arXiv:2505.14362), so it cannot be farmed by calling tools and answering wrongly. 0 disables it."""

    def __post_init__(self) -> None:
        if self.format_weight < 0 or self.tool_weight < 0 or self.format_weight + self.tool_weight >= 1:
            raise InvalidConfigError(
                "need format_weight >= 0, tool_weight >= 0 and format_weight + tool_weight < 1, got "
                f"{self.format_weight} and {self.tool_weight}"
            )


@dataclass(frozen=True)
class RewardParts:
    """The parts of one episode's reward, each in [0, 1], and their weighted total."""

    accuracy: float
    """Task score of the final answer (0 when there is none)."""
    format: float
    """1 if every turn parsed without a format error and the episode ended with an answer."""
    tool: float
    """1 if at least one tool call succeeded."""
    total: float
    """The weighted sum used as the episode reward."""

    def as_dict(self) -> dict[str, float]:
        """The parts as a plain dict (for ``info`` and logs)."""
        return asdict(self)


def composite_reward(accuracy: float, format_ok: bool, tool_used: bool, config: RewardConfig) -> RewardParts:
    """Combine the parts: ``(1-wf-wt)·acc + wf·format + wt·tool·[acc > 0]``.

    Returns:
        :class:`RewardParts` with ``total`` in [0, 1].
    """
    w_acc = 1.0 - config.format_weight - config.tool_weight
    tool = float(tool_used)
    total = (
        w_acc * accuracy
        + config.format_weight * float(format_ok)
        + config.tool_weight * tool * (accuracy > 0)
    )
    return RewardParts(accuracy=float(accuracy), format=float(format_ok), tool=tool, total=float(total))
