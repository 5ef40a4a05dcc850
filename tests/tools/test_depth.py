"""Tests of tools/depth.py (``vgym.tools.depth``): oracle reads, stereo on rendered and Middlebury pairs, a
tiny real DPT / Depth Anything model, the colour map, model-facing errors and cache replay through the
runtime."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

import vgym.tools.depth  # noqa: F401  (registers the depth tool)
from vgym.errors import InvalidConfigError, ToolError
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, ToolContext
from vgym.tools.depth import colorize_depth, stereo_disparity

H, W = 40, 60  # non-square, so x/y mix-ups show
FOCAL_PX, BASELINE_M = 200.0, 0.1  # rendered pairs: depth = 200 * 0.1 / d = 20 / d metres


def _numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.\d+", line)]


def _line(text: str, prefix: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return line


def _oracle_ctx(images: list[np.ndarray] | None = None) -> ToolContext:
    """A flat wall at 4 m, a near box at 1.25 m, one 2.5 m pixel and one unknown (NaN) pixel."""
    depth = np.full((H, W), 4.0, dtype=np.float32)
    depth[10:20, 10:30] = 1.25
    depth[5, 50] = 2.5
    depth[35, 55] = np.nan
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return ToolContext(
        images=images or [image],
        metadata={},
        rng=np.random.default_rng(0),
        max_pixels=224 * 224,
        arrays={"depth": depth},
    )


def _call(ctx: ToolContext, backend: str, **arguments: object):  # type: ignore[no-untyped-def]
    return TOOLS.get("depth")(ctx, arguments, backend=backend)


def test_schema_keeps_the_nested_points_type() -> None:
    params = TOOLS.get("depth").schema["function"]["parameters"]
    assert params["properties"]["points"]["items"] == {"type": "array", "items": {"type": "number"}}
    assert params["properties"]["box"]["items"] == {"type": "number"}
    assert params["properties"]["image_index"]["type"] == "integer"
    assert not params.get("required")  # all three are optional


# ----------------------------------------------------------------------------------------------------- oracle


def test_oracle_reads_the_array_at_the_floored_pixels() -> None:
    result = _call(_oracle_ctx(), "oracle", points=[[15.7, 12.2], [50, 5], [55.9, 35.1], [0, 0]])
    assert "metric depth in metres" in result.text and "larger = farther" in result.text
    # floor(15.7, 12.2) is in the near box
    assert _line(result.text, "point [15, 12]") == "point [15, 12]: 1.25 m"
    assert _line(result.text, "point [50, 5]") == "point [50, 5]: 2.50 m"
    # the NaN
    assert _line(result.text, "point [55, 35]") == "point [55, 35]: unknown (no depth at this pixel)"
    assert _line(result.text, "point [0, 0]") == "point [0, 0]: 4.00 m"
    assert result.images[0].shape == (H, W, 3) and result.images[0].dtype == np.uint8


def test_oracle_box_and_whole_image_medians() -> None:
    ctx = _oracle_ctx()
    near = _call(ctx, "oracle", box=[10, 10, 30, 20]).text
    # 20 x 10, all 1.25
    assert _line(near, "box") == "box [10, 10, 30, 20]: median 1.25 m over 200 of 200 pixels."
    # Rows 0..14 straddle the wall (rows 0..9: 200 px at 4 m) and the near box (rows 10..14: 100 px at 1.25
    # m).
    mixed = _call(ctx, "oracle", box=[10, 0, 30, 15]).text
    assert _line(mixed, "box") == "box [10, 0, 30, 15]: median 4.00 m over 300 of 300 pixels."
    # Rows 5..19: 100 px of wall, 200 px of near box, so the near box wins the median.
    mostly_near = _call(ctx, "oracle", box=[10, 5, 30, 20]).text
    assert _line(mostly_near, "box") == "box [10, 5, 30, 20]: median 1.25 m over 300 of 300 pixels."
    whole = _call(ctx, "oracle").text  # 2400 px: 200 at 1.25, 1 at 2.5, 1 NaN, the rest at 4 m
    assert _line(whole, "whole image").startswith(
        "whole image: median 4.00 m, near end 1.25 m, far end 4.00 m"
    )
    assert "100% of pixels have a known depth" in whole  # 2399 / 2400 rounds to 100 %
    assert "box" not in whole and "point" not in whole


def test_depth_image_is_warm_near_cool_far_black_unknown() -> None:
    (shown,) = _call(_oracle_ctx(), "oracle").images
    red, blue = shown[..., 0].astype(int), shown[..., 2].astype(int)
    assert red[15, 20] > blue[15, 20] + 100  # the 1.25 m box: TURBO 230 = (195, 37, 3)
    assert blue[30, 40] > red[30, 40] + 100  # the 4 m wall: TURBO 32 = (70, 107, 227)
    assert np.array_equal(shown[35, 55], [0, 0, 0])  # the unknown pixel
    assert not colorize_depth(np.full((3, 4), np.nan)).any()  # nothing known: all black


def test_oracle_serves_only_image_0_and_needs_the_array() -> None:
    ctx = _oracle_ctx()
    ctx.images.append(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ToolError, match=r"ground-truth depth map exists only for image 0, got image_index 1"):
        _call(ctx, "oracle", image_index=1)
    bare = ToolContext(images=ctx.images, metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224)
    with pytest.raises(ToolError, match=r"oracle depth backend needs a ground-truth depth map"):
        _call(bare, "oracle")


# ----------------------------------------------------------------------------------------------------- stereo


def _render_pair(seed: int) -> tuple[np.ndarray, np.ndarray, int, int, tuple[int, int, int, int]]:
    """A rectified pair: a blurred-noise wall at disparity ``far`` and a textured card in front at ``near`` >
    far.

    A left pixel x shows what the right view shows at x - d, so the right view is the wall shifted left by
    ``far`` with the card pasted ``near`` pixels left of where it is in the left view.

    Returns:
        ``(left, right, far, near, card box [x1, y1, x2, y2] in the left view)``, images (96, 160, 3) uint8.
    """
    rng = np.random.default_rng(seed)
    h, w = 96, 160
    far = int(rng.integers(4, 11))
    near = far + int(rng.integers(6, 15))  # at most 24 < num_disparities 32
    x1, y1 = int(rng.integers(48, 80)), int(rng.integers(10, 40))  # x1 - near >= 24: the card stays in view
    cw, ch = int(rng.integers(36, 56)), int(rng.integers(30, 46))

    def texture(th: int, tw: int) -> np.ndarray:
        noise = rng.integers(0, 256, (th, tw, 3)).astype(np.float32)
        return np.clip(cv2.GaussianBlur(noise, (0, 0), 1.0), 0, 255).astype(np.uint8)

    wall, card = texture(h, w + far), texture(ch, cw)
    left, right = wall[:, :w].copy(), wall[:, far : far + w].copy()
    left[y1 : y1 + ch, x1 : x1 + cw] = card
    right[y1 : y1 + ch, x1 - near : x1 - near + cw] = card
    return left, right, far, near, (x1, y1, x1 + cw, y1 + ch)


@pytest.mark.parametrize("seed", range(5))
def test_stereo_disparity_recovers_rendered_card_and_wall(seed: int) -> None:
    left, right, far, near, (x1, y1, x2, y2) = _render_pair(seed)
    disparity = stereo_disparity(left, right, num_disparities=32)
    card = disparity[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5]  # a 5 px margin keeps the matching window on the card
    wall = disparity[:, 130:]  # right of every card (x2 <= 135) and past the invalid left strip
    # Measured over seeds 0..9: card 0.999-1.000 within 0.5 px of the truth, wall 0.954-0.988.
    assert np.mean(np.abs(card - near) < 0.5) >= 0.99
    assert np.mean(np.abs(wall - far) < 0.5) >= 0.90
    assert np.isnan(disparity[:, :32]).all()  # the leftmost num_disparities columns have no match


@pytest.mark.parametrize("seed", range(3))
def test_stereo_tool_reports_metric_depth_near_before_far(seed: int) -> None:
    left, right, far, near, (x1, y1, x2, y2) = _render_pair(seed)
    ctx = ToolContext(images=[left], metadata={"stereo": {"focal_px": FOCAL_PX, "baseline_m": BASELINE_M}},
                      rng=np.random.default_rng(0), max_pixels=224 * 224, arrays={"right": right},
                      options={"num_disparities": 32})
    card = _call(ctx, "stereo", box=[x1 + 5, y1 + 5, x2 - 5, y2 - 5]).text
    wall = _call(ctx, "stereo", box=[130, 0, 160, 96]).text
    assert "metric depth in metres" in card
    (card_m,) = _numbers(_line(card, "box"))[:1]
    (wall_m,) = _numbers(_line(wall, "box"))[:1]
    # depth = f * B / d = 20 / d: e.g. seed 0 (far 9, near 20) gives 2.22 m and 1.00 m.
    assert card_m == pytest.approx(20 / near, abs=0.006)  # printed to the centimetre
    assert wall_m == pytest.approx(20 / far, abs=0.006)
    assert card_m < wall_m
    point = _call(ctx, "stereo", points=[[(x1 + x2) // 2, (y1 + y2) // 2], [5, 5]]).text
    assert _numbers(_line(point, f"point [{(x1 + x2) // 2},"))[-1] == pytest.approx(20 / near, abs=0.006)
    # invalid left strip
    assert _line(point, "point [5, 5]") == "point [5, 5]: unknown (no depth at this pixel)"


def test_stereo_without_calibration_reports_depth_relative_to_the_median() -> None:
    left, right, far, near, (x1, y1, x2, y2) = _render_pair(0)
    ctx = ToolContext(images=[left], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224,
                      arrays={"right": right}, options={"num_disparities": 32})
    text = _call(ctx, "stereo", box=[x1 + 5, y1 + 5, x2 - 5, y2 - 5]).text
    assert "relative depth from stereo disparity without calibration" in text and "larger = farther" in text
    # Most pixels are wall, so the median disparity is far (9) and the card reads 9 / 20 = 0.45 of the median
    # depth.
    assert _numbers(_line(text, "box"))[0] == pytest.approx(far / near, abs=0.001)
    assert _numbers(_line(text, "whole image"))[0] == pytest.approx(1.0, abs=0.001)


def test_stereo_on_the_middlebury_motorcycle_agrees_with_ground_truth() -> None:
    left, right, truth = skimage.data.stereo_motorcycle()
    disparity = stereo_disparity(left, right)  # defaults: 64 disparities, 5 px blocks
    valid = np.isfinite(truth) & np.isfinite(disparity)
    ranks = [np.argsort(np.argsort(a)) for a in (disparity[valid], truth[valid])]
    spearman = np.corrcoef(*ranks)[0, 1]
    error = np.abs(disparity[valid] - truth[valid])
    # Measured: Spearman 0.962, 87.0% of ground-truth pixels matched, median error 0.22 px, 6.2% off by > 2
    # px.
    assert spearman >= 0.93
    assert valid.sum() / np.isfinite(truth).sum() >= 0.83
    assert np.median(error) <= 0.3
    assert np.mean(error > 2) <= 0.08

    # Through the tool, metric with the pair's calibration (Middlebury: depth = f * B / (d + doffs)).
    f, baseline, doffs = 994.978, 0.193001, 31.086
    ctx = ToolContext(
        images=[left],
        metadata={"stereo": {"focal_px": f, "baseline_m": baseline, "doffs_px": doffs}},
        rng=np.random.default_rng(0),
        max_pixels=224 * 224,
        arrays={"right": right},
    )
    depths = []
    for box in ([300, 200, 400, 300], [100, 50, 200, 150]):  # the motorcycle's body, the back wall
        x1, y1, x2, y2 = box
        region = truth[y1:y2, x1:x2]
        expected = f * baseline / (np.median(region[np.isfinite(region)]) + doffs)  # 2.38 m and 4.57 m
        (measured,) = _numbers(_line(_call(ctx, "stereo", box=box).text, "box"))[:1]
        assert measured == pytest.approx(expected, rel=0.03)  # measured 2.37 m and 4.56 m
        depths.append(measured)
    assert depths[0] < depths[1]


def test_stereo_needs_a_right_view_of_image_0_and_valid_options() -> None:
    left, right, *_ = _render_pair(0)
    bare = ToolContext(images=[left, left], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224)
    with pytest.raises(ToolError, match=r"stereo depth backend needs the right view"):
        _call(bare, "stereo")
    pair = ToolContext(images=[left, left], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224,
                       arrays={"right": right})
    with pytest.raises(ToolError, match=r"stereo right view exists only for image 0, got image_index 1"):
        _call(pair, "stereo", image_index=1)
    pair.arrays = {"right": right[:, :-1]}
    with pytest.raises(ToolError, match=r"right view is \(96, 159, 3\), not the shape of image 0"):
        _call(pair, "stereo")
    pair.arrays = {"right": right}
    pair.options = {"num_disparities": 40}
    with pytest.raises(
        InvalidConfigError, match=r"num_disparities must be a positive multiple of 16, got 40"
    ):
        _call(pair, "stereo")
    pair.options = {"block_size": 4}
    with pytest.raises(InvalidConfigError, match=r"block_size must be an odd integer in 1\.\.31, got 4"):
        _call(pair, "stereo")


# ------------------------------------------------------------------------------------------------ hf (tiny)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight models of the real classes with the real (PIL) processor, saved with
    save_pretrained."""
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessorPil,
    )

    torch.manual_seed(0)
    root, paths = tmp_path_factory.mktemp("depth_models"), {}
    # Dinov2 backbone shrunk to 4 layers of width 16 (real: 12 x 384), patch 14 as in Depth Anything.
    backbone = Dinov2Config(
        image_size=28,
        patch_size=14,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    # Processor at 28 px (real: 518) keeping the aspect ratio, sides multiples of the patch size.
    da_processor = DPTImageProcessorPil(
        size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14
    )
    for kind, extra in (("depth_anything", {}), ("depth_anything_metric", {"depth_estimation_type": "metric",
                                                                            "max_depth": 20})):
        config = DepthAnythingConfig(
            backbone_config=backbone,
            reassemble_hidden_size=16,
            neck_hidden_sizes=[8] * 4,
            # necks 8 wide (real: 48..384)
            fusion_hidden_size=8,
            head_hidden_size=8,
            **extra,
        )
        paths[kind] = root / kind
        DepthAnythingForDepthEstimation(config).save_pretrained(paths[kind])
        da_processor.save_pretrained(paths[kind])
    # DPT with a plain ViT of 4 layers of width 16 (real: 24 x 1024); square 32 px input, as ViT-DPT needs.
    dpt = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8] * 4,
        fusion_hidden_size=8,
    )
    paths["dpt"] = root / "dpt"
    DPTForDepthEstimation(dpt).save_pretrained(paths["dpt"])
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(
        paths["dpt"]
    )
    return paths


