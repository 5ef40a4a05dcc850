"""Tests of vgym/engine/model_folder.py and load_vlm's checks: a missing or incomplete model folder raises a
ModelFolderError naming the folder and each missing part (never a transformers error pointing at the Hub); a
LoRA adapter folder loads through the absolute base path vgym writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vgym.engine.model_folder import check_model_folder, save_model_folder
from vgym.engine.tiny import load_vlm
from vgym.errors import InvalidConfigError, ModelFolderError, VgymError


def _copy(tiny_dir: Path, to: Path, *, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(tiny_dir, to)
    for name in drop:
        (to / name).unlink()
    return to


def test_a_complete_folder_passes(tiny_dir: Path) -> None:
    assert check_model_folder(tiny_dir) is None


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=f"model folder {tmp_path / 'nowhere'} does not exist") as info:
        load_vlm(tmp_path / "nowhere")
    assert isinstance(info.value, (VgymError, InvalidConfigError, FileNotFoundError))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="is a file, not a folder"):
        load_vlm(tmp_path / "file")


@pytest.mark.parametrize("drop, missing", [
    (("config.json",), "no config.json"),
    (("model.safetensors",), r"no weights \(model.safetensors"),
    (("tokenizer.json",), "no tokenizer"),
    (("tokenizer_config.json",), "no tokenizer"),
    (("processor_config.json",), "no image processor"),
    (("chat_template.jinja",), "no chat template"),
    (("model.safetensors", "chat_template.jinja"), "no weights .*; no chat template"),
])
def test_an_incomplete_folder_names_what_is_missing(tiny_dir: Path, tmp_path: Path, drop: tuple[str, ...],
                                                    missing: str) -> None:
    folder = _copy(tiny_dir, tmp_path / "ckpt", drop=drop)
    with pytest.raises(ModelFolderError, match=f"model folder {folder} is incomplete: {missing}") as info:
        load_vlm(folder)
    assert "huggingface.co" not in str(info.value)


def test_a_sharded_folder_needs_every_shard(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path / "ckpt", drop=("model.safetensors",))
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                            "b.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="no weight shards model-00002-of-00002.safetensors"):
        check_model_folder(folder)


def test_unreadable_files_raise_without_the_hub(tiny_dir: Path, tmp_path: Path) -> None:
    """Files that are all there but corrupt: a ModelFolderError naming the folder, the cause chained."""
    folder = _copy(tiny_dir, tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFolderError, match=f"model folder {folder} holds files transformers could not "
                                               "load") as info:
        load_vlm(folder)
    assert "huggingface.co" not in str(info.value) and info.value.__cause__ is not None


def test_a_lora_folder_loads_its_base_and_adapters(tiny: tuple, tiny_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """save_model_folder writes the adapters, the processor and the base's absolute path; load_vlm rebuilds
    the same model from any working directory. A base that is gone is named."""
    peft = pytest.importorskip("peft")
    model, processor = tiny
    monkeypatch.chdir(tiny_dir.parent)
    relative = load_vlm(Path(tiny_dir.name))[0]  # loaded by a relative path, as a recipe's run folder is
    lora = peft.get_peft_model(relative, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # LoRA starts as a no-op; make the adapters matter
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_model_folder(folder, lora, processor)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_dir.resolve())
    assert check_model_folder(folder) == tiny_dir.resolve()
    monkeypatch.chdir(tmp_path)
    loaded, loaded_processor = load_vlm(folder)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, lora.eval()(input_ids=ids).logits)
        assert not torch.equal(model(input_ids=ids).logits, lora(input_ids=ids).logits)
    assert loaded_processor.chat_template == processor.chat_template

    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=f"model folder {folder} is a LoRA adapter whose base .*gone.* "
                                               "is not a local folder"):
        load_vlm(folder)
