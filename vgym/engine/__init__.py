"""Engine: running a transformers VLM fast — the tiny test model, model-input helpers, the lean decoder and
its direct decode steps, the KV prefix cache and the shared-prompt loss forward.

Modules: :mod:`~vgym.engine.tiny` (build the tiny Qwen-VL; load any local model folder),
:mod:`~vgym.engine.model_folder` (what a loadable model folder holds: written whole, checked before loading),
:mod:`~vgym.engine.modeling` (model inputs, image-feature sharing, checkpointing),
:mod:`~vgym.engine.fast_paths` (which fast paths this transformers and model may take; ``generate`` and the
plain forward otherwise), :mod:`~vgym.engine.decoding`, :mod:`~vgym.engine.decode_step`,
:mod:`~vgym.engine.prefix_cache`, :mod:`~vgym.engine.shared_prefix`.

May import: torch, transformers, peft (lazily, for LoRA folders) and :mod:`vgym.errors`. Nothing else of vgym:
the engine knows models, not envs.
"""