@pytest.mark.parametrize("kind", ["depth_anything", "depth_anything_metric", "dpt"])
def test_hf_backend_runs_a_tiny_model_at_full_resolution(tiny_models: dict[str, Path], kind: str) -> None:
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        rng.integers(0, 256, (45, 70, 3), dtype=np.uint8),
    ]
    ctx = ToolContext(images=images, metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224,
                      options={"model": str(tiny_models[kind])})
    # Image 1 (a tool output of another size) works too: the model needs no ground truth.
    result = _call(ctx, "hf", image_index=1, points=[[0, 0], [69.5, 44.5]])
    assert result.images[0].shape == (45, 70, 3) and result.images[0].dtype == np.uint8
    values = [_numbers(_line(result.text, f"point [{x}, {y}]"))[-1] for x, y in ((0, 0), (69, 44))]
    if kind == "depth_anything_metric":
        assert "metric depth in metres" in result.text
        assert all(v >= 0 for v in values)
    else:
        assert "relative depth from a monocular model" in result.text
        assert all(0.0 <= v <= 1.0 for v in values)  # flipped inverse depth spans exactly [0, 1]
    box = _call(ctx, "hf", box=[0, 0, 70, 45], image_index=1).text
    assert "over 3150 of 3150 pixels" in box  # 70 x 45: a model gives every pixel a depth
    assert _numbers(_line(box, "box"))[0] == _numbers(_line(box, "whole image"))[0]  # same median


