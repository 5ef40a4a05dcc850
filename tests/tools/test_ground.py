"""Tests of tools/ground.py (``vgym.tools.ground``): oracle truth, opencv recall on drawn scenes, the Haar
face detector on a real photo, a tiny random OWLv2 through the hf backend, model-facing errors and cache
replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

import vgym.tools.ground  # noqa: F401  (registers the tool)
from vgym.errors import ToolError
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, ToolContext
from vgym.tools.ground import MAX_DETECTIONS, load_detector

# The test's own palette (RGB): independent of the tool's HSV table, close to tasks/visual_search.py's
# colours.
PALETTE = {
    "red": (230, 25, 25),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
    "orange": (250, 140, 10),
    "purple": (120, 20, 140),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
RECALL_FLOOR = 0.97  # measured 1.00 (467/467 objects) for every query kind below, on seeds 0..99
# hand-labelled: cheek to cheek, hairline to chin (the hair starts at y≈30)
ASTRONAUT_FACE = (180, 60, 268, 162)


def draw_scene(seed: int, height: int = 144, width: int = 192) -> tuple[np.ndarray, list[dict]]:
    """3-6 non-overlapping coloured circles / rotated squares / rotated triangles on a plain or noisy grey
    board.

    Returns the RGB image and ``metadata["objects"]``-style entries whose boxes come from each shape's own
    mask.
    """
    rng = np.random.default_rng(seed)
    board = np.full((height, width, 3), float(rng.integers(90, 181)))
    if rng.random() < 0.5:
        board += rng.normal(0.0, 6.0, board.shape)  # light sensor-like noise
    image = np.clip(board, 0, 255).astype(np.uint8)
    objects: list[dict] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(3, 7))):
        while True:  # rejection sampling keeps a 4 px gap between the shapes' enclosing circles
            r = rng.uniform(9, 22)
            cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
            if all(math.hypot(cx - x, cy - y) >= r + q + 4 for x, y, q in placed):
                break
        placed.append((cx, cy, r))
        colour, shape = list(PALETTE)[rng.integers(len(PALETTE))], SHAPES[rng.integers(len(SHAPES))]
        mask = np.zeros((height, width), np.uint8)
        if shape == "circle":
            cv2.circle(image, (round(cx), round(cy)), round(r), PALETTE[colour], -1, cv2.LINE_AA)
            cv2.circle(mask, (round(cx), round(cy)), round(r), 1, -1)
        else:
            n, angle = (4 if shape == "square" else 3), rng.uniform(0, 2 * math.pi)
            corners = [
                (
                    cx + r * math.cos(angle + 2 * math.pi * k / n),
                    cy + r * math.sin(angle + 2 * math.pi * k / n),
                )
                for k in range(n)
            ]
            polygon = np.round(np.array(corners)).astype(np.int32)
            cv2.fillPoly(image, [polygon], PALETTE[colour], cv2.LINE_AA)
            cv2.fillPoly(mask, [polygon], 1)
        ys, xs = np.nonzero(mask)
        objects.append({"name": f"{colour} {shape}",
                        "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    return image, objects


def iou(a: list[int], b: list[int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_ctx(*images: np.ndarray, metadata: dict | None = None) -> ToolContext:
    return ToolContext(images=list(images), metadata=metadata or {}, rng=np.random.default_rng(0),
                       max_pixels=224 * 224)


def run(ctx: ToolContext, backend: str, **arguments: object) -> list[dict]:
    """Call the registered tool and parse the JSON list on the text's last line."""
    result = TOOLS.get("ground")(ctx, arguments, backend=backend)
    found = json.loads(result.text.splitlines()[-1])
    assert len(result.images) == (1 if found else 0)
    return found


# --- oracle
# -------------------------------------------------------------------------------------------------------

OBJECTS = [{"name": "red circle", "box": [10, 10, 30, 30]}, {"name": "blue circle", "box": [40, 5, 60, 25]},
           {"name": "red square", "box": [5, 40, 25.5, 58]}]


@pytest.mark.parametrize("query, boxes", [
    ("circle", [[10, 10, 30, 30], [40, 5, 60, 25]]),  # every word of the query in the name, metadata order
    ("Circles", [[10, 10, 30, 30], [40, 5, 60, 25]]),  # case and plural do not matter
    ("the red object", [[10, 10, 30, 30], [5, 40, 26, 58]]),  # filler words drop; 25.5 widens to pixel 26
    ("red square", [[5, 40, 26, 58]]),
    ("green circle", []),  # no object is green
    ("square red", [[5, 40, 26, 58]]),  # word order does not matter
])
def test_oracle_matches_names_by_words(query: str, boxes: list) -> None:
    found = run(
        make_ctx(np.zeros((60, 80, 3), np.uint8), metadata={"objects": OBJECTS}), "oracle", query=query
    )
    assert [d["box"] for d in found] == boxes
    assert all(d["score"] == 1.0 for d in found)


@pytest.mark.parametrize("seed", range(5))
def test_oracle_equals_scene_truth(seed: int) -> None:
    image, objects = draw_scene(seed)
    ctx = make_ctx(image, metadata={"objects": objects})
    for obj in objects:
        truth = [o["box"] for o in objects if o["name"] == obj["name"]]
        assert [d["box"] for d in run(ctx, "oracle", query=obj["name"])] == truth


