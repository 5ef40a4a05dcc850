"""Rollout: playing episodes — the loop, where env work runs, the chat encoding and the trajectories it
builds.

Modules: :mod:`~vgym.rollout.loop` (:func:`~vgym.rollout.loop.rollout`, lockstep or asynchronous, with its
:class:`~vgym.rollout.loop.RolloutConfig`), :mod:`~vgym.rollout.workers` (env slots in this process, in
threads or in Ray actors), :mod:`~vgym.rollout.chat` (append-only chat templating and tokenising) and
:mod:`~vgym.rollout.trajectory` (the :class:`~vgym.rollout.trajectory.Trajectory` record and its files).

May import: the ``vgym`` root (env, task, tooling, ...), :mod:`vgym.data`, :mod:`vgym.policies.base` (the
policy protocol) and :mod:`vgym.engine`. Never eval, trainers or the entry layer.
"""
