"""vgym/decoding.py: the lean sampling loop reproduces the model's own rotary positions and ``generate``'s
tokens and log-probs for the Qwen-VL family, prefills each distinct prompt once, and stops, pads and seeds as
documented."""

from __future__ import annotations

import copy

import pytest
import torch
from qwen_families import FAMILIES, IMAGE, VISION_END, VISION_START, family_batch, family_model

from vgym.engine.decoding import draw, lean_decoding_supported, mrope_positions, sample_turn
from vgym.engine.modeling import model_inputs
from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput
from vgym.policies.hf import GenerationConfig, HFPolicy, collate_left
from vgym.rollout.chat import ChatEncoder


@pytest.mark.parametrize("family", FAMILIES)
def test_positions_and_greedy_tokens_match_the_model_and_generate(family: str) -> None:
    """Our positions give the logits of the model's own (every non-pad column), and greedy decoding gives
    ``generate``'s tokens with the log-softmax of its raw logits."""
    model, patch = family_model(family)
    ids, mask, pixels, grids = family_batch(patch)
    inputs = model_inputs(model, ids, mask, pixels, grids)
    assert lean_decoding_supported(model, grids)
    positions, _ = mrope_positions(ids, mask, grids, IMAGE, 2)
    with torch.no_grad():
        own = model(**inputs).logits
        ours = model(**inputs, position_ids=positions).logits
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], own[valid], atol=1e-5, rtol=1e-4)

    def greedy(eos: list[int]):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            reference = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=eos or None,
                                       pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        return reference, sample_turn(model, inputs, max_new_tokens=6, eos_ids=eos, pad_id=0, greedy=True)

    _, (free_run, _) = greedy([])
    eos = [int(free_run[3, 1])]  # row 3's second token ends that row: rows end at different steps
    reference, (tokens, logprobs) = greedy(eos)
    expected = reference.sequences[:, ids.shape[1]:]
    assert torch.equal(tokens, expected)
    raw = torch.stack(reference.scores, 1).float().log_softmax(-1).gather(-1, expected[..., None]).squeeze(-1)
    ended = torch.isin(expected, torch.tensor(eos)).long()
    live = (ended.cumsum(1) - ended) == 0  # up to and including each row's end token
    assert not live.all()  # generate's scores after a row's end are never used; ours are 0 there
    torch.testing.assert_close(logprobs[live], raw[live], atol=1e-4, rtol=0)
    assert (logprobs[~live] == 0).all()


def _prompts(model, processor, samples: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """Model inputs of visual-search prompts (112² images, tools off), one per sample index, left-padded."""
    encoder, rows = ChatEncoder(processor), []
    for index in samples:
        env = VisualToolEnv("visual_search", tools=(), max_turns=1, max_pixels=112 * 112)
        obs, info = env.reset(seed=index, options={"split": "train", "index": index})
        rows.append(encoder.encode_prompt(info["messages"], obs["images"]))
    ids, mask = collate_left([r.input_ids for r in rows], pad_id=0)
    return model_inputs(model, ids, mask, torch.cat([r.pixel_values for r in rows]),
                        torch.cat([r.image_grid_thw for r in rows]))


def test_each_distinct_prompt_is_prefilled_once(tiny) -> None:  # type: ignore[no-untyped-def]
    """A group of 4 equal prompts plus another sample: the prefill runs on 2 rows, decoding on all 5, and the
    rows of the group sample different tokens from the shared prefix."""
    model, processor = tiny
    inputs = _prompts(model, processor, (0, 0, 0, 1, 0))
    batch_sizes: list[int] = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: batch_sizes.append(kwargs["inputs_embeds"].shape[0]),
        with_kwargs=True,
    )
    tokens, _ = sample_turn(model, inputs, max_new_tokens=8, eos_ids=[], pad_id=0,
                            generator=torch.Generator().manual_seed(0))
    assert batch_sizes[0] == 2 and set(batch_sizes[1:]) == {5}
    assert tokens.shape == (5, 8) and len({tuple(t) for t in tokens[[0, 1, 2, 4]].tolist()}) > 1


