"""Trainers: SFT and the GRPO family. The maths lives in pure modules: :mod:`vgym.trainers.losses` (SFT),
:mod:`vgym.trainers.advantages` (advantage estimators, turn-level credit), :mod:`vgym.trainers.rl_losses` (policy
losses, aggregation, the combined objective) and :mod:`vgym.trainers.regularisers` (KL, LLDS, entropy); rollout
metrics and alarms in :mod:`vgym.trainers.monitors`, metric reporters in :mod:`vgym.trainers.reporters`."""
