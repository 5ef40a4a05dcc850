"""Tests of vgym/rollout.py (with the oracle and HF policies): loss masks, append-only sequences, image
tokens, delta templating == full templating, seeded sampling, tools-off episodes, template checks and
trajectory files."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vgym.env import VisualToolEnv
from vgym.policies.base import Policy, PolicyInput, PolicyOutput, reads_ground_truth
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, rollout
from vgym.rollout.trajectory import Trajectory, load_trajectory_records, save_trajectories

SPECS = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(3)]
"""Three different samples (distinct sample ids), played in one lockstep batch."""
TURN_END = "<|im_end|>"
# Tokens that only the prompt, the template or the env produce; the loss mask must never cover them.
NON_POLICY_TOKENS = ("<|im_start|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<tool_response>",
                     "</tool_response>")
PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


class Recorder:
    """Delegates to a policy; records each turn's input ids, messages and output per sample id, and checks
    that ``act`` leaves the global torch RNG as it found it."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.reads_ground_truth = reads_ground_truth(inner)  # what the wrapped policy is given, no more
        Turn = tuple[torch.Tensor, list[dict[str, Any]], PolicyOutput]
        self.turns: dict[str, list[Turn]] = defaultdict(list)
        self.rng_unchanged = True

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        before = torch.random.get_rng_state()
        outputs = self.inner.act(batch)
        self.rng_unchanged &= torch.equal(before, torch.random.get_rng_state())
        for item, out in zip(batch, outputs):
            # copies: the rollout keeps appending to the episode's message list after this call
            self.turns[item.episode_id].append((item.input_ids.clone(), copy.deepcopy(item.messages), out))
        return outputs


def _play(policy: Policy, processor: Any, specs: Sequence[EpisodeSpec] = SPECS, **env: Any) -> tuple[
        list[Trajectory], Recorder]:
    recorder = Recorder(policy)
    trajs = rollout(lambda: VisualToolEnv("visual_search", **env), recorder, ChatEncoder(processor), specs)
    assert len({t.sample_id for t in trajs}) == len(specs)  # the recorder keys turns by sample id
    return trajs, recorder


def _ids(processor: Any, tokens: Sequence[str]) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """``[start, end)`` of each maximal run of ones in a 1-D 0/1 mask."""
    padded = torch.cat([torch.zeros(1, dtype=torch.long), mask.long(), torch.zeros(1, dtype=torch.long)])
    edges = torch.diff(padded).nonzero().flatten().tolist()
    return list(zip(edges[::2], edges[1::2]))


# ---------------------------------------------------------------- oracle rollouts


def test_loss_mask_covers_exactly_the_model_turns(tiny) -> None:
    """Mask 1 exactly on each turn's tokens + end-of-turn token; never on prompt, image, env or template
    tokens."""
    _, processor = tiny
    trajs, rec = _play(OraclePolicy(), processor)
    encoder = ChatEncoder(processor)
    tok = processor.tokenizer
    for traj in trajs:
        turns = rec.turns[traj.sample_id]
        assert traj.num_turns == len(turns) == 2  # crop, then answer
        expected = torch.zeros_like(traj.loss_mask)
        for input_ids, _, out in turns:
            start = len(input_ids)  # the turn starts right after the ids the policy saw
            expected[start : start + len(encoder.encode_policy_text(out.text))] = 1
        assert torch.equal(traj.loss_mask, expected)
        runs = _runs(traj.loss_mask)
        assert [tok.decode(traj.input_ids[a:b]) for a, b in runs] == [
            t["text"] + TURN_END for t in traj.turns
        ]
        assert tok.decode(traj.input_ids[traj.loss_mask == 1]) == "".join(
            t["text"] + TURN_END for t in traj.turns
        )
        for token_id in _ids(processor, NON_POLICY_TOKENS):
            assert (traj.input_ids == token_id).any()  # each really occurs ...
            assert not traj.loss_mask[traj.input_ids == token_id].any()  # ... and is never trained on
        assert not traj.loss_mask[: len(turns[0][0])].any()  # system prompt and user question
        assert torch.equal(traj.logprobs[traj.loss_mask == 0], torch.zeros(int((traj.loss_mask == 0).sum())))


