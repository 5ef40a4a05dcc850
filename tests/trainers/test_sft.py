"""Tests of trainers/sft.py on oracle trajectories with the tiny Qwen2-VL: learning, frozen parameters, the
same run on per-batch patches as on the rollout's, exact checkpoint resume (full weights, and LoRA with
dropout), checkpoints that load as models, data order and config validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vgym.engine.modeling import model_inputs
from vgym.engine.tiny import load_vlm
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, rollout
from vgym.rollout.trajectory import Trajectory
from vgym.trainers.sft import SFTConfig, SFTTrainer, collate

# Small on purpose: batch 4 of 8 trajectories and 2 warm-up steps keep every test to a few seconds on a CPU.
CONFIG = SFTConfig(steps=6, batch_size=4, learning_rate=2e-3, warmup_steps=2)


@pytest.fixture(scope="module")
def data(tiny_dir: Path) -> list[Trajectory]:
    """Eight oracle trajectories (crop, then answer) of different training samples; read-only."""
    _, processor = load_vlm(tiny_dir)
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(8)]
    return rollout(lambda: VisualToolEnv("visual_search"), OraclePolicy(), ChatEncoder(processor), specs)


def _pad(processor) -> int:  # type: ignore[no-untyped-def]
    return processor.tokenizer.pad_token_id


def test_sft_lowers_loss_and_updates_only_trainable_parameters(tiny, data: list[Trajectory]) -> None:
    """15 steps lower the loss on the training set; every trainable parameter moved, the frozen one did
    not."""
    model, processor = tiny
    frozen = model.model.visual.patch_embed.proj.weight
    frozen.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = SFTTrainer(model, data, replace(CONFIG, steps=15), pad_id=_pad(processor))
    with torch.no_grad():
        initial = trainer.loss_on(data)[0].item()
    history = trainer.train()
    with torch.no_grad():
        final = trainer.loss_on(data)[0].item()
    assert len(history) == 15 and trainer.step_count == 15
    assert final < 0.7 * initial, (initial, final)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged
    assert torch.equal(frozen, before["model.visual.patch_embed.proj.weight"])
    assert all(frozen is not p for group in trainer.optimizer.param_groups for p in group["params"])


def test_training_on_per_batch_patches_equals_training_on_the_rollouts_patches(
        tiny_dir: Path, data: list[Trajectory], monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer patches each batch from the trajectories' uint8 images; a twin whose batches are collated
    from the patches the rollout made (what SFT trained on before it kept images instead of patches) has
    the same losses, gradient norms and final weights, bit for bit."""
    model, processor = load_vlm(tiny_dir)
    trainer = SFTTrainer(model, data, CONFIG, processor=processor)
    eager_model = load_vlm(tiny_dir)[0]
    eager = SFTTrainer(eager_model, data, CONFIG, processor=processor)
    monkeypatch.setattr(eager.data, "batch", lambda indices, pad: collate([data[i] for i in indices], pad))
    history, eager_history = trainer.train(), eager.train()
    assert [h["loss/sft"] for h in history] == [h["loss/sft"] for h in eager_history]
    assert [h["optim/grad_norm"] for h in history] == [h["optim/grad_norm"] for h in eager_history]
    for (name, p), q in zip(model.named_parameters(), eager_model.parameters()):
        assert torch.equal(p, q), name


