"""Smoke test of ``benchmarks/soak.py``: a ~10 s run in-process writes its CSV (the documented columns, sane
values) and summary, with error paths exercised; and the LEAK rule on hand-made samples. No timing is
asserted.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    """``benchmarks/soak.py`` imported as a module (``benchmarks`` is not a package)."""
    spec = importlib.util.spec_from_file_location("vgym_soak_benchmark", REPO / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_a_short_soak_writes_its_csv_and_summary(soak: ModuleType, tiny_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # one video task, so the clip folder is used and removed
    tasks = ["visual_search", "video_qa", "counting"]
    summary = soak.main(["--minutes", "0.15", "--interval", "2", "--batch", "2", "--out", str(tmp_path),
                         "--vlm", str(tiny_dir), "--bad-actions", "0.3", "--tasks", ",".join(tasks)])
    with (tmp_path / "soak.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == soak.COLUMNS
    assert len(rows) >= 3  # the first sample, then one every 2 s of the 9 s
    times, episodes = [float(r["t_s"]) for r in rows], [int(r["episodes"]) for r in rows]
    # the last sample is at most one interval before the end
    assert times == sorted(times) and times[-1] >= 9.0 - 2
    assert summary["minutes"] == pytest.approx(times[-1] / 60)
    assert episodes == sorted(episodes) and episodes[0] == 0 and episodes[-1] == summary["episodes"] > 0
    for row in rows:
        assert float(row["rss_mb"]) > 50 and int(row["fds"]) >= 3 and int(row["threads"]) >= 1
        assert 0 <= int(row["sample_cache"]) <= 32 and int(row["uncaught"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["episodes"] == summary["episodes"]
    assert set(summary["by_task"]) == set(tasks)  # round-robin reached every task
    assert summary["bad_actions"] > 0 and summary["tool_errors"] > 0  # error paths ran, as observations
    assert summary["rss_mb"]["end"] == pytest.approx(float(rows[-1]["rss_mb"]))
    assert summary["clips"]["files"] > 0 and not (tmp_path / "clips").exists()
    assert isinstance(summary["leak"], bool) and summary["caches_end"]["sample_cache"] <= 32
    printed = capsys.readouterr().out
    assert "RSS:" in printed and "episodes/s:" in printed and "LEAK:" in printed


def _rows(soak: ModuleType, rss: Any, fds: Any, minutes: int = 20) -> list[dict[str, Any]]:
    """One sample every 10 s for ``minutes``, with ``rss(t)`` MB and ``fds(t)`` descriptors; the rest
    constant."""
    rows = []
    for k in range(minutes * 6 + 1):
        t = 10.0 * k
        rows.append(
            {
                "t_s": t,
                "episodes": 5 * k,
                "episodes_per_s": 0.5,
                "rss_mb": rss(t),
                "fds": fds(t),
                "threads": 9,
                "py_objects": 1000,
                "sample_cache": 32,
                "array_digests": 0,
                "file_digests": 0,
                "tool_resources": 2,
                "open_clips": 3,
                "encoder_prompts": 64,
                "lru_entries": 40,
                "clip_files": 0,
                "clip_mb": 0.0,
                "uncaught": 0,
                "lru": {},
            }
        )
    return rows


@pytest.mark.parametrize("rss, fds, reasons", [
    (lambda t: 600.0 + (200 if t < 60 else 0), lambda t: 12, []),  # only warm-up growth: no leak
    (lambda t: 600.0 + 80 * t / 3600, lambda t: 12, ["RSS grows 80.0 MB/h after warm-up (> 50.0)"]),
    (lambda t: 600.0 + 30 * t / 3600, lambda t: 12, []),  # under the threshold
    (lambda t: 600.0, lambda t: 12 + int(t // 120), ["fds grow by 5 (> 2)"]),  # one more fd every 2 minutes
    (lambda t: 600.0, lambda t: 12 + (t // 10) % 3, []),  # fds that come and go
])
def test_leak_rule(soak: ModuleType, rss: Any, fds: Any, reasons: list[str]) -> None:
    # 20 minutes; warm-up is the first minute; the fit covers minutes 10-20; fd halves are 1-10.5 and 10.5-20
    # min.
    summary = soak.summarize(_rows(soak, rss, fds), soak._parse([]), {"episodes": 600})
    assert summary["leak_reasons"] == reasons and summary["leak"] is bool(reasons)
    assert summary["warmup_s"] == 60.0 and summary["rss_mb"]["fit_from_t_s"] == 600.0