def test_sequences_are_append_only(tiny) -> None:
    """The ids the policy saw at turn k are a prefix of those at turn k+1 and of the final trajectory."""
    _, processor = tiny
    trajs, rec = _play(OraclePolicy(), processor)
    for traj in trajs:
        seen = [ids for ids, _, _ in rec.turns[traj.sample_id]] + [traj.input_ids]
        for shorter, longer in zip(seen, seen[1:]):
            assert len(shorter) < len(longer) and torch.equal(longer[: len(shorter)], shorter)
        for ids in seen:
            assert torch.equal(traj.input_ids[: len(ids)], ids)


def test_image_tokens_match_image_tensors(tiny) -> None:
    """#<|image_pad|> == sum(grid.prod(-1)) // 4 (2x2 merge); pixel_values has one row per patch; one grid per
    image."""
    _, processor = tiny
    trajs, _ = _play(OraclePolicy(), processor)
    for traj in trajs:
        grid = traj.image_grid_thw
        assert grid is not None and traj.pixel_values is not None
        assert grid.shape == (len(traj.images), 3) == (2, 3)  # the question image + the crop
        n_pads = int((traj.input_ids == processor.image_token_id).sum())
        assert n_pads == int(grid.prod(-1).sum()) // 4
        assert traj.pixel_values.shape[0] == int(grid.prod(-1).sum())


def test_delta_templating_equals_full_templating(tiny) -> None:
    """The appended chunks are token-identical to templating the whole conversation at once."""
    _, processor = tiny
    trajs, rec = _play(OraclePolicy(), processor)
    for traj in trajs:
        messages = rec.turns[traj.sample_id][-1][1]  # the chat before the last turn
        final = {"role": "assistant", "content": [{"type": "text", "text": traj.turns[-1]["text"]}]}
        text = processor.apply_chat_template(messages + [final], tokenize=False, add_generation_prompt=False)
        full = processor(text=[text], images=[Image.fromarray(im) for im in traj.images], return_tensors="pt")
        ids, n = full["input_ids"][0], len(traj.input_ids)
        mismatch = next((i for i in range(min(n, len(ids))) if ids[i] != traj.input_ids[i]), None)
        decode = processor.tokenizer.decode
        assert mismatch is None, (
            f"first difference at token {mismatch}: delta {decode(traj.input_ids[mismatch:][:20])!r}"
            f" vs full {decode(ids[mismatch:][:20])!r}"
        )
        # the trajectory stops at the model's end-of-turn token; the template then only adds its newline
        assert processor.tokenizer.decode(ids[n:]) == "\n"
        assert torch.equal(full["pixel_values"], traj.pixel_values)
        assert torch.equal(full["image_grid_thw"], traj.image_grid_thw)


def test_tools_off_env_answers_in_one_turn(tiny) -> None:
    """Without tools the oracle answers at once: one turn, one image, no tool call, correct answer."""
    _, processor = tiny
    trajs, _ = _play(OraclePolicy(), processor, tools=())
    for traj in trajs:
        assert traj.num_turns == 1 and traj.num_tool_calls == 0
        assert len(traj.images) == 1 and traj.image_grid_thw is not None and traj.image_grid_thw.shape[0] == 1
        assert traj.terminated and traj.reward_parts["accuracy"] == 1.0
        assert len(_runs(traj.loss_mask)) == 1


