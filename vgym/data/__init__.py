"""Data: what tasks read — dataset files, media, procedural scenes and clips.

Modules: :mod:`~vgym.data.files` (bounded JSON/JSONL/text readers, paths confined to a dataset root),
:mod:`~vgym.data.media` (image and video decoding, shared by datasets and the video tools),
:mod:`~vgym.data.records` (the vgym JSONL record format and its scoring), :mod:`~vgym.data.dataset_task` (the
generic dataset loader task), :mod:`~vgym.data.sample_data` (tiny datasets in each released layout),
:mod:`~vgym.data.synthetic_video`, :mod:`~vgym.data.clips` and :mod:`~vgym.data.shape_scenes` (procedural
clips).

May import: the ``vgym`` root contracts (errors, registry, task, rewards). Never the env, tools, rollout,
policies, engine, eval, trainers or the entry layer; no model library.
"""
