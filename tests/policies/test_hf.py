"""HFPolicy's behaviour log-probs: the distribution it samples from, recorded without keeping every step's
scores; its sampling state round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TopPLogitsWarper

from vgym.engine.modeling import model_inputs
from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput, StatefulPolicy
from vgym.policies.hf import GenerationConfig, HFPolicy, _ChosenLogprobs
from vgym.rollout.chat import ChatEncoder


def _item(processor, index: int) -> PolicyInput:  # type: ignore[no-untyped-def]
    env = VisualToolEnv("visual_search", max_pixels=112 * 112)
    obs, info = env.reset(seed=index, options={"split": "train", "index": index})
    enc = ChatEncoder(processor).encode_prompt(info["messages"], obs["images"])
    return PolicyInput(input_ids=enc.input_ids, pixel_values=enc.pixel_values,
                       image_grid_thw=enc.image_grid_thw, messages=info["messages"], turn=0,
                       tools_enabled=True, images=obs["images"])


def _teacher_forced(model, item: PolicyInput, tokens: list[int], temperature: float, top_p: float,
                    suppressed: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """log p(token) of each generated token from one forward over prompt + completion, warped as sampled."""
    ids = torch.cat([item.input_ids, torch.tensor(tokens)])[None]
    with torch.no_grad():
        inputs = model_inputs(model, ids, torch.ones_like(ids), item.pixel_values, item.image_grid_thw)
        logits = model(**inputs).logits
    n = len(item.input_ids)
    scores = logits[0, n - 1 : n - 1 + len(tokens)].float()
    scores[:, suppressed] = -float("inf")
    scores = scores / temperature
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(ids[:, :n], scores)
    return torch.log_softmax(scores, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


@pytest.mark.parametrize("decoder", ["auto", "generate"])
@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_are_those_of_the_sampling_distribution(tiny, temperature: float, top_p: float,
                                                         decoder: str) -> None:
    """Temperature and nucleus cut applied: the recorded log-prob of every sampled token equals a
    teacher-forced forward's under the same warping, with either decoder (vgym's lean loop or ``generate``) —
    even when the checkpoint's generation config asks for a repetition penalty, top-k and another temperature
    (as real Qwen2-VL checkpoints do), which must not leak into sampling."""
    model, processor = tiny
    model = copy.deepcopy(model)
    model.generation_config.repetition_penalty = 1.5
    model.generation_config.top_k = 3
    model.generation_config.temperature = 0.01
    config = GenerationConfig(max_new_tokens=12, temperature=temperature, top_p=top_p, decoder=decoder)
    policy = HFPolicy(model, processor, config, seed=3)
    batch = [_item(processor, i) for i in range(3)]
    for item, out in zip(batch, policy.act(batch)):
        expected = _teacher_forced(model, item, out.token_ids, temperature, top_p, policy.suppressed_ids)
        assert torch.isfinite(expected).all()
        torch.testing.assert_close(torch.tensor(out.logprobs), expected, atol=2e-4, rtol=0)


def test_recorder_reads_each_chosen_token_one_step_late() -> None:
    """Synthetic scores: column t is log_softmax(scores_t)[token_t]; only one step's scores are held at a
    time."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(2, 5, generator=gen) for _ in range(3)]
    tokens = torch.tensor([[1, 4, 0], [3, 3, 2]])
    rec = _ChosenLogprobs()
    prompt = torch.tensor([[7], [7]])
    for t, scores in enumerate(steps):
        seen = torch.cat([prompt, tokens[:, :t]], dim=1)
        assert rec(seen, scores) is scores  # scores pass through unchanged
        assert len(rec.columns) == t
    got = rec.finish(tokens)
    expected = torch.stack([torch.log_softmax(s, -1).gather(-1, tokens[:, t : t + 1]).squeeze(-1)
                            for t, s in enumerate(steps)], dim=1)
    torch.testing.assert_close(got, expected)
    assert rec.pending is None
    assert _ChosenLogprobs().finish(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)


def test_state_dict_restores_the_sampling_draws(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A saved state (through ``torch.save`` and a weights-only load, as a checkpoint) brings the policy back
    to the same sampled turn; without it the next turn is sampled afresh."""
    model, processor = tiny
    policy = HFPolicy(model, processor, GenerationConfig(max_new_tokens=8, temperature=1.0), seed=3)
    assert isinstance(policy, StatefulPolicy)
    batch = [_item(processor, 0)] * 4
    torch.save(policy.state_dict(), tmp_path / "state.pt")
    first = [o.token_ids for o in policy.act(batch)]
    second = [o.token_ids for o in policy.act(batch)]
    policy.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert [o.token_ids for o in policy.act(batch)] == first != second
