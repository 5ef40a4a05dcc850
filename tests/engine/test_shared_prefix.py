"""vgym/shared_prefix.py: the loss forward that runs each distinct prompt once gives the plain forward's
logits and gradients, runs the prefix once per group, and steps aside where it does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from vgym.engine.modeling import enable_checkpointing, model_inputs
from vgym.engine.shared_prefix import shared_prefix_logits
from vgym.env import VisualToolEnv
from vgym.rollout.chat import ChatEncoder

CAN_KEEP_CACHE = hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")
"""Whether this transformers lets a checkpointed layer keep the cache it is handed (5.24 and 5.25 do, 5.10
does not)."""


def _two_turn_batch(model, processor):  # type: ignore[no-untyped-def]
    """Six right-padded rows: two groups of three (samples 0 and 1) whose prompts are shared within the group,
    each row continuing with its own completion tokens and a reply holding its own image (as a crop
    result)."""
    encoder = ChatEncoder(processor)
    gen = torch.Generator().manual_seed(0)
    config = model.config
    rows, pixels, grids, prompt_lengths = [], [], [], []
    for index in (0, 0, 0, 1, 1, 1):
        env = VisualToolEnv("visual_search", tools=(), max_turns=1, max_pixels=112 * 112)
        obs, info = env.reset(seed=index, options={"split": "train", "index": index})
        enc = encoder.encode_prompt(info["messages"], obs["images"])
        image = (torch.rand(56, 56, 3, generator=gen) * 255).to(torch.uint8).numpy()
        patch = processor.image_processor(images=[image], return_tensors="pt")
        n = int(patch["image_grid_thw"].prod()) // 4
        completion = torch.randint(20, 300, (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen)
        reply = torch.tensor([config.vision_start_token_id] + [config.image_token_id] * n +
                             [config.vision_end_token_id])
        more = torch.randint(20, 300, (int(torch.randint(2, 9, (1,), generator=gen)),), generator=gen)
        rows.append(torch.cat([enc.input_ids, completion, reply, more]))
        prompt_lengths.append(len(enc.input_ids))
        pixels += [enc.pixel_values, patch["pixel_values"]]
        grids += [enc.image_grid_thw, patch["image_grid_thw"]]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    mask = torch.stack([torch.nn.functional.pad(torch.ones(len(r), dtype=torch.long), (0, width - len(r)))
                        for r in rows])
    return model_inputs(model, ids, mask, torch.cat(pixels), torch.cat(grids)), min(prompt_lengths)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_same_logits_and_gradients_with_the_prompt_run_once(tiny, checkpointing: bool) -> None:  # type: ignore[no-untyped-def]
    """With and without (non-reentrant) gradient checkpointing — the backward then replays every decoder
    layer, which must read the same prefix again. A transformers whose checkpointed layers drop every cache
    (5.10: no ``_can_checkpoint_with_cache``) gets None, so the plain forward runs."""
    model, processor = tiny
    model = copy.deepcopy(model).train()
    if checkpointing:
        enable_checkpointing(model)  # what the recipes call
    inputs, first = _two_turn_batch(model, processor)
    if checkpointing and not CAN_KEEP_CACHE:
        assert shared_prefix_logits(model, inputs, first) is None
        return
    keep = inputs["input_ids"].shape[1] - first + 1
    calls: list[tuple[int, int]] = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])),
        with_kwargs=True,
    )
    results = []
    for shared in (False, True):
        model.zero_grad()
        calls.clear()
        logits = (
            shared_prefix_logits(model, inputs, first)
            if shared
            else model(**inputs, logits_to_keep=keep).logits
        )
        valid = inputs["attention_mask"][:, first - 1:].bool()
        (logits.float().log_softmax(-1)[..., :40].mean(-1)[valid]).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads, list(calls)))
    (plain, plain_grads, plain_calls), (shared, shared_grads, shared_calls) = results
    width = inputs["input_ids"].shape[1]
    assert plain_calls == [(6, width)]
    # one prefix per group, then every row's tail
    assert shared_calls == [(2, first - 1), (6, width - first + 1)]
    valid = inputs["attention_mask"][:, first - 1:].bool()
    torch.testing.assert_close(shared[valid], plain[valid], atol=1e-5, rtol=1e-4)
    assert plain_grads.keys() == shared_grads.keys() and any("visual" in n for n in shared_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-3, msg=name)


def test_steps_aside_where_it_does_not_apply(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """No shared prompt (one row per sample), a prefix too short, reentrant checkpointing, checkpointing
    outside transformers' checkpointing layers, or a transformers whose checkpointed layers cannot keep a
    cache: None."""
    model, processor = tiny
    inputs, first = _two_turn_batch(model, processor)
    one_each = {
        k: (v[[0, 3]] if k != "pixel_values" and k != "image_grid_thw" else v) for k, v in inputs.items()
    }
    grids = inputs["image_grid_thw"]
    patches = inputs["pixel_values"].split(grids.prod(-1).tolist())
    one_each["pixel_values"] = torch.cat([patches[i] for i in (0, 1, 6, 7)])
    one_each["image_grid_thw"] = grids[[0, 1, 6, 7]]
    assert shared_prefix_logits(model, one_each, first) is None
    assert shared_prefix_logits(model, inputs, 4) is None
    reentrant, plain = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    enable_checkpointing(reentrant, reentrant=True)
    assert shared_prefix_logits(reentrant, inputs, first) is None
    enable_checkpointing(plain)
    assert (shared_prefix_logits(plain, inputs, first) is not None) == CAN_KEEP_CACHE
    own_loop = copy.deepcopy(model).train()
    # as a model that checkpoints in its own layer loop
    own_loop.model.language_model.gradient_checkpointing = True
    assert shared_prefix_logits(own_loop, inputs, first) is None
    if CAN_KEEP_CACHE:
        monkeypatch.delattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")
    assert shared_prefix_logits(plain, inputs, first) is None
    assert not any(hasattr(m, "_can_checkpoint_with_cache") for m in plain.modules())  # nothing left behind
