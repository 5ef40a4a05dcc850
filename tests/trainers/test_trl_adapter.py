"""Tests of trainers/trl_adapter.py with the real TRL ``GRPOTrainer`` on the tiny Qwen2-VL (CPU, fp32).

The tiny model is random, so a module fixture first teaches it, by plain next-token training on two hand-built
sequences, to answer ``<answer>horizontal</answer>`` in the single-turn prompt and to play a two-turn crop
episode (tool call, then the answer) in TRL's tool prompt. Rewards then differ between samples whose gold
answer is ``horizontal`` and the others, so a wrong sample-to-row mapping or a wrong score shows up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl", reason="the TRL adapter tests need TRL (pip install trl)")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental in TRL 1.16

from vgym.engine.modeling import model_inputs  # noqa: E402
from vgym.errors import InvalidConfigError, ToolError  # noqa: E402
from vgym.trainers.trl_adapter import (  # noqa: E402
    finish_episode,
    parse_sample_id,
    vgym_dataset,
    vgym_env_reward_func,
    vgym_environment_factory,
    vgym_reward_func,
    with_tool_chat_template,
)

TASK = "visual_search"
ANSWER = "horizontal"
BOX = [924, 798, 966, 840]  # the region of train sample 0 (its marker's grid cell)


def _pieces_ids(processor: Any, pieces: list[tuple[str, list | None, bool]]) -> tuple[torch.Tensor, ...]:
    """Tokenise text pieces separately, as TRL concatenates prompt, completion and tool-suffix ids."""
    ids, labels, pixels, grids = [], [], [], []
    for text, images, trained in pieces:
        out = processor(text=[text], images=images, return_tensors="pt")
        x = out["input_ids"][0]
        ids.append(x)
        labels.append(x if trained else torch.full_like(x, -100))
        if images:
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
    return torch.cat(ids)[None], torch.cat(labels)[None], torch.cat(pixels), torch.cat(grids)


def _tool_episode_ids(tool_processor: Any, index: int) -> tuple[torch.Tensor, ...]:
    """TRL's two-turn crop episode on train sample ``index``: its tool prompt, the crop call (trained), the
    crop result as TRL appends it, the answer (trained)."""
    from trl.data_utils import prepare_multimodal_messages

    env = vgym_environment_factory(TASK, max_turns=3)()
    row = vgym_dataset(TASK, "train", 1, 0, offset=index, tools=("crop",))[0]
    env.reset(**row)
    result = env.crop(box=BOX)
    prompt = prepare_multimodal_messages(row["prompt"], images=row["images"])
    call = {"type": "function", "function": {"name": "crop", "arguments": {"box": BOX}}}
    messages = prompt + [{"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "name": "crop", "content": result},
                         {"role": "assistant", "content": f"<answer>{ANSWER}</answer>"}]
    full = tool_processor.apply_chat_template(messages, tools=[env.crop], tokenize=False)
    head = tool_processor.apply_chat_template(
        prompt, tools=[env.crop], tokenize=False, add_generation_prompt=True
    )
    assert full.startswith(head)
    rest = full[len(head) :]
    i = rest.index("<|im_end|>") + len("<|im_end|>")  # end of the tool-call turn
    j = rest.index("<|im_start|>assistant\n", i) + len("<|im_start|>assistant\n")  # end of the tool suffix
    return _pieces_ids(
        tool_processor,
        [
            (head, row["images"], False),
            (rest[:i], None, True),
            (rest[i:j], [result[0]["image"]], False),
            (rest[j:].rstrip("\n"), None, True),
        ],
    )


@pytest.fixture(scope="module")
def taught_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM after 70 Adam steps on three sequences: the single-turn prompt of train sample 0 → the
    answer, and TRL's tool episode (crop call, crop result, answer) on both samples of
    :func:`_rows_with_answers` (with one sample only, the other's region numbers leak into the sampled
    box)."""
    from trl.data_utils import prepare_multimodal_messages

    from vgym.engine.tiny import load_vlm

    model, processor = load_vlm(tiny_dir)
    tool_processor = with_tool_chat_template(processor)
    plain = vgym_dataset(TASK, "train", 1, 0)[0]
    head = processor.apply_chat_template(prepare_multimodal_messages(plain["prompt"], images=plain["images"]),
                                         tokenize=False, add_generation_prompt=True)
    sequences = [_pieces_ids(processor, [(head, plain["images"], False),
                                         (f"<answer>{ANSWER}</answer><|im_end|>", None, True)])]
    sequences += [_tool_episode_ids(tool_processor, index) for index in _rows_with_answers()]
    # 70 steps at 1.5e-3 bring the loss to ~0.02 (~8 s): sampled at temperature 0.1 the turns come out
    # verbatim.
    optimizer = torch.optim.Adam(model.parameters(), lr=1.5e-3)
    model.train()
    for _ in range(70):
        for ids, labels, pixels, grids in sequences:
            loss = model(**model_inputs(model, ids, torch.ones_like(ids), pixels, grids), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    out = tmp_path_factory.mktemp("taught") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _trl_args(tmp_path: Path, **change: Any) -> Any:
    from trl import GRPOConfig

    # CPU settings (bf16 needs a GPU); 2 prompts x 2 generations keep one step ~1 s on the tiny model.
    settings = dict(
        output_dir=str(tmp_path),
        bf16=False,
        use_cpu=True,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=16,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
        shuffle_dataset=False,
        temperature=0.1,
        seed=0,
    )
    return GRPOConfig(**{**settings, **change})


def _rows_with_answers() -> list[int]:
    """Two train indices: one whose gold answer is ANSWER (index 0) and the first one whose is not."""
    answers = vgym_dataset(TASK, "train", 6, 0)["answer"]
    assert answers[0] == ANSWER
    return [0, next(i for i, a in enumerate(answers) if a != ANSWER)]


def test_dataset_rows_match_the_env_and_ids_parse() -> None:
    ds = vgym_dataset(TASK, "train", 3, 0, offset=5)
    assert ds.column_names == ["prompt", "images", "sample_id", "answer"]
    assert ds["sample_id"] == [f"{TASK}/train/0/{i}" for i in (5, 6, 7)]
    assert parse_sample_id(ds[0]["sample_id"]) == (TASK, "train", 0, 5)
    row = ds[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [p["type"] for p in row["prompt"][1]["content"]] == ["image", "text"]
    assert len(row["images"]) == 1 and row["images"][0].size[0] * row["images"][0].size[1] <= 224 * 224
    tools_row = vgym_dataset(TASK, "train", 1, 0, tools=("crop",))[0]
    assert "crop" not in tools_row["prompt"][0]["content"][0]["text"]  # TRL's template lists the tools
    assert "[image 0: 1344x1344]" in tools_row["prompt"][1]["content"][1]["text"]
    with pytest.raises(ValueError, match="sample id must look like"):
        parse_sample_id("visual_search/train/0")


def test_reward_func_scores_with_the_task_scorer() -> None:
    reward = vgym_reward_func(TASK)
    assert reward.__name__ == "vgym_visual_search_accuracy"
    ids = [f"{TASK}/train/0/{i}" for i in _rows_with_answers()]
    good = [{"role": "assistant", "content": f"<answer>{ANSWER}</answer>"}]
    tool_call = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}]
    scores = reward(
        prompts=[None] * 5,
        completions=[good, good, f"x <answer>{ANSWER}</answer>", "no answer", tool_call],
        sample_id=[ids[0], ids[1], ids[0], ids[0], ids[0]],
    )
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="got a sample of task"):
        reward(prompts=[None], completions=["<answer>x</answer>"], sample_id=["counting/train/0/0"])


