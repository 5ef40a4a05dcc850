"""Field checks of the training configs: a value in its range, a name among the valid ones.

Contents: :func:`check_range`, :func:`check_choice`.

Each raises :class:`~vgym.errors.InvalidConfigError` with a message that *starts with the field's name*, so a
caller holding a section of a recipe can prefix it (``grpo.`` + ``loss_type must be one of ...``) and point
the user at the exact key (:func:`vgym.app.recipes.load_recipe` does).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from numbers import Real

from vgym.errors import InvalidConfigError

__all__ = ["check_range", "check_choice"]


def check_range(name: str, value: object, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Check that ``value`` is a number (not a bool) within ``[low, high]``.

    Args:
        name: the field's name, first word of the message.
        value: the value to check.
        low: the smallest allowed value; None for no lower bound.
        high: the largest allowed value; None for no upper bound.
        low_open: exclude ``low`` itself (``> low``).
        high_open: exclude ``high`` itself (``< high``).

    Raises:
        InvalidConfigError: ``value`` is not a number or out of range, e.g. ``"learning_rate must be > 0, got
            -0.001"``.

    >>> check_range("steps", 3, low=1)
    >>> check_range("top_p", 1.5, low=0, high=1, low_open=True)
    Traceback (most recent call last):
    ...
    vgym.errors.InvalidConfigError: top_p must be in (0, 1], got 1.5
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidConfigError(f"{name} must be a number, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not (below or above):
        return
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {low:g}"
    else:
        bounds = f"{'<' if high_open else '<='} {high:g}"
    raise InvalidConfigError(f"{name} must be {bounds}, got {value!r}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Check that ``value`` is one of ``choices``; a string that is not gets the closest valid one named.

    Args:
        name: the field's name, first word of the message.
        value: the value to check.
        choices: the valid values (e.g. a registry's names).

    Raises:
        InvalidConfigError: ``value`` is not a valid choice, e.g. ``"loss_type must be one of 'bnpo', 'dapo',
            'dr_grpo', 'grpo', got 'dapoo'. Did you mean 'dapo'?"``.

    >>> check_choice("mode", "async", ("sync", "async"))
    >>> check_choice("mode", "asinc", ("sync", "async"))
    Traceback (most recent call last):
    ...
    vgym.errors.InvalidConfigError: mode must be one of 'sync', 'async', got 'asinc'. Did you mean 'async'?
    """
    valid = list(choices)
    if any(value == c and type(value) is type(c) for c in valid):
        return
    names = [c for c in valid if isinstance(c, str)]
    close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
    hint = f". Did you mean {close[0]!r}?" if close else ""
    raise InvalidConfigError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}{hint}")
