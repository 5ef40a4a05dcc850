"""Trainers (``vgym.trainers``): SFT and the GRPO family, their losses as pure functions, rollout monitors and
metric reporters, and adapters for users who keep TRL or verl. The maths lives in pure modules, one idea each:
``tokens`` (per-token log-probs, entropy, masked means), ``advantages``, ``aggregation`` (loss types),
``policy_losses``, ``regularisers`` and ``objective`` (which combines them); the trainers only coordinate.
``checkpoints`` writes what both trainers save: a complete model folder with the trainer's state beside it;
``config_checks`` holds the field checks of their configs.

May import: the ``vgym`` root, :mod:`vgym.data`, :mod:`vgym.rollout`, :mod:`vgym.policies` and
:mod:`vgym.engine`. Never eval or the entry layer (:mod:`vgym.app`), which is what imports the trainers.
"""