# --- opencv
# -------------------------------------------------------------------------------------------------------

def test_opencv_finds_a_pixel_exact_rectangle() -> None:
    image = np.full((30, 40, 3), 128, np.uint8)
    image[6:20, 5:15] = (230, 25, 25)  # a 10x14 red block: box [5, 6, 15, 20] (x2/y2 exclusive)
    ctx = make_ctx(image)
    # The block fills its minimal rectangle exactly (fit 1.0); its convex hull is itself (solidity 1.0).
    assert run(ctx, "opencv", query="red square") == [{"box": [5, 6, 15, 20], "score": 1.0}]
    assert run(ctx, "opencv", query="red") == [{"box": [5, 6, 15, 20], "score": 1.0}]
    assert run(ctx, "opencv", query="rectangle") == [{"box": [5, 6, 15, 20], "score": 1.0}]
    # It fills only 117 / (pi * 7.9^2) = 0.60 of its enclosing circle (contour through pixel centres: 9x13).
    assert run(ctx, "opencv", query="red circle") == []
    assert run(ctx, "opencv", query="blue") == []


def test_opencv_annotation_marks_the_box_and_leaves_the_rest() -> None:
    image = np.full((30, 40, 3), 128, np.uint8)
    image[6:20, 5:15] = (230, 25, 25)
    result = TOOLS.get("ground")(make_ctx(image), {"query": "red"}, backend="opencv")
    (drawn,) = result.images
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert tuple(drawn[13, 5]) != tuple(image[13, 5])  # the box's left edge is drawn over
    assert np.array_equal(drawn[22:, 20:], image[22:, 20:])  # far from the box and its label: untouched
    # input not modified
    assert np.array_equal(image[6:20, 5:15], np.broadcast_to([230, 25, 25], (14, 10, 3)))


@pytest.mark.parametrize("kind", ["colour shape", "shape", "colour"])
def test_opencv_recall_on_drawn_scenes(kind: str) -> None:
    hits = total = 0
    for seed in range(100):
        image, objects = draw_scene(seed)
        ctx = make_ctx(image)
        for obj in objects:
            colour, shape = obj["name"].split()
            query = {"colour shape": f"{colour} {shape}", "shape": shape, "colour": colour}[kind]
            found = run(ctx, "opencv", query=query)
            assert len(found) <= MAX_DETECTIONS
            assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
            hits += any(iou(d["box"], obj["box"]) >= 0.5 for d in found)
            total += 1
    assert total == 467  # the scenes are fixed by their seeds
    assert hits / total >= RECALL_FLOOR, f"recall {hits}/{total}"


def test_opencv_colour_shape_boxes_are_right() -> None:
    """Precision: every box for "<colour> <shape>" covers a drawn object of that colour and shape."""
    right = returned = 0
    for seed in range(100):
        image, objects = draw_scene(seed)
        ctx = make_ctx(image)
        for query in {o["name"] for o in objects}:
            truth = [o["box"] for o in objects if o["name"] == query]
            for d in run(ctx, "opencv", query=query):
                right += any(iou(d["box"], t) >= 0.5 for t in truth)
                returned += 1
    assert right / returned >= RECALL_FLOOR, f"precision {right}/{returned}"  # measured 1.00


def test_haar_finds_the_astronauts_face() -> None:
    found = run(make_ctx(skimage.data.astronaut()), "opencv", query="faces")
    assert len(found) == 1  # one face in the photo, no false alarm
    assert iou(found[0]["box"], list(ASTRONAUT_FACE)) >= 0.5  # measured box [177, 67, 270, 160], IoU 0.87
    assert 0.5 < found[0]["score"] < 1.0


def test_hog_finds_no_person_on_an_empty_board() -> None:
    assert run(make_ctx(np.full((200, 160, 3), 128, np.uint8)), "opencv", query="person") == []


# --- errors
# -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "backend, arguments, message",
    [
        ("opencv", {"query": ""}, r"query '' names nothing to look for"),
        ("oracle", {"query": "   "}, r"query '   ' names nothing to look for"),
        ("opencv", {"query": "the object"}, r"names nothing to look for; describe the object"),
        (
            "opencv",
            {"query": "red", "image_index": 2},
            r"image_index 2 does not exist; valid indices are 0\.\.1",
        ),
        ("oracle", {"query": "red", "image_index": -1}, r"image_index -1 does not exist"),
        (
            "oracle",
            {"query": "red", "image_index": 1},
            r"oracle grounding backend knows image 0 only, got image_index 1",
        ),
        (
            "opencv",
            {"query": "brown dog"},
            r"does not understand \['brown', 'dog'\] in query 'brown dog'; it understands"
            r" colours \['black', 'blue',.*shapes \[.*'triangle'\], 'face' and 'person'",
        ),
        ("opencv", {"query": "red face"}, r"query 'red face' mixes 'face'/'person' with other words"),
        ("opencv", {"query": "red blue circle"}, r"names several colours or shapes"),
        ("opencv", {"query": "circle triangle"}, r"names several colours or shapes"),
        ("opencv", {"query": 3}, r"argument 'query' must be a JSON string"),
        ("opencv", {}, r"missing required argument\(s\) \['query'\]"),
        ("opencv", {"query": "red", "image_index": 0.0}, r"argument 'image_index' must be a JSON integer"),
    ],
)
def test_bad_calls_raise_a_helpful_tool_error(backend: str, arguments: dict, message: str) -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ToolError, match=message):
        TOOLS.get("ground")(make_ctx(image, image, metadata={"objects": []}), arguments, backend=backend)


