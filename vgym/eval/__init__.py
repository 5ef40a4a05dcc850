"""Eval: measuring policies — seeded resumable evaluation, reports and their statistics, task diagnostics and
the trajectory viewer.

Modules: :mod:`~vgym.eval.evaluate` (``vgym eval``), :mod:`~vgym.eval.stats` (pass@k, bootstrap intervals),
:mod:`~vgym.eval.reports` (``report.json``, honest counting, ``vgym compare``), :mod:`~vgym.eval.tables`
(``report.md`` with its legend, the terminal table), :mod:`~vgym.eval.plots` (the report's figures),
:mod:`~vgym.eval.diagnose` (oracle success, tool necessity, answer-prior baselines) and
:mod:`~vgym.eval.viewer` (``view.html``).

May import: the ``vgym`` root, :mod:`vgym.data`, :mod:`vgym.rollout`, :mod:`vgym.policies`,
:mod:`vgym.engine`. Episodes are played by :func:`vgym.rollout.loop.rollout`, the loop training uses. Never
trainers or the entry layer.
"""
