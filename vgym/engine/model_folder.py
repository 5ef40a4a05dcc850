"""Model folders: what a VLM and its processor need on disk to load with ``from_pretrained``, how vgym writes
one, and how it checks one before loading it.

Contents: :func:`save_model_folder`, :func:`check_model_folder`.

A **full** folder holds the model's ``config.json`` and weights (``model.safetensors``, an index with its
shards, or ``pytorch_model.bin``) and the processor: a tokenizer (``tokenizer_config.json`` with
``tokenizer.json``, ``vocab.json`` + ``merges.txt`` or ``tokenizer.model``), an image processor
(``processor_config.json`` or ``preprocessor_config.json``) and a chat template (``chat_template.jinja``,
``chat_template.json``, or a ``chat_template`` entry of the tokenizer's or processor's config). An **adapter**
folder (LoRA, written by peft) holds ``adapter_config.json``, whose ``base_model_name_or_path`` names the
full local folder of its base, the adapter weights and the same processor files. Every checkpoint a vgym
trainer writes is one of the two, so ``vgym eval --policy hf:<checkpoint>`` loads it
(:func:`vgym.engine.tiny.load_vlm`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vgym.errors import ModelFolderError

__all__ = ["save_model_folder", "check_model_folder"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_IMAGE_PROCESSOR = ("processor_config.json", "preprocessor_config.json")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def save_model_folder(folder: str | Path, model: Any, processor: Any, *,
                      state_dict: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and ``processor`` into ``folder`` with their ``save_pretrained``.

    For a peft (LoRA) model only the adapters are written, and ``adapter_config.json``'s
    ``base_model_name_or_path`` is made the absolute path of the base's local folder, so the folder loads from
    any working directory.

    Args:
        folder: an existing folder (trainers pass the temporary folder of a write-then-rename).
        model: a transformers ``PreTrainedModel`` or a peft ``PeftModel`` around one.
        processor: its processor (tokenizer, image processor, chat template).
        state_dict: the weights to write instead of ``model``'s own (e.g. a sharded model's, gathered
            whole); None: ``model``'s.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        OSError: if a file cannot be written.
    """
    folder = Path(folder)
    model.save_pretrained(folder, **({} if state_dict is None else {"state_dict": state_dict}))
    processor.save_pretrained(folder)
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        config = json.loads(adapter.read_text())
        base = config.get("base_model_name_or_path")
        if base and Path(base).is_dir():
            config["base_model_name_or_path"] = str(Path(base).resolve())
            adapter.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def check_model_folder(folder: str | Path, *, processor: bool = True) -> Path | None:
    """Check that ``folder`` holds a loadable model (see the module docstring), without loading it.

    Args:
        folder: the folder to check.
        processor: whether the processor's files must be there too (a LoRA base need not hold them).

    Returns:
        None for a full folder; for an adapter folder, the base's folder (absolute, or relative to the working
        directory as peft reads it), itself checked to be a full folder.

    Raises:
        ModelFolderError: ``folder`` is not a directory, or lacks files (the message names the folder and each
            missing part), or is an adapter whose base is not a complete local folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ModelFolderError(f"model folder {folder} {what}; give a local folder written by "
                               "save_pretrained (vgym never downloads models)")
    adapter = folder / "adapter_config.json"
    base = None
    missing = []
    if adapter.is_file():
        base_name = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not any((folder / name).is_file() for name in _ADAPTER_WEIGHTS):
            missing.append(f"the adapter weights ({' or '.join(_ADAPTER_WEIGHTS)})")
        if not base_name or not Path(base_name).is_dir():
            raise ModelFolderError(f"model folder {folder} is a LoRA adapter whose base "
                                   f"(adapter_config.json base_model_name_or_path: {base_name!r}) is not a "
                                   "local folder; point it to the base model's folder")
        base = Path(base_name)
    elif not (folder / "config.json").is_file():
        missing.append("config.json (or adapter_config.json for a LoRA adapter)")
    else:
        missing += _missing_weights(folder)
    if processor:
        missing += _missing_processor(folder)
    if missing:
        raise ModelFolderError(f"model folder {folder} is incomplete: no {'; no '.join(missing)}")
    if base is not None:
        try:
            check_model_folder(base, processor=False)
        except ModelFolderError as exc:
            raise ModelFolderError(f"model folder {folder} is a LoRA adapter whose base is unusable: "
                                   f"{exc}") from None
    return base


def _missing_weights(folder: Path) -> list[str]:
    """What is missing of a full folder's weights: all of them, or the shards an index names."""
    present = [name for name in _WEIGHTS if (folder / name).is_file()]
    if not present:
        return [f"weights ({' or '.join(_WEIGHTS)})"]
    if all(name.endswith(".index.json") for name in present):
        shards = set(json.loads((folder / present[0]).read_text()).get("weight_map", {}).values())
        absent = sorted(s for s in shards if not (folder / s).is_file())
        if absent:
            return [f"weight shards {', '.join(absent)} (named by {present[0]})"]
    return []


def _missing_processor(folder: Path) -> list[str]:
    """What is missing of the processor's files: tokenizer, image processor, chat template."""
    missing = []
    tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
    if not tokenizer or not (folder / "tokenizer_config.json").is_file():
        missing.append("tokenizer (tokenizer_config.json with tokenizer.json, or vocab.json + merges.txt)")
    if not any((folder / name).is_file() for name in _IMAGE_PROCESSOR):
        missing.append(f"image processor ({' or '.join(_IMAGE_PROCESSOR)})")
    in_config = any("chat_template" in _json(folder / name)
                    for name in ("tokenizer_config.json", *_IMAGE_PROCESSOR))
    if not in_config and not any((folder / name).is_file() for name in _TEMPLATE_FILES):
        missing.append(f"chat template ({' or '.join(_TEMPLATE_FILES)})")
    return missing


def _json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when the file is missing or not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
