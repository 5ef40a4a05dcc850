"""Ctrl-C during training: finish the step under way, save a checkpoint, stop.

Contents: :func:`train_until_interrupted`, :class:`InterruptAtStepEnd`.

A SIGINT that lands in the middle of an optimizer step would leave the weights, the optimizer's moments and
the step counter out of step with each other; a checkpoint saved then would not resume exactly. So the first
Ctrl-C only asks the run to stop: the trainer's step callback raises ``KeyboardInterrupt`` once the step is
done, and the checkpoint of that step is saved before the interrupt goes on. A second Ctrl-C stops at once,
without a checkpoint. Signal handlers are set only in the main thread (where Python delivers signals) and
only while training, and the previous handler is put back afterwards.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["InterruptAtStepEnd", "train_until_interrupted"]

logger = logging.getLogger(__name__)


class _Trainer(Protocol):
    """What :func:`train_until_interrupted` needs of a trainer (SFT and GRPO trainers have it)."""

    step_count: int

    def train(self, callback: Callable[[int, dict[str, float]], None] | None = None) -> Any: ...

    def save(self, folder: str | Path) -> Path: ...


class InterruptAtStepEnd:
    """While open in the main thread, holds a first SIGINT until :meth:`check` (called between steps) raises
    ``KeyboardInterrupt``; a second SIGINT raises at once and sets :attr:`forced`. Outside the main thread it
    changes nothing. Closing it restores the previous SIGINT handler.

    Attributes:
        requested: a SIGINT arrived.
        forced: a second SIGINT arrived and interrupted whatever ran (the step may be half done).
    """

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> InterruptAtStepEnd:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops now, "
                       "without one)")

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a SIGINT arrived since the guard opened."""
        if self.requested:
            raise KeyboardInterrupt


def train_until_interrupted(trainer: _Trainer, on_step: Callable[[int, dict[str, float]], None],
                            folder: Path, saved: set[int], stage: str) -> None:
    """Run ``trainer.train`` with ``on_step`` as its callback; on Ctrl-C, end the step under way, save
    ``folder / f"checkpoint-{step}"`` and re-raise.

    Args:
        trainer: an :class:`~vgym.trainers.sft.SFTTrainer` or :class:`~vgym.trainers.grpo.GRPOTrainer`.
        on_step: called as ``on_step(step, metrics)`` after each step (reporting, periodic saves).
        folder: where checkpoints of this stage go.
        saved: the steps already saved there by this run (not saved again); updated with the interrupt's.
        stage: the stage's name for the log line (``SFT``, ``GRPO``).

    Raises:
        KeyboardInterrupt: after a first Ctrl-C, once the checkpoint is saved — or raised by ``on_step``
            itself (at a step's end too, so it is saved likewise); a second Ctrl-C, or an interrupt before
            the first step, without a save.
    """
    with InterruptAtStepEnd() as interrupt:

        def checked(step: int, metrics: dict[str, float]) -> None:
            on_step(step, metrics)
            interrupt.check()

        try:
            trainer.train(checked)
        except KeyboardInterrupt:
            if interrupt.forced or trainer.step_count == 0:
                raise
            path = folder / f"checkpoint-{trainer.step_count}"
            if trainer.step_count not in saved:
                trainer.save(path)
                saved.add(trainer.step_count)
            logger.warning("interrupted after %s step %d; saved %s: vgym train --resume continues from it",
                           stage, trainer.step_count, path)
            raise
