"""Bad videos (issue 9): truncated, empty, garbage, stream-less and frame-less clips, variable frame rates, a
one-frame clip and decord-crashing mutants, written with real encoders (OpenCV, PyAV) and read through the
video tools (``vgym.tools.video``) with every backend of the registry.

Contents:

- :data:`BAD_CLIPS` and ``test_bad_clips_are_tool_errors_naming_the_file``: each broken clip is a
  ``ToolError`` whose message names the file (the model sees its name, the operator's log its full path).
- ``test_variable_frame_rate_*``: both decoders and every tool backend use the true presentation times.
- ``test_a_one_frame_clip``: a clip of one frame is sampled, fetched and bounded correctly.
- :data:`CRASHERS` and ``test_decord_never_sees_a_clip_that_aborts_it``: mutants that once aborted decord are
  refused before decord opens them (run in a child process, so a regression fails the test, not pytest).

The contract: each clip is decoded correctly (frame identity and times checked against what was written) or
fails with a clear error naming the file. Shared builders (:func:`media_fixtures.write_clips`) live in
``tests/media_fixtures.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import BACKENDS, VFR_MS, frame_index, write_clips

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.data.synthetic_video import write_synthetic_clip
from vgym.errors import ToolError
from vgym.tooling import TOOLS, ToolContext
from vgym.data.media import VideoReaderCache


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good clips (``cfr``, ``vfr``, ``one``) and broken ones, each named after what is wrong with it."""
    return write_clips(tmp_path_factory.mktemp("clips"))


BAD_CLIPS = {"truncated": r"could not be read with", "truncated_index":
             r"the container lists 20 frames but only \d+ can be read: the file is truncated or corrupt",
             "empty": r"could not be read with", "garbage": r"could not be read with",
             "audio_only": r"the file has no video stream", "no_frames": r"the video stream has no frames"}


def _ctx(video: Path | None) -> ToolContext:
    return ToolContext(images=[], metadata={}, rng=np.random.default_rng(0), max_pixels=10**7, video=video)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", BAD_CLIPS)
def test_bad_clips_are_tool_errors_naming_the_file(clips: dict[str, Path], name: str, backend: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = clips[name]
    for tool, arguments in (("get_frame", {"t_s": 0.3}), ("sample_frames", {"start_s": 0.0, "end_s": 0.5})):
        with caplog.at_level(logging.WARNING, "vgym.tools.video"):
            with pytest.raises(ToolError, match=BAD_CLIPS[name]) as caught:
                TOOLS.get(tool)(_ctx(path), arguments, backend=backend)
        assert f"(file {path.name})" in str(caught.value)  # the model sees the file's name
        assert str(path) in caplog.text  # the operator sees its full path
        caplog.clear()


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_variable_frame_rate_times_are_the_presentation_times(clips: dict[str, Path], decoder: str) -> None:
    with VideoReaderCache(decoder).open(str(clips["vfr"])) as clip:
        np.testing.assert_allclose(clip.info.times, np.array(VFR_MS) / 1000, atol=1e-6)
        frames = clip.read(list(range(len(VFR_MS))))
    # frame i is the one written at i
    assert [frame_index(frame) for frame, _ in frames] == list(range(len(VFR_MS)))
    assert [round(time * 1000) for _, time in frames] == VFR_MS


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_through_the_tools(clips: dict[str, Path], backend: str) -> None:
    path = clips["vfr"]
    result = TOOLS.get("get_frame")(_ctx(path), {"t_s": 0.703}, backend=backend)
    # 0.703 s is 3 ms after frame 4 (0.700) and 1 ms before frame 5 (0.704): the true times decide, not i /
    # fps
    assert [frame_index(f) for f in result.images] == [5] and result.text.startswith("the frame at 0.704 s")
    assert "on average (variable frame rate)" in result.text
    # slices of [0.6, 0.8]: centres 0.65 and 0.75 -> frames 4 and 5, 4 ms apart, so stamps need 3 decimals
    result = TOOLS.get("sample_frames")(
        _ctx(path), {"start_s": 0.6, "end_s": 0.8, "num_frames": 2}, backend=backend
    )
    assert [frame_index(f) for f in result.images] == [4, 5] and "at [0.700, 0.704] s" in result.text
    result = TOOLS.get("sample_frames")(
        _ctx(path), {"start_s": 0.0, "end_s": 1.6, "num_frames": 4}, backend=backend
    )
    # centres 0.2, 0.6, 1.0, 1.4 -> 0.200 (2), 0.700 (4), 0.704 (5: 0.296 from 1.0 against 0.5 to 1.5), 1.500
    # (6)
    assert [frame_index(f) for f in result.images] == [2, 4, 5, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_one_frame_clip(clips: dict[str, Path], backend: str) -> None:
    path = clips["one"]
    result = TOOLS.get("sample_frames")(
        _ctx(path), {"start_s": 0.0, "end_s": 0.1, "num_frames": 8}, backend=backend
    )
    assert [frame_index(f) for f in result.images] == [
        0
    ] and "clip is 0.10 s, 1 frames at 10 fps" in result.text
    assert [
        frame_index(f) for f in TOOLS.get("get_frame")(_ctx(path), {"t_s": 0.1}, backend=backend).images
    ] == [0]
    with pytest.raises(ToolError, match=r"t_s=0.2 is outside the video: the clip is 0.10 s"):
        TOOLS.get("get_frame")(_ctx(path), {"t_s": 0.2}, backend=backend)


CRASHERS = [106, 327]
"""Seeds ``[7, k]`` of byte-flip mutants of the 2 s clip that made ``get_frame`` with decord (before PyAV
vetted clips) abort the process with ``std::bad_alloc``: 2 of 400 mutants, each run in a child process."""


def test_decord_never_sees_a_clip_that_aborts_it(tmp_path: Path) -> None:
    """Run in a child process, so a regression fails this test instead of killing pytest."""
    write_synthetic_clip(str(tmp_path / "cfr.mp4"), seconds=2, fps=10)
    mutants = []
    for k in CRASHERS:
        data, rng = bytearray((tmp_path / "cfr.mp4").read_bytes()), np.random.default_rng([7, k])
        for _ in range(int(rng.integers(1, 50))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        mutants.append(tmp_path / f"mutant_{k}.mp4")
        mutants[-1].write_bytes(bytes(data))
    script = textwrap.dedent(f"""
        import numpy as np
        import vgym
        from vgym.errors import ToolError
        from vgym.tooling import TOOLS, ToolContext
        for path in {[str(m) for m in mutants]!r}:
            for backend in ("decord", "auto"):
                for t_s in (0.0, 0.3, 0.7, 1.5):
                    ctx = ToolContext([], {{}}, np.random.default_rng(0), 10**6, video=path)
                    try:
                        TOOLS.get("get_frame")(ctx, {{"t_s": t_s}}, backend=backend)
                        print("decoded")
                    except ToolError:
                        print("tool_error")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(done.stdout.split()) <= {"decoded", "tool_error"}, done.stdout
    assert len(done.stdout.split()) == 8 * len(CRASHERS)
