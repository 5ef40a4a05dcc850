"""Trainers: SFT (and, later, the GRPO family); losses live in :mod:`vgym.trainers.losses` as pure functions."""