def test_stops_pads_honours_min_tokens_and_is_seeded(tiny) -> None:  # type: ignore[no-untyped-def]
    """Rows end at their first end id (pad after it, log-prob 0); the loop ends when all rows have; no end id
    before ``min_new_tokens``; the same generator seed gives the same tokens, and the global RNG is
    untouched."""
    model, processor = tiny
    env = VisualToolEnv("visual_search", tools=(), max_turns=1, max_pixels=112 * 112)
    obs, info = env.reset(seed=0, options={"split": "train", "index": 0})
    enc = ChatEncoder(processor).encode_prompt(info["messages"], obs["images"])
    ids = enc.input_ids[None].repeat(6, 1)
    inputs = model_inputs(model, ids, torch.ones_like(ids), enc.pixel_values.repeat(6, 1),
                          enc.image_grid_thw.repeat(6, 1))
    vocab = len(processor.tokenizer)
    # a third of the vocabulary ends a row: rows end early and at different steps
    common = list(range(0, vocab, 3))
    state = torch.random.get_rng_state()
    runs = [sample_turn(model, inputs, max_new_tokens=40, eos_ids=common, pad_id=1,
                        generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    (tokens, logprobs), (again, _) = runs
    assert torch.equal(tokens, again)
    ends = [next(i for i, t in enumerate(row) if t % 3 == 0) for row in tokens.tolist()]
    assert tokens.shape[1] == max(ends) + 1 < 40 and len(set(ends)) > 1
    for row, end in enumerate(ends):
        assert (tokens[row, end + 1:] == 1).all() and (logprobs[row, end + 1:] == 0).all()
        assert (logprobs[row, : end + 1] < 0).all()
    late, _ = sample_turn(model, inputs, max_new_tokens=12, eos_ids=common, pad_id=1, min_new_tokens=10,
                          generator=torch.Generator().manual_seed(5))
    assert not (late[:, :10] % 3 == 0).any() and late.shape[1] > 10
    # no padding:
    greedy, _ = sample_turn(model, inputs, max_new_tokens=10, eos_ids=[], pad_id=1, greedy=True)
    with torch.no_grad():  # decoded without an attention mask
        reference = model.generate(
            **inputs, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=1
        )
    assert torch.equal(greedy, reference[:, ids.shape[1]:])


def test_policy_decoders_agree_and_videos_fall_back(tiny) -> None:  # type: ignore[no-untyped-def]
    """``HFPolicy`` with the lean loop and with ``generate``: the same greedy turns on a multi-turn-like
    batch; video grids (t > 1) and non-Qwen-VL models are not claimed by the lean loop."""
    model, processor = tiny
    batch = []
    for index in (0, 0, 3):
        env = VisualToolEnv("visual_search", max_pixels=112 * 112)
        obs, info = env.reset(seed=index, options={"split": "train", "index": index})
        enc = ChatEncoder(processor).encode_prompt(info["messages"], obs["images"])
        batch.append(PolicyInput(input_ids=enc.input_ids, pixel_values=enc.pixel_values,
                                 image_grid_thw=enc.image_grid_thw, messages=info["messages"], turn=0,
                                 tools_enabled=True, images=obs["images"]))
    outs = [
        HFPolicy(model, processor, GenerationConfig(max_new_tokens=10, temperature=0.0, decoder=d)).act(batch)
        for d in ("auto", "generate")
    ]
    for lean, slow in zip(*outs):
        assert lean.token_ids == slow.token_ids and lean.text == slow.text
        torch.testing.assert_close(
            torch.tensor(lean.logprobs), torch.tensor(slow.logprobs), atol=1e-4, rtol=0
        )
    assert not lean_decoding_supported(model, torch.tensor([[2, 4, 4]]))
    other = copy.copy(model)
    other.config = copy.copy(model.config)
    other.config.model_type = "llava"
    assert not lean_decoding_supported(other, torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="decoder"):
        GenerationConfig(decoder="vllm")


def test_ended_rows_leave_the_batch_without_changing_any_row(tiny) -> None:  # type: ignore[no-untyped-def]
    """Six different prompts whose rows end at different steps: once half of the rows have ended the cache
    keeps only the running ones (the decode batch shrinks), and every row's greedy tokens still equal
    ``generate``'s."""
    model, processor = tiny
    inputs = _prompts(model, processor, tuple(range(6)))
    ids = inputs["input_ids"]
    free, _ = sample_turn(model, inputs, max_new_tokens=30, eos_ids=[], pad_id=0, greedy=True)
    ends = sorted({int(free[r, 1]) for r in (1, 2, 3)})  # rows 1-3 end at step 1, others later or never
    batch_sizes: list[int] = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: batch_sizes.append(kwargs["inputs_embeds"].shape[0]),
        with_kwargs=True,
    )
    tokens, logprobs = sample_turn(model, inputs, max_new_tokens=30, eos_ids=ends, pad_id=0, greedy=True)
    sizes = list(batch_sizes)  # generate's own forwards below are not counted
    with torch.no_grad():
        reference = model.generate(
            **inputs, max_new_tokens=30, do_sample=False, eos_token_id=ends, pad_token_id=0
        )
    assert torch.equal(tokens, reference[:, ids.shape[1]:])
    ended = torch.isin(tokens, torch.tensor(ends)).long()
    steps = (ended.cumsum(1) - ended == 0).sum(1)  # each row's length up to and including its end
    assert sorted(steps.tolist())[:3] == [2, 2, 2] and max(steps) >= 10  # the premise: three rows end early
    assert sizes[:2] == [6, 6] and 0 < min(sizes) <= 3  # prefill, step 0; then half the rows left
    assert sizes[1:] == sorted(sizes[1:], reverse=True)
    for row, n in enumerate(steps.tolist()):
        assert (logprobs[row, n:] == 0).all() and (logprobs[row, :n] < 0).all()


def _second_turn(model, processor, first: dict, tokens: torch.Tensor, gen: torch.Generator):  # type: ignore[no-untyped-def]
    """Turn 2 inputs: each row's turn-1 prompt + its generated tokens + a reply holding a new random image."""
    config = model.config
    width = first["input_ids"].shape[1]
    rows, pixels, grids = [], [first["pixel_values"]], [first["image_grid_thw"]]
    for b in range(len(tokens)):
        prompt = first["input_ids"][b, width - int(first["attention_mask"][b].sum()):]
        image = (torch.rand(56, 84, 3, generator=gen) * 255).to(torch.uint8).numpy()
        patch = processor.image_processor(images=[image], return_tensors="pt")
        n = int(patch["image_grid_thw"].prod()) // 4
        reply = (
            [config.vision_start_token_id]
            + [config.image_token_id] * n
            + [config.vision_end_token_id, 40, 41]
        )
        rows.append(torch.cat([prompt, tokens[b], torch.tensor(reply)]))
        pixels.append(patch["pixel_values"])
        grids.append(patch["image_grid_thw"])
    ids, mask = collate_left(rows, pad_id=0)
    # images in row order: row b's turn-1 image(s), then its reply image
    first_images = first["pixel_values"].split(first["image_grid_thw"].prod(-1).tolist())
    ordered = [t for b in range(len(tokens)) for t in (first_images[b], pixels[b + 1])]
    ordered_grids = [g for b in range(len(tokens)) for g in (first["image_grid_thw"][b:b + 1], grids[b + 1])]
    return model_inputs(model, ids, mask, torch.cat(ordered), torch.cat(ordered_grids))


def test_next_turn_reads_the_kept_prefix_and_decodes_the_same(tiny) -> None:  # type: ignore[no-untyped-def]
    """Turn 1 on a group of 3 equal prompts + 2 others (rows ending at different steps), turn 2 with a new
    image per row: with the prefix cache the turn-2 prefill runs on the new tails only, and every token and
    log-prob equals a run without it. After a weight update the kept prefixes are not used."""
    from vgym.engine.prefix_cache import PrefixCache

    model, processor = tiny
    first = _prompts(model, processor, (0, 0, 0, 1, 2))
    store = PrefixCache()
    ends = list(range(0, len(processor.tokenizer), 4))  # a quarter of the vocabulary ends a row
    tokens, _ = sample_turn(model, first, max_new_tokens=12, eos_ids=ends, pad_id=1,
                            generator=torch.Generator().manual_seed(0), prefix_cache=store)
    ended = torch.isin(tokens, torch.tensor(ends)).long()
    lengths = ((ended.cumsum(1) - ended) == 0).sum(1).tolist()
    # rows end at different steps, some before the cache shrinks
    assert len(set(lengths)) > 2 and min(lengths) < 6
    tokens = [t[:n] for t, n in zip(tokens, lengths)]
    second = _second_turn(model, processor, first, tokens, torch.Generator().manual_seed(1))
    widths: list[int] = []
    model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    reused = sample_turn(
        model, second, max_new_tokens=10, eos_ids=[], pad_id=0, greedy=True, prefix_cache=store
    )
    tail = widths[0]
    fresh = sample_turn(model, second, max_new_tokens=10, eos_ids=[], pad_id=0, greedy=True)
    reply = 10  # vision start, 6 image tokens (4 x 6 patches merged 2 x 2), vision end, 2 text tokens
    # the replies (and a long row's last token, never fed), not the ~80-token prompts
    assert tail <= reply + 2
    assert widths[10] == second["input_ids"].shape[1]  # the run without the cache prefills everything
    assert torch.equal(reused[0], fresh[0])
    torch.testing.assert_close(reused[1], fresh[1], atol=1e-4, rtol=0)

    with torch.no_grad():
        next(model.parameters()).mul_(1.0)  # an in-place update, as an optimizer step
    widths.clear()
    sample_turn(model, second, max_new_tokens=1, eos_ids=[], pad_id=0, greedy=True, prefix_cache=store)
    assert widths == [second["input_ids"].shape[1]]


def test_draw_samples_the_given_distribution() -> None:
    """200,000 draws from two known distributions (one with zero-probability entries, as after top-p or a
    suppressed token): every frequency within 0.005 of its probability, zero-probability entries never drawn,
    and the same generator seed gives the same draws."""
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1, 0.0], [0.0, 0.0, 0.01, 0.09, 0.9]])
    logprobs = (probs.log() + 3.0).repeat(100_000, 1)  # unnormalised scores: draw takes the softmax
    picks = draw(logprobs, torch.Generator().manual_seed(0)).view(100_000, 2)
    for row in range(2):
        freq = torch.bincount(picks[:, row], minlength=5).float() / 100_000
        assert (freq - probs[row]).abs().max() < 0.005, freq  # 3 standard errors at p = 0.5
        assert (freq[probs[row] == 0] == 0).all()
    assert torch.equal(draw(logprobs[:50], torch.Generator().manual_seed(3)),
                       draw(logprobs[:50], torch.Generator().manual_seed(3)))


def test_a_kept_prefix_needs_equal_image_grids() -> None:
    """Equal ids and equal patch tensors laid out on another grid (2 x 8 vs 8 x 2 patches) are another image
    (other rotary positions): the kept prefix is not reused for it; with the same grid it is."""
    from transformers import DynamicCache

    from vgym.engine.prefix_cache import PrefixCache, record

    store = PrefixCache()
    cache = DynamicCache()
    cache.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), 0)
    patches = torch.randn(16, 12)
    ids = torch.tensor([1, VISION_START, IMAGE, IMAGE, IMAGE, IMAGE])
    record(
        store, store.start_generation(), cache, 0, torch.arange(6), ids, [patches], torch.tensor([[1, 2, 8]])
    )
    store.start_generation()
    longer = torch.cat([ids, torch.tensor([VISION_END, 30])])
    assert store.lookup(longer, [patches], torch.tensor([[1, 8, 2]])) is None
    hit = store.lookup(longer, [patches], torch.tensor([[1, 2, 8]]))
    assert hit is not None and torch.equal(hit.ids, ids)
