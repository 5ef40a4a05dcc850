"""vgym/decode_step.py: decode steps give the model's own logits and KV cache for the three Qwen-VL families
(padded and unpadded batches, rows reordered, room used up, LoRA adapters), and the models it does not
reproduce are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from qwen_families import FAMILIES, IMAGE, family_batch, family_model

from vgym.engine.decode_step import DecodeStep
from vgym.engine.decoding import mrope_positions, sample_turn
from vgym.engine.modeling import model_inputs
from vgym.engine.prefix_cache import cache_keyword, new_cache


def _prefill(model, inputs, positions):  # type: ignore[no-untyped-def]
    cache = new_cache(model)
    with torch.no_grad():
        model(**inputs, position_ids=positions, use_cache=True, **{cache_keyword(model): cache})
    return cache


def _compare_steps(model, inputs, steps: int, room: int, padded: bool, reorder_at: int | None = None) -> None:
    """Feed the same random tokens to the model (``DynamicCache``) and to a DecodeStep (its own cache copy):
    equal logits and cache contents every step."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions, next_position = mrope_positions(ids, mask, inputs.get("image_grid_thw"), IMAGE, 2)
    reference = _prefill(model, inputs, positions)
    stepper = DecodeStep.create(model, _prefill(model, inputs, positions), room=room)
    assert stepper is not None
    gen = torch.Generator().manual_seed(3)
    full_mask = mask.clone()
    for step in range(steps):
        if step == reorder_at:  # keep rows 3, 0, 0 (a drop and a repeat)
            index = torch.tensor([3, 0, 0])
            reference.reorder_cache(index)
            stepper.reorder(index)
            full_mask, next_position = full_mask[index], next_position[index]
        tokens = torch.randint(20, 300, (len(full_mask),), generator=gen)
        full_mask = torch.cat([full_mask, full_mask.new_ones(len(full_mask), 1)], 1)
        with torch.no_grad():
            expected = model(
                input_ids=tokens[:, None],
                attention_mask=full_mask if padded else None,
                position_ids=(next_position + step).view(1, -1, 1).expand(3, -1, -1),
                use_cache=True,
                **{cache_keyword(model): reference},
            ).logits[:, -1]
        ours = stepper(tokens, next_position + step, full_mask if padded else None)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
        for mine, theirs in zip(stepper.cache.layers, reference.layers):
            torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mine.values, theirs.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_steps_match_the_model_on_a_padded_batch_with_images(family: str, dtype: torch.dtype) -> None:
    """Five left-padded rows with images (GQA: 4 query heads on 2 kv heads), 6 steps with only 2 columns of
    room (doubled twice), rows reordered after step 3; in float32 and in bfloat16 (the GPU recipes' dtype: the
    same operations in the same order, so the same rounding)."""
    model, patch = family_model(family)
    model = model.to(dtype)
    ids, mask, pixels, grids = family_batch(patch)
    assert not mask.all()
    inputs = model_inputs(model, ids, mask, pixels.to(dtype), grids)
    _compare_steps(model, inputs, steps=6, room=2, padded=True, reorder_at=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_match_the_model_without_a_mask(family: str) -> None:
    """Equal-length rows and no attention mask (what the sampling loop passes when nothing is padded)."""
    model, _ = family_model(family)
    ids = torch.randint(20, 300, (3, 9), generator=torch.Generator().manual_seed(0))
    inputs = model_inputs(model, ids, torch.ones_like(ids))
    _compare_steps(model, inputs, steps=4, room=8, padded=False)


def test_a_view_taken_before_a_step_keeps_its_contents() -> None:
    """Steps write to free columns only, so cache tensors read earlier (the prefix cache keeps such views)
    keep their contents."""
    model, _ = family_model("qwen2_vl")
    ids = torch.randint(20, 300, (2, 5), generator=torch.Generator().manual_seed(0))
    inputs = model_inputs(model, ids, torch.ones_like(ids))
    positions, next_position = mrope_positions(ids, torch.ones_like(ids), None, IMAGE, 2)
    stepper = DecodeStep.create(model, _prefill(model, inputs, positions), room=4)
    before = stepper.cache.layers[0].keys
    copied = before.clone()
    stepper(torch.tensor([30, 31]), next_position, None)
    assert torch.equal(before, copied) and before.shape[2] == 5
    assert stepper.cache.layers[0].keys.shape[2] == 6


def test_lora_adapters_apply() -> None:
    """Through a PEFT LoRA wrapper (adapter weights made non-zero) the steps still give the model's logits."""
    peft = pytest.importorskip("peft")
    model, _ = family_model("qwen2_vl")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"],
                                                      init_lora_weights=False)).eval()
    ids = torch.randint(20, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    inputs = model_inputs(lora, ids, torch.ones_like(ids))
    _compare_steps(lora, inputs, steps=3, room=4, padded=False)
    with lora.disable_adapter(), torch.no_grad():  # the adapters matter: without them the logits differ
        plain = lora(**inputs).logits[:, -1]
    assert not torch.allclose(plain, lora(**inputs).logits[:, -1].detach(), atol=1e-3)


def test_models_it_does_not_reproduce_are_refused() -> None:
    model, _ = family_model("qwen2_vl")
    ids = torch.randint(20, 300, (1, 4), generator=torch.Generator().manual_seed(0))
    positions, _ = mrope_positions(ids, torch.ones_like(ids), None, IMAGE, 2)
    cache = _prefill(model, model_inputs(model, ids, torch.ones_like(ids)), positions)
    assert DecodeStep.create(model, cache, room=1) is not None and DecodeStep.supports(model)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert DecodeStep.create(eager, cache, room=1) is None and not DecodeStep.supports(eager)
    hooked = copy.deepcopy(model)
    hooked.model.language_model.layers[1].register_forward_hook(lambda *args: None)
    assert DecodeStep.create(hooked, cache, room=1) is None
    other = copy.deepcopy(model)
    other.config.model_type = "llava"
    assert DecodeStep.create(other, cache, room=1) is None
    assert DecodeStep.create(model, new_cache(model), room=1) is None  # an empty cache


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_with_and_without_the_direct_steps_agrees(family: str) -> None:
    """Seeded sampling through ``sample_turn`` draws the same tokens with equal log-probs either way (rows end
    at different steps, so ended rows leave the batch on the way)."""
    model, patch = family_model(family)
    ids, mask, pixels, grids = family_batch(patch)
    inputs = model_inputs(model, ids, mask, pixels, grids)
    eos = [int(t) for t in range(20, 40)]  # frequent enough that rows end early
    runs = [sample_turn(model, inputs, max_new_tokens=12, eos_ids=eos, pad_id=0, direct=direct,
                        generator=torch.Generator().manual_seed(5)) for direct in (True, False)]
    (tokens, logprobs), (tokens_hf, logprobs_hf) = runs
    assert torch.equal(tokens, tokens_hf)
    assert (tokens == 0).any() and tokens.shape[1] > 1  # some rows ended before others
    torch.testing.assert_close(logprobs, logprobs_hf, atol=1e-4, rtol=0)
