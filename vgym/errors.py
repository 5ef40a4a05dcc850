"""The vgym exception hierarchy.

Contents: :class:`VgymError` (base), :class:`UnknownNameError`, :class:`InvalidConfigError`, :class:`ToolError`.

Bugs in vgym raise ordinary Python exceptions. Bad *model actions* (a malformed tool call, a box outside the
image) are episode events, not exceptions: tools raise :class:`ToolError` and the env turns it into an error
observation, so :meth:`vgym.env.VisualToolEnv.step` never raises on model output.
"""

from __future__ import annotations

__all__ = ["VgymError", "UnknownNameError", "InvalidConfigError", "ToolError"]


class VgymError(Exception):
    """Base class of every error vgym raises on purpose."""


class UnknownNameError(VgymError, KeyError):
    """A registry lookup named something that is not registered; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidConfigError(VgymError, ValueError):
    """A config value (or combination of values) is invalid; the message names the value and the fix."""


class ToolError(VgymError):
    """A tool was called with arguments it cannot serve.

    The message is written for the *model*: it says what was wrong, the value received, and what a valid call
    looks like. The env shows it to the policy as the tool's observation.
    """