@pytest.mark.parametrize("kind", ["depth_anything", "depth_anything_metric"])
def test_hf_backend_flips_inverse_depth_so_larger_is_farther(tiny_models: dict[str, Path], kind: str) -> None:
    import torch
    from transformers import AutoModelForDepthEstimation, DPTImageProcessorPil

    image = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    processor = DPTImageProcessorPil.from_pretrained(tiny_models[kind], local_files_only=True)
    model = AutoModelForDepthEstimation.from_pretrained(tiny_models[kind], local_files_only=True).eval()
    with torch.inference_mode():
        outputs = model(**processor(images=image, return_tensors="pt"))
    raw = processor.post_process_depth_estimation(outputs, target_sizes=[(H, W)])[0][
        "predicted_depth"
    ].numpy()
    (y_hi, x_hi), (y_lo, x_lo) = (np.unravel_index(np.argmax(raw), raw.shape),
                                  np.unravel_index(np.argmin(raw), raw.shape))
    ctx = ToolContext(images=[image], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224,
                      options={"model": str(tiny_models[kind])})
    text = _call(ctx, "hf", points=[[int(x_hi), int(y_hi)], [int(x_lo), int(y_lo)]]).text
    at_hi = _numbers(_line(text, f"point [{x_hi}, {y_hi}]"))[-1]
    at_lo = _numbers(_line(text, f"point [{x_lo}, {y_lo}]"))[-1]
    if kind == "depth_anything_metric":  # the head's output is metres already: reported as is
        assert (at_hi, at_lo) == (round(float(raw.max()), 2), round(float(raw.min()), 2))
    # relative heads predict inverse depth: its maximum is the nearest pixel (0), its minimum the farthest (1)
    else:
        assert (at_hi, at_lo) == (0.0, 1.0)