def test_chat_encoder_rejects_a_non_append_only_template(tiny) -> None:
    """A template that renders messages newest-first changes earlier text when a message is added."""
    _, processor = tiny
    ChatEncoder(processor)  # the real template passes
    reversed_proc = copy.copy(processor)  # shallow copy: the shared processor keeps its template
    reversed_proc.chat_template = (
        "{% for message in messages | reverse %}<|im_start|>{{ message['role'] }}\n"
        "{% for c in message['content'] %}"
        "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert processor.chat_template != reversed_proc.chat_template
    with pytest.raises(ValueError, match="not append-only"):
        ChatEncoder(reversed_proc)


def test_save_and_load_trajectories(tiny, tmp_path: Path) -> None:
    """JSONL records load back with the right counts; the PNGs hold exactly the trajectory images."""
    _, processor = tiny
    trajs, _ = _play(OraclePolicy(), processor)
    path = save_trajectories(trajs, tmp_path, "oracle")
    assert path == tmp_path / "oracle.jsonl"
    records = load_trajectory_records(path)
    assert len(records) == len(trajs)
    for record, traj in zip(records, trajs):
        assert record["sample_id"] == traj.sample_id and record["reward"] == traj.reward
        assert record["num_tokens"] == len(traj.input_ids)
        assert record["num_policy_tokens"] == int(traj.loss_mask.sum())
        assert len(record["turns"]) == traj.num_turns
        assert len(record["images"]) == len(traj.images) == 2
        for rel, image in zip(record["images"], traj.images):
            loaded = cv2.cvtColor(cv2.imread(str(tmp_path / rel)), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(loaded, image)


@pytest.mark.parametrize("max_turns", [4, 1], ids=["answered", "truncated"])
def test_trajectories_carry_the_question_and_gold_answer_for_their_records(tiny, tmp_path: Path,
                                                                            max_turns: int) -> None:
    """The env's final step hands the sample's question and gold answer to the trajectory (and its saved
    record) whether the model answered or was cut at ``max_turns`` (the oracle crops first, so one turn cuts
    it); no policy input carries either."""
    _, processor = tiny
    trajs, recorder = _play(OraclePolicy(), processor, max_turns=max_turns)
    task = VisualToolEnv("visual_search").task
    for traj, spec in zip(trajs, SPECS):
        sample = task.sample("train", spec.index, 0)
        assert traj.terminated is (max_turns == 4) and traj.truncated is (max_turns == 1)
        assert traj.question == sample.question and traj.gold_answer == sample.answer
        for _, messages, _ in recorder.turns[traj.sample_id]:  # what the policy saw: the chat only
            assert all(set(m) == {"role", "content"} for m in messages)
    records = load_trajectory_records(save_trajectories(trajs, tmp_path, "t"))
    expected = [(t.question, t.gold_answer) for t in trajs]
    assert [(r["question"], r["gold_answer"]) for r in records] == expected


# ---------------------------------------------------------------- HF policy (untrained tiny model)


def _hf_rollout(tiny, seed: int) -> tuple[list[Trajectory], Recorder]:
    model, processor = tiny
    # 16 new tokens (not 64): enough to produce cut-off turns and env errors, and fast on a CPU
    policy = HFPolicy(model, processor, GenerationConfig(max_new_tokens=16, temperature=1.0), seed=seed)
    return _play(policy, processor)


def test_hf_rollout_masks_exactly_the_generated_tokens(tiny) -> None:
    """Mask 1 exactly on generated ids, with their finite, non-positive behaviour log-probs; a cut turn gets a
    mask-0 end-of-turn token; no placeholder is ever generated; the global torch RNG is untouched."""
    _, processor = tiny
    trajs, rec = _hf_rollout(tiny, seed=0)
    turn_end = ChatEncoder(processor).turn_end_id
    placeholders = set(_ids(processor, PLACEHOLDERS))
    assert rec.rng_unchanged
    for traj in trajs:
        expected_mask = torch.zeros_like(traj.loss_mask)
        for input_ids, _, out in rec.turns[traj.sample_id]:
            start, n = len(input_ids), len(out.token_ids)
            assert 1 <= n <= 16 and not placeholders & set(out.token_ids)
            assert traj.input_ids[start : start + n].tolist() == out.token_ids
            expected_mask[start : start + n] = 1
            lp = traj.logprobs[start : start + n]
            assert torch.isfinite(lp).all() and (lp <= 0).all()
            torch.testing.assert_close(lp, torch.tensor(out.logprobs))
            if out.token_ids[-1] != turn_end:  # cut at max_new_tokens: the rollout closes the turn itself
                assert int(traj.input_ids[start + n]) == turn_end
        assert torch.equal(traj.loss_mask, expected_mask)
        assert not traj.logprobs[traj.loss_mask == 0].any()
        grid = traj.image_grid_thw
        assert int((traj.input_ids == processor.image_token_id).sum()) == int(grid.prod(-1).sum()) // 4
        assert traj.pixel_values.shape[0] == int(grid.prod(-1).sum())


def test_hf_rollout_is_seeded(tiny) -> None:
    """Same policy seed: identical trajectories; another seed: different ones."""
    first, _ = _hf_rollout(tiny, seed=0)
    again, _ = _hf_rollout(tiny, seed=0)
    other, _ = _hf_rollout(tiny, seed=1)
    for a, b in zip(first, again):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        assert torch.equal(a.logprobs, b.logprobs)
        assert [t["text"] for t in a.turns] == [t["text"] for t in b.turns]  # (tool latencies differ)
    assert any(not torch.equal(a.input_ids, c.input_ids) for a, c in zip(first, other))
