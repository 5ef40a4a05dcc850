"""Trainer checkpoints: one folder per save, a complete model folder with the trainer's state beside it.

Contents: :func:`write_checkpoint`, :func:`adapter_tensors`, :func:`restore_weights`,
:func:`list_checkpoints`.

A ``checkpoint-<step>`` folder holds what :func:`vgym.engine.model_folder.save_model_folder` writes — weights
and config, tokenizer, image processor and chat template; for a LoRA (peft) model the adapters and a pointer
to the base's local folder — so ``vgym eval --policy hf:<folder>`` and :func:`vgym.engine.tiny.load_vlm` load
it as a model, and one state file (``sft_state.pt``, ``grpo_state.pt``) with what the trainer needs to resume
exactly. It is written whole to a hidden sibling and renamed into place, so a kill or a full disk never leaves
a partial checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vgym.engine.model_folder import save_model_folder
from vgym.engine.modeling import load_pretrained_in_place
from vgym.rollout.trajectory import atomic_path

__all__ = ["write_checkpoint", "adapter_tensors", "restore_weights", "list_checkpoints"]


def write_checkpoint(folder: str | Path, model: Any, processor: Any, state: dict[str, Any],
                     state_file: str, *, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model, processor and trainer state to ``folder``, all or nothing (replacing an older save of
    the same name).

    Args:
        folder: the checkpoint folder, e.g. ``runs/x/checkpoint-20``.
        model: the model being trained (a peft model saves its adapters only).
        processor: its processor; None writes the weights without it (a folder that holds no tokenizer cannot
            be loaded as a model).
        state: the trainer's state (``torch.save``-able; tensors in it must be plain tensors). For a peft
            model the exact adapter tensors (:func:`adapter_tensors`) are added to the saved copy under
            ``"adapters"``, for :func:`restore_weights`.
        state_file: the state's file name in ``folder``.
        weights: the state dict to save instead of ``model``'s own (the whole weights of a sharded model,
            gathered: :meth:`vgym.trainers.distributed.DataParallel.full_state`); None: ``model``'s.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        OSError: if the checkpoint cannot be written (e.g. a full disk), naming ``folder``; it is unchanged.
    """
    folder = Path(folder)
    adapters = adapter_tensors(model)
    if adapters is not None:  # save_pretrained writes the adapters; keep their exact tensors too
        state = {**state, "adapters": adapters}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if processor is None:
            model.save_pretrained(tmp, **({} if weights is None else {"state_dict": weights}))
        else:
            save_model_folder(tmp, model, processor, state_dict=weights)
        torch.save(state, tmp / state_file)
    return folder


def adapter_tensors(model: Any) -> dict[str, torch.Tensor] | None:
    """The exact LoRA tensors of a peft model, to keep in the trainer state.

    Args:
        model: the model being trained.

    Returns:
        Its state-dict entries whose keys contain ``lora_``; None for a model without adapters.
    """
    if not hasattr(model, "peft_config"):
        return None
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def restore_weights(model: Any, folder: str | Path, adapters: dict[str, torch.Tensor] | None) -> None:
    """Load a checkpoint's weights into ``model`` in place: the ``adapters`` kept by :func:`adapter_tensors`
    (the base is unchanged), or else the full weights from ``folder``.

    Args:
        model: the model to overwrite, of the same architecture (and adapters) as the saved one.
        folder: the checkpoint folder.
        adapters: the state's adapter tensors, or None.
    """
    if adapters is not None:
        model.load_state_dict(adapters, strict=False)
    else:
        load_pretrained_in_place(model, folder)


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints of one stage of a run.

    Args:
        folder: the stage's folder (a run folder, or its ``sft/``).

    Returns:
        The ``checkpoint-<step>`` folders directly under ``folder``, oldest step first (hidden temporaries of
        an unfinished save and other names are left out); empty when ``folder`` does not exist.
    """
    found = [p for p in Path(folder).glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))