def test_oracle_needs_objects() -> None:
    with pytest.raises(ToolError, match=r"needs metadata\['objects'\], which this sample lacks"):
        TOOLS.get("ground")(make_ctx(np.zeros((20, 20, 3), np.uint8)), {"query": "red"}, backend="oracle")


def test_schema_shows_query_and_image_index() -> None:
    params = TOOLS.get("ground").schema["function"]["parameters"]
    assert params["properties"]["query"]["type"] == "string"
    assert params["properties"]["image_index"]["type"] == "integer"
    assert params["required"] == ["query"]


# --- runtime and hf
# -----------------------------------------------------------------------------------------------

def test_cache_replay_is_identical(tmp_path: Path) -> None:
    image, objects = draw_scene(3)
    query = {"query": objects[0]["name"]}
    runtime = ToolRuntime(ToolRuntimeConfig(cache_dir=str(tmp_path), backends={"ground": "opencv"}))
    try:
        first, info1 = runtime.call(TOOLS.get("ground"), make_ctx(image), query)
        second, info2 = runtime.call(TOOLS.get("ground"), make_ctx(image), query)
    finally:
        runtime.close()
    assert (info1.cache_hit, info2.cache_hit) == (False, True)
    assert second.text == first.text and len(first.images) == len(second.images) == 1
    assert second.images[0].tobytes() == first.images[0].tobytes()


@pytest.fixture(scope="module")
def tiny_owlv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised OWLv2 (real classes, tiny sizes) and a real processor, saved offline."""
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    folder = tmp_path_factory.mktemp("owlv2")
    # A character-level BPE vocabulary (no merges): printable ASCII, each also as a word end, plus CLIP's
    # specials.
    chars = [chr(i) for i in range(33, 127)]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)  # 16 tokens: short queries only
    # no torchvision
    processor = Owlv2Processor(Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer)
    text = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    # 32 px images in 8 px patches: a 4x4 grid, so 16 candidate boxes.
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
    # Zero the box head's output layer, so every predicted box is its patch's anchor box (checked by hand
    # below).
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_hf_backend_runs_a_tiny_owlv2(tmp_path: Path, tiny_owlv2: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    options = {"model": str(tiny_owlv2), "score_threshold": 0.0}
    runtime = ToolRuntime(ToolRuntimeConfig(cache_dir=str(tmp_path), backends={"ground": "hf"},
                                            options={"ground": options}))
    try:
        result, _ = runtime.call(TOOLS.get("ground"), make_ctx(image), {"query": "red circle"})
        replay, info = runtime.call(TOOLS.get("ground"), make_ctx(image), {"query": "red circle"})
    finally:
        runtime.close()
    assert info.cache_hit and replay.text == result.text
    found = json.loads(result.text.splitlines()[-1])
    # OWLv2 pads the 60x40 image to 60x60 and its anchors centre on patch corners k/4 (k = 1..4) with size
    # 1/4:
    # [k/4 - 1/8, k/4 + 1/8] * 60 px = [7.5, 22.5], [22.5, 37.5], [37.5, 52.5], [52.5, 67.5] (+-0.01), widened
    # to
    # whole pixels and clipped to 60 wide / 40 high; the y cell [52.5, 67.5] lies below the image and is
    # dropped.
    xs, ys = [[7, 23], [22, 38], [37, 53], [52, 60]], [[7, 23], [22, 38], [37, 40]]
    cells = [[x1, y1, x2, y2] for x1, x2 in xs for y1, y2 in ys]
    # 12 cells pass threshold 0 (neighbours overlap by 1 px: no suppression)
    assert len(found) == MAX_DETECTIONS
    assert all(d["box"] in cells for d in found)
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)


def test_hf_threshold_and_options(tiny_owlv2: Path) -> None:
    ctx = make_ctx(np.zeros((40, 60, 3), np.uint8))
    ctx.resource = load_detector({"model": str(tiny_owlv2)})
    ctx.options = {"score_threshold": 1.0}  # sigmoid scores never exceed 1
    assert run(ctx, "hf", query="red circle") == []
    ctx.options = {"score_threshold": 2}
    with pytest.raises(ToolError, match=r"'score_threshold' must be a number in \[0, 1\], got 2"):
        run(ctx, "hf", query="red circle")
    with pytest.raises(ToolError, match=r"needs the option 'model' set to a local directory .* got None"):
        load_detector({})
    with pytest.raises(ToolError, match=r"needs the option 'model' .* got '/no/such/dir'"):
        load_detector({"model": "/no/such/dir"})