def test_hf_backend_needs_a_local_model_directory(tmp_path: Path) -> None:
    ctx = ToolContext(images=[np.zeros((H, W, 3), np.uint8)], metadata={}, rng=np.random.default_rng(0),
                      max_pixels=224 * 224)
    with pytest.raises(ToolError, match=r"hf depth backend needs the option 'model'"):
        _call(ctx, "hf")
    ctx.options = {"model": str(tmp_path / "missing")}
    with pytest.raises(ToolError, match=r"option 'model' must be a local directory, got '.*missing'"):
        _call(ctx, "hf")


# -------------------------------------------------------------------------------------------- bad arguments

FRAME = r"image 0 is 60x40, so x must be in \[0, 60\) and y in \[0, 40\)"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"image_index": 5}, r"image_index 5 does not exist; valid indices are 0\.\.0"),
        ({"image_index": -1}, r"image_index -1 does not exist"),
        ({"image_index": 0.0}, r"argument 'image_index' must be a JSON integer"),
        ({"points": [[100, 5]]}, r"points\[0\] = \[100, 5\] lies outside the image; " + FRAME),
        # x == W is outside
        ({"points": [[1, 1], [60, 0]]}, r"points\[1\] = \[60, 0\] lies outside the image"),
        ({"points": [[-0.5, 3]]}, r"points\[0\] = \[-0.5, 3\] lies outside the image"),
        ({"points": [[math.nan, 3]]}, r"points\[0\] = \[nan, 3\] lies outside the image"),
        # an int too big for a float
        ({"points": [[10**400, 3]]}, r"points\[0\] = .* lies outside the image"),
        ({"points": [[1, 2, 3]]}, r"points\[0\] must be a pair \[x, y\] of numbers, got \[1, 2, 3\]"),
        ({"points": [1, 2]}, r"points\[0\] must be a pair \[x, y\] of numbers, got 1"),
        ({"points": [[True, 2]]}, r"points\[0\] must be a pair"),
        ({"points": [["1", "2"]]}, r"points\[0\] must be a pair"),
        ({"points": []}, r"points must be a list of 1 to 32 pairs \[\[x, y\], \.\.\.\], got 0 entries"),
        ({"points": [[1, 1]] * 33}, r"points must be a list of 1 to 32 pairs .* got 33 entries"),
        ({"points": "1, 2"}, r"argument 'points' must be a JSON array"),
        ({"box": [10, 10, 5, 20]}, r"box \[10, 10, 5, 20\] is empty or inverted"),
        ({"box": [100, 100, 120, 120]}, r"box \[100, 100, 120, 120\] lies outside the image"),
        ({"box": [1, 2, 3]}, r"box must be 4 numbers"),
        ({"points": [[1, 1]], "box": [0, 0, 5, 5]}, r"give either points or box, not both"),
        ({"depth": 1}, r"unknown argument\(s\) \['depth'\]"),
    ],
)
@pytest.mark.parametrize("backend", ["oracle", "stereo", "hf"])
def test_bad_arguments_raise_a_tool_error_naming_the_argument(
    arguments: dict, message: str, backend: str
) -> None:
    # Arguments are checked before any backend work, so even hf without a model reports the argument first.
    ctx = _oracle_ctx()
    with pytest.raises(ToolError, match=message):
        TOOLS.get("depth")(ctx, arguments, backend=backend)