def test_checkpoint_resume_is_exact(tiny_dir: Path, tmp_path: Path, data: list[Trajectory]) -> None:
    """6 steps straight == 3 steps, save, fresh model + trainer, load, 3 more (weights, Adam state, data
    position): the resumed run's next-step loss and its final weights equal the uninterrupted run's."""
    straight_model, processor = load_vlm(tiny_dir)
    straight = SFTTrainer(straight_model, data, CONFIG, processor=processor)
    history = straight.train()

    first = SFTTrainer(load_vlm(tiny_dir)[0], data, CONFIG, processor=processor)
    for _ in range(3):
        first.step()
    first.save(tmp_path / "ckpt")
    resumed_model = load_vlm(tiny_dir)[0]  # initial weights: load must overwrite all of them
    resumed = SFTTrainer(resumed_model, data, CONFIG, processor=processor)
    resumed.load(tmp_path / "ckpt")
    assert resumed.step_count == 3
    for (name, p), q in zip(resumed_model.named_parameters(), first.model.parameters()):
        assert torch.equal(p, q), name
    resumed_history = [resumed.step() for _ in range(3)]

    assert resumed.step_count == straight.step_count == 6
    assert [h["loss/sft"] for h in resumed_history] == [h["loss/sft"] for h in history[3:]]
    for (name, p), q in zip(resumed_model.named_parameters(), straight_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    used = [first.batch_indices(s) for s in range(3)] + [resumed.batch_indices(s) for s in range(3, 6)]
    assert used == [straight.batch_indices(s) for s in range(6)]


def test_a_checkpoint_is_a_model_folder(tiny_dir: Path, tmp_path: Path, data: list[Trajectory]) -> None:
    """The checkpoint loads with load_vlm (what ``hf:DIR`` does): the trained weights, the processor and its
    chat template; the trainer state sits beside them."""
    model, processor = load_vlm(tiny_dir)
    trainer = SFTTrainer(model, data, replace(CONFIG, steps=2), processor=processor)
    trainer.train()
    folder = trainer.save(tmp_path / "checkpoint-2")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja", "trainer_state.pt"} <= {p.name for p in
                                                                                  folder.iterdir()}
    loaded, loaded_processor = load_vlm(folder)
    for (name, p), q in zip(loaded.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
    assert loaded_processor.chat_template == processor.chat_template
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_lora_with_dropout_resumes_exactly_and_loads_as_a_model(tiny_dir: Path, tmp_path: Path,
                                                                data: list[Trajectory]) -> None:
    """LoRA with dropout (which draws from torch's RNG): 4 steps straight == 2 steps, save, other random
    draws, fresh model, load, 2 more — adapters and losses equal, because the checkpoint keeps the RNG state.
    The checkpoint holds only the adapters and the processor, and load_vlm rebuilds the trained model from it
    (base from adapter_config.json's absolute base_model_name_or_path)."""
    peft = pytest.importorskip("peft")

    def lora():  # type: ignore[no-untyped-def]
        model, processor = load_vlm(tiny_dir)
        config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"])
        return peft.get_peft_model(model, config), processor

    cfg = replace(CONFIG, steps=4)
    torch.manual_seed(0)  # this test's own draws (dropout), so its two runs start alike
    straight_model, processor = lora()
    straight = SFTTrainer(straight_model, data, cfg, processor=processor)
    straight_losses = [h["loss/sft"] for h in straight.train()]

    torch.manual_seed(0)
    first_model, _ = lora()
    first = SFTTrainer(first_model, data, cfg, processor=processor)
    first.step(), first.step()
    folder = first.save(tmp_path / "checkpoint-2")
    torch.rand(1000)  # anything else drawing in between must not change the resumed run
    resumed_model, _ = lora()
    resumed = SFTTrainer(resumed_model, data, cfg, processor=processor)
    resumed.load(folder)
    resumed_losses = [resumed.step()["loss/sft"] for _ in range(2)]
    assert resumed_losses == straight_losses[2:]
    lora_weights = {n: p for n, p in resumed_model.named_parameters() if "lora_" in n}
    assert lora_weights
    for name, p in straight_model.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(lora_weights[name], p, atol=1e-6, rtol=0, msg=name)

    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names  # the base is not copied
    loaded, _ = load_vlm(folder)
    first_model.eval()  # dropout off, as in the loaded model
    batch = collate(data[:2], processor.tokenizer.pad_token_id)
    batch.pop("loss_mask")
    with torch.no_grad():
        expected = first_model(**model_inputs(first_model, **batch)).logits
        got = loaded(**model_inputs(loaded, **batch)).logits
    assert torch.equal(got, expected)


def test_load_rejects_other_data(tiny, tmp_path: Path, data: list[Trajectory]) -> None:
    """A checkpoint of a run on other trajectories raises instead of continuing on a different data order."""
    model, processor = tiny
    SFTTrainer(model, data, CONFIG, processor=processor).save(tmp_path / "ckpt")
    other = SFTTrainer(model, data[:-1], CONFIG, processor=processor)
    with pytest.raises(InvalidConfigError, match="trained on other data \\(8 trajectories"):
        other.load(tmp_path / "ckpt")


def test_load_rejects_other_config(tiny, tmp_path: Path, data: list[Trajectory]) -> None:
    """A checkpoint made with another config raises instead of resuming a different run."""
    model, processor = tiny
    SFTTrainer(model, data, CONFIG, pad_id=_pad(processor)).save(tmp_path / "ckpt")
    other = SFTTrainer(model, data, replace(CONFIG, learning_rate=1e-4), pad_id=_pad(processor))
    with pytest.raises(InvalidConfigError, match="checkpoint config .* differs"):
        other.load(tmp_path / "ckpt")


def test_batch_indices_cover_each_trajectory_once_per_epoch(tiny, data: list[Trajectory]) -> None:
    """Batches of 3 over 8 trajectories read 3 shuffled epochs in order; the seed decides the order."""
    model, processor = tiny

    def positions(seed: int) -> list[int]:
        trainer = SFTTrainer(model, data, replace(CONFIG, batch_size=3, seed=seed), pad_id=_pad(processor))
        return [i for step in range(8) for i in trainer.batch_indices(step)]  # 8 steps x 3 = 24 = 3 epochs

    order = positions(seed=0)
    epochs = [order[k : k + 8] for k in range(0, 24, 8)]
    assert all(sorted(epoch) == list(range(8)) for epoch in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch
    assert positions(seed=0) == order
    assert positions(seed=1) != order


@pytest.mark.parametrize("field, value, bound", [
    ("steps", 0, ">= 1"), ("batch_size", 0, ">= 1"), ("learning_rate", 0.0, "> 0"),
    ("learning_rate", -1e-3, "> 0"), ("warmup_steps", -1, ">= 0"), ("weight_decay", -0.1, ">= 0"),
    ("max_grad_norm", -1.0, ">= 0"), ("seed", -1, ">= 0"),
])
def test_config_validation(field: str, value: float, bound: str) -> None:
    with pytest.raises(InvalidConfigError, match=f"^{field} must be {bound}, got {value}$"):
        SFTConfig(**{field: value})
    with pytest.raises(InvalidConfigError, match=f"^{field} must be a number, got '1'$"):
        SFTConfig(**{field: "1"})


def test_trainer_needs_policy_tokens(tiny, data: list[Trajectory]) -> None:
    """No trajectories, or none with a policy token, is a config error (the loss would be empty)."""
    model, processor = tiny
    with pytest.raises(InvalidConfigError, match="at least one trajectory with policy tokens"):
        SFTTrainer(model, [], CONFIG, pad_id=_pad(processor))
    unmasked = replace(data[0], loss_mask=torch.zeros_like(data[0].loss_mask))
    with pytest.raises(InvalidConfigError, match="at least one trajectory with policy tokens"):
        SFTTrainer(model, [unmasked], CONFIG, pad_id=_pad(processor))