def test_trl_grpo_single_turn_step_calls_our_reward(taught_dir: Path, tmp_path: Path) -> None:
    from trl import GRPOTrainer

    from vgym.engine.tiny import load_vlm

    model, processor = load_vlm(taught_dir)
    rows = _rows_with_answers()
    ds = vgym_dataset(TASK, "train", rows[1] + 1, 0).select(rows)
    reward = vgym_reward_func(TASK)
    calls: list[tuple[list[str], list[float]]] = []

    def spy(prompts: list, completions: list, sample_id: list[str], **kwargs: Any) -> list[float]:
        scores = reward(prompts, completions, sample_id, **kwargs)
        calls.append((list(sample_id), scores))
        return scores

    trainer = GRPOTrainer(model, reward_funcs=spy, args=_trl_args(tmp_path), train_dataset=ds,
                          processing_class=processor)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1 and len(calls) == 1
    ids, scores = calls[0]
    # TRL repeats each row num_generations times, in order (shuffle off).
    assert ids == [ds[0]["sample_id"]] * 2 + [ds[1]["sample_id"]] * 2
    assert scores == [1.0, 1.0, 0.0, 0.0]  # the taught answer is right for row 0 only
    logged = trainer.state.log_history[0]
    assert logged["reward"] == pytest.approx(0.5)
    # Equal rewards within each group give zero advantages: the update leaves the weights as they were.
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_trl_environment_factory_plays_a_crop_episode(taught_dir: Path, tmp_path: Path) -> None:
    from trl import GRPOTrainer

    from vgym.engine.tiny import load_vlm

    model, processor = load_vlm(taught_dir)
    rows = _rows_with_answers()
    ds = vgym_dataset(TASK, "train", rows[1] + 1, 0, tools=("crop",)).select(rows)
    factory = vgym_environment_factory(TASK, tools=("crop",), max_turns=3)
    seen: list[list[Any]] = []

    def spy(prompts: list, completions: list, environments: list, **kwargs: Any) -> list[float]:
        seen.append(completions)
        return vgym_env_reward_func(prompts, completions, environments, **kwargs)

    args = _trl_args(tmp_path, max_completion_length=200, max_tool_calling_iterations=2)
    with pytest.raises(ValueError, match="does not support tool calling"):  # Qwen2-VL's own template
        GRPOTrainer(model, reward_funcs=spy, args=args, train_dataset=ds, processing_class=processor,
                    environment_factory=factory)
    trainer = GRPOTrainer(model, reward_funcs=spy, args=args, train_dataset=ds,
                          processing_class=with_tool_chat_template(processor), environment_factory=factory)
    # only the vgym tools are offered to the model
    assert [tool.__name__ for tool in trainer.tools] == ["crop"]
    trainer.train()
    assert trainer.state.global_step == 1
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] == 1.0 and logged["tools/failure_frequency"] == 0.0
    for completion in seen[0]:
        call, tool, final = completion
        assert call["tool_calls"][0]["function"] == {"name": "crop", "arguments": {"box": BOX}}
        assert tool["role"] == "tool" and tool["content"][0]["image"].size == (224, 224)  # the zoomed crop
        assert final["content"] == f"<answer>{ANSWER}</answer>"
    envs = trainer.environments
    assert [e.env.sample.id for e in envs] == [ds[0]["sample_id"]] * 2 + [ds[1]["sample_id"]] * 2
    assert [e.tool_calls for e in envs] == [1, 1, 1, 1]
    # The env's composite reward: 0.9 accuracy + 0.1 format; the wrong answer keeps the format part.
    assert [e.reward for e in envs] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_environment_tool_errors_and_budgets() -> None:
    factory = vgym_environment_factory(TASK, max_turns=3)
    env = factory()
    env.reset(**vgym_dataset(TASK, "train", 1, 0, tools=("crop",))[0])
    with pytest.raises(ToolError, match="unknown argument"):  # checked by the env, as in vgym's own rollouts
        env.crop(box=[0, 0, 100, 100], zoom=2)
    with pytest.raises(ToolError, match="empty or inverted"):
        env.crop(box=[5, 5, 1, 1])
    blocks = env.crop(box=[0, 0, 100, 100])  # turn 3 = max_turns: the env truncates the episode
    assert blocks[-1] == {"type": "text", "text": "crop of image 0 at [0, 0, 100, 100] [image 1: 100x100]"}
    width, height = blocks[0]["image"].size  # the 100x100 crop zoomed to the 224² budget, as the env shows it
    assert width == height and 200 * 200 < width * height <= 224 * 224
    with pytest.raises(ToolError, match="episode is over"):
        env.crop(box=[0, 0, 100, 100])
    # truncated before answering
    assert finish_episode(env, "<answer>horizontal</answer>") == 0.0 and env.tool_calls == 3
    with pytest.raises(InvalidConfigError, match="offers no tool"):
        vgym_environment_factory(TASK, tools=())
    with pytest.raises(ValueError, match="does not belong"):
        env.reset(sample_id="visual_search/train/7/0")