# ---------------------------------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("backend", ["stereo", "hf"])
def test_runtime_loads_runs_and_replays_from_the_cache(tmp_path: Path, tiny_models: dict[str, Path],
                                                       backend: str) -> None:
    left, right, *_ = _render_pair(0)
    by_backend = {"stereo": {"num_disparities": 32}, "hf": {"model": str(tiny_models["depth_anything"])}}
    options = by_backend[backend]
    ctx = ToolContext(images=[left], metadata={"stereo": {"focal_px": FOCAL_PX, "baseline_m": BASELINE_M}},
                      rng=np.random.default_rng(0), max_pixels=224 * 224, arrays={"right": right})
    runtime = ToolRuntime(ToolRuntimeConfig(cache_dir=str(tmp_path / "cache"), backends={"depth": backend},
                                            options={"depth": options}))
    try:
        tool, arguments = TOOLS.get("depth"), {"points": [[90, 50]]}
        first, info = runtime.call(tool, ctx, arguments)
        assert not info.cache_hit and info.backend == backend
        assert f"depth of image 0 ({backend})" in first.text
        second, again = runtime.call(tool, ctx, arguments)
        assert again.cache_hit
        assert second.text == first.text
        assert len(second.images) == 1 and second.images[0].dtype == np.uint8
        assert second.images[0].tobytes() == first.images[0].tobytes()
    finally:
        runtime.close()
