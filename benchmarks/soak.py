"""Soak: a long rollout with the scripted oracle over every procedural task, watching memory, file handles,
threads and throughput over time, with a LEAK flag (issue 9, part 5). Nothing is asserted; the figures are
reported.

Run: ``python benchmarks/soak.py --minutes 30 --out runs/soak`` (``--minutes 0.2`` for a smoke run).

What runs: batches of ``--batch`` episodes through :func:`vgym.rollout.loop.rollout` (lockstep, env work
inline, a fresh env pool per batch, the tiny Qwen2-VL processor encoding every message), one registered
procedural task after the other, round-robin, cycling difficulty 0-2. Every episode is new: item ``i`` of the
train split with env seed ``i``, ``i`` counting up over the whole run. The policy is the scripted oracle with
answer noise (``--noise``), and a turn is replaced with probability ``--bad-actions`` by a malformed action
(no tag, bad JSON, unknown tool, wrong type, NaN, elongated box, 3000-character unicode query, unclosed
answer, inverted time range), so error paths run too. Video tasks write their clips under ``<out>/clips``
(deleted at the end unless ``--keep-clips``), so the disk growth of that cache is measured apart from memory.

Sampled every ``--interval`` s (after ``gc.collect()``, between batches): RSS (``/proc/self/status`` VmRSS),
open file descriptors (``/proc/self/fd``), threads, live Python objects, cumulative episodes and episodes/s
over the window, and the sizes of the caches meant to be bounded (the env's sample LRU ``vgym.env.SAMPLES``,
capacity 32; the tool runtime's image-digest memo, pruned of dead arrays above 4096 entries, and file-digest
memo; loaded tool resources; every ``functools.lru_cache`` in ``vgym.*``), so that a full cache is not
mistaken for a leak.

Outputs: ``<out>/soak.csv`` (one row per sample, flushed as it goes), ``<out>/summary.json`` and
``<out>/errors.log`` (tracebacks of rollouts that raised, if any). The LEAK flag is raised when, after the
warm-up (the first minute, at most a quarter of the run), RSS grows faster than ``--leak-mb-per-hour``
(default 50 MB/h; least-squares slope over the samples of the run's second half), or the largest fd or thread
count of the last half of the post-warm-up samples exceeds that of the first half by more than ``--fd-slack``
(default 2).

Reading RSS growth: native libraries here run ~35 threads (OpenCV, FFmpeg, onnxruntime pools), and glibc gives
threads their own malloc arenas, whose fragmentation grows RSS without a leak. Flat Python-object counts and
full but bounded caches point that way; ``MALLOC_ARENA_MAX=2 python benchmarks/soak.py ...`` tells the two
apart (a leak still grows, fragmentation does not; the summary records the variable), and so does
``--malloc-trim``, which hands freed heap memory back to the OS before each sample.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import vgym  # noqa: E402,F401  (registers tasks and tools)
from vgym.env import SAMPLES, VisualToolEnv  # noqa: E402
from vgym.policies.base import PolicyInput, PolicyOutput  # noqa: E402
from vgym.policies.oracle import OraclePolicy  # noqa: E402
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory  # noqa: E402
from vgym.task import TASKS  # noqa: E402

COLUMNS = ["t_s", "episodes", "episodes_per_s", "rss_mb", "fds", "threads", "py_objects", "sample_cache",
           "array_digests", "file_digests", "tool_resources", "open_clips", "encoder_prompts", "lru_entries",
           "clip_files", "clip_mb", "uncaught"]
"""Columns of ``soak.csv``."""

BAD_ACTIONS = (
    "I think it is probably the second one.",
    '<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 1e9, 5]</tool_call>',
    '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "crop", "arguments": {"box": "all of it"}}</tool_call>',
    '<tool_call>{"name": "crop", "arguments": {"box": [NaN, 0, 10, 10]}}</tool_call>',
    '<tool_call>{"name": "crop", "arguments": {"box": [10, 10, 11, 900]}}</tool_call>',
    '<tool_call>{"name": "ground", "arguments": {"query": "' + "é" * 3000 + '"}}</tool_call>',
    "<answer>unclosed",
    '<tool_call>{"name": "sample_frames", "arguments": {"start_s": 5, "end_s": 1}}</tool_call>',
)
"""Malformed turns the soak policy mixes in (each must come back as an error observation)."""


class NoisyOracle:
    """The scripted oracle (with answer noise), whose turns are replaced by one of :data:`BAD_ACTIONS` with
    probability ``bad_actions``; both choices come from generators seeded by ``seed``."""

    reads_ground_truth = True  # the oracle's turns need the solution

    def __init__(self, *, noise: float, bad_actions: float, seed: int) -> None:
        self.oracle = OraclePolicy(noise=noise, seed=seed)
        self.bad_actions = bad_actions
        self.rng = np.random.default_rng([seed, 1])

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        out = self.oracle.act(batch)
        for i in range(len(out)):
            if self.rng.random() < self.bad_actions:
                out[i] = PolicyOutput(text=BAD_ACTIONS[int(self.rng.integers(len(BAD_ACTIONS)))])
        return out


def process_stats() -> dict[str, float]:
    """``rss_mb``, ``fds`` and ``threads`` of this process (Linux ``/proc``; psutil elsewhere)."""
    if os.path.isdir("/proc/self/fd"):
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
        )
        return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "fds": len(os.listdir("/proc/self/fd")),
                "threads": int(status["Threads"])}
    import psutil

    proc = psutil.Process()
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "threads": proc.num_threads()}


def cache_sizes(encoder: ChatEncoder) -> dict[str, int]:
    """Entries in the caches meant to be bounded (private attributes read on purpose: this is a probe): the
    sample LRU, the digest memos, loaded tool resources, the clips the video tools keep open (4 per decoder),
    the encoder's prompt LRU (64) and every ``functools.lru_cache`` of a ``vgym`` module."""
    from vgym import tool_runtime
    from vgym.data.media import VideoReaderCache

    resources = list(tool_runtime.RESOURCES._items.values())
    clips = sum(
        len(c)
        for r in resources
        if isinstance(r, dict)
        for c in r.values()
        if isinstance(c, VideoReaderCache)
    )
    lru = {f"{name}.{attr}": fn.cache_info().currsize for name, module in list(sys.modules.items())
           if name.startswith("vgym") and module is not None
           for attr, fn in list(vars(module).items()) if callable(getattr(fn, "cache_info", None))}
    return {"sample_cache": len(SAMPLES._items), "array_digests": len(tool_runtime._ARRAY_DIGESTS),
            "file_digests": len(tool_runtime._DIGESTS), "tool_resources": len(resources), "open_clips": clips,
            "encoder_prompts": len(encoder._memo), "lru_entries": sum(lru.values()),
            **{f"lru:{k}": v for k, v in lru.items()}}


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (returns freed heap memory to the OS), or None off glibc."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def folder_size(folder: Path) -> tuple[int, float]:
    """(files, MB) under ``folder``."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return len(sizes), sum(sizes) / 2**20


def slope_per_hour(ts: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over ``ts`` (seconds), per hour; None with fewer than 2 distinct
    times."""
    if len(set(ts)) < 2:
        return None
    return float(np.polyfit(np.asarray(ts, float), np.asarray(values, float), 1)[0] * 3600)


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace, totals: dict[str, Any]) -> dict[str, Any]:
    """The summary of a run's samples (see the module docstring for the LEAK rule)."""
    end = rows[-1]["t_s"]
    warmup = min(60.0 * args.warmup_minutes, end / 4)
    post = [r for r in rows if r["t_s"] >= warmup] or rows[-1:]
    fit = [r for r in post if r["t_s"] >= end / 2] or post
    halves = (post[: max(1, len(post) // 2)], post[max(1, len(post) // 2):] or post[-1:])
    at_1min = min(rows, key=lambda r: abs(r["t_s"] - min(60.0, warmup)))
    rss_slope = slope_per_hour([r["t_s"] for r in fit], [r["rss_mb"] for r in fit])
    growth = {k: max(r[k] for r in halves[1]) - max(r[k] for r in halves[0]) for k in ("fds", "threads")}
    reasons = []
    if rss_slope is not None and rss_slope > args.leak_mb_per_hour:
        reasons.append(f"RSS grows {rss_slope:.1f} MB/h after warm-up (> {args.leak_mb_per_hour})")
    reasons += [f"{k} grow by {g} (> {args.fd_slack})" for k, g in growth.items() if g > args.fd_slack]
    # Windows of at least half an interval (the final sample may follow the one before it closely).
    windows = [
        b["episodes_per_s"] for a, b in zip(rows, rows[1:]) if b["t_s"] - a["t_s"] >= args.interval / 2
    ]
    caches_end = {k: v for k, v in rows[-1].items() if k in COLUMNS[7:14]}
    return {
        "minutes": end / 60,
        "warmup_s": warmup,
        "samples": len(rows),
        **totals,
        "rss_mb": {
            "start": rows[0]["rss_mb"],
            "at_1min": at_1min["rss_mb"],
            "at_1min_t_s": at_1min["t_s"],
            "end": rows[-1]["rss_mb"],
            "max": max(r["rss_mb"] for r in rows),
            "growth_mb_per_h": rss_slope,
            "fit_from_t_s": fit[0]["t_s"],
        },
        "fds": {
            "start": rows[0]["fds"],
            "after_warmup": post[0]["fds"],
            "end": rows[-1]["fds"],
            "max": max(r["fds"] for r in rows),
            "growth": growth["fds"],
        },
        "threads": {
            "start": rows[0]["threads"],
            "after_warmup": post[0]["threads"],
            "end": rows[-1]["threads"],
            "max": max(r["threads"] for r in rows),
            "growth": growth["threads"],
        },
        "py_objects": {
            "after_warmup": post[0]["py_objects"],
            "end": rows[-1]["py_objects"],
            "growth_per_h": slope_per_hour([r["t_s"] for r in fit], [r["py_objects"] for r in fit]),
        },
        "episodes_per_s": {
            "first_window": windows[0] if windows else None,
            "last_window": windows[-1] if windows else None,
            "overall": rows[-1]["episodes"] / end if end else None,
        },
        "caches_end": caches_end,
        "caches_max": {k: max(r[k] for r in rows) for k in caches_end},
        "lru_end": rows[-1]["lru"],
        "sample_cache_capacity": SAMPLES.capacity,
        "python_threads": dict(
            Counter(t.name.rstrip("_0123456789").split("-")[0] for t in threading.enumerate())
        ),
        "clips": {
            "files": rows[-1]["clip_files"],
            "mb": rows[-1]["clip_mb"],
            "mb_per_h": slope_per_hour([r["t_s"] for r in post], [r["clip_mb"] for r in post]),
        },
        "thresholds": {"leak_mb_per_hour": args.leak_mb_per_hour, "fd_slack": args.fd_slack},
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
        "leak": bool(reasons),
        "leak_reasons": reasons,
    }


def _report(s: dict[str, Any], out: Path) -> None:
    rss, fds, threads, eps = s["rss_mb"], s["fds"], s["threads"], s["episodes_per_s"]
    growth = "n/a" if rss["growth_mb_per_h"] is None else f"{rss['growth_mb_per_h']:+.1f} MB/h"
    print(
        f"soak: {s['minutes']:.1f} min, {s['episodes']} episodes over {len(s['by_task'])} tasks, "
        f"{s['uncaught']} uncaught exceptions, {s['tool_errors']} of {s['tool_calls']} tool calls were "
        "errors, "
        f"{s['bad_actions']} malformed turns"
    )
    print(f"RSS: {rss['at_1min']:.1f} MB at {rss['at_1min_t_s']:.0f} s -> {rss['end']:.1f} MB at end (max "
          f"{rss['max']:.1f}); growth after warm-up, fit from {rss['fit_from_t_s']:.0f} s: {growth} "
          f"(threshold {s['thresholds']['leak_mb_per_hour']} MB/h)")
    print(
        f"fds: {fds['after_warmup']} after warm-up -> {fds['end']} at end (max {fds['max']}, growth "
        f"{fds['growth']}); "
        f"threads: {threads['after_warmup']} -> {threads['end']} (growth {threads['growth']}); Python "
        "objects "
        f"{s['py_objects']['after_warmup']} -> {s['py_objects']['end']}"
    )
    rate = {k: "n/a" if v is None else f"{v:.2f}" for k, v in eps.items()}
    print(f"episodes/s: {rate['first_window']} first window, {rate['last_window']} last window, "
          f"{rate['overall']} overall")
    print(
        "caches at end (max): "
        + ", ".join(f"{k} {v} ({s['caches_max'][k]})" for k, v in s["caches_end"].items())
        + f"; sample cache capacity {s['sample_cache_capacity']}"
    )
    print(f"clip cache: {s['clips']['files']} files, {s['clips']['mb']:.1f} MB; Python threads at end: "
          f"{s['python_threads']}")
    print(f"LEAK: {'YES: ' + '; '.join(s['leak_reasons']) if s['leak'] else 'no'}  ({out}/soak.csv, "
          f"{out}/summary.json)")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="run time (0.2 for a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"), help="output folder")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--batch", type=int, default=4, help="episodes per rollout call (one task per call)")
    parser.add_argument("--noise", type=float, default=0.2, help="oracle answer noise")
    parser.add_argument("--bad-actions", type=float, default=0.1, help="probability of a malformed turn")
    parser.add_argument("--seed", type=int, default=0, help="seeds the policy's noise")
    parser.add_argument(
        "--tasks", default="", help="comma-separated task names (default: every procedural task)"
    )
    parser.add_argument(
        "--vlm", type=Path, default=None, help="processor folder (default: build the tiny VLM)"
    )
    parser.add_argument(
        "--warmup-minutes", type=float, default=1.0, help="excluded from leak fits (<= 1/4 of run)"
    )
    parser.add_argument("--leak-mb-per-hour", type=float, default=50.0, help="RSS slope that flags a leak")
    parser.add_argument("--fd-slack", type=int, default=2, help="fd / thread growth tolerated")
    parser.add_argument("--keep-clips", action="store_true", help="keep <out>/clips")
    parser.add_argument("--malloc-trim", action="store_true",
                        help="call glibc malloc_trim(0) before each sample, so RSS counts memory in use only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the soak; returns the summary (also written to ``<out>/summary.json``)."""
    args = _parse(argv)
    from vgym.app.quickstart import tokenizer_corpus
    from vgym.engine.tiny import build_tiny_vlm, load_vlm

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clips = out / "clips"
    names = [n for n in args.tasks.split(",") if n] or [n for n in TASKS.names() if TASKS.get(n).procedural]
    if args.vlm is None:
        with tempfile.TemporaryDirectory() as tmp:
            _, processor = load_vlm(
                build_tiny_vlm(f"{tmp}/vlm", corpus=tokenizer_corpus("visual_search", 0, n=40))
            )
    else:
        _, processor = load_vlm(args.vlm)
    encoder = ChatEncoder(processor)
    policy = NoisyOracle(noise=args.noise, bad_actions=args.bad_actions, seed=args.seed)
    fields = {n: {f.name for f in dataclasses.fields(TASKS.get(n).config_cls)} for n in names}
    totals: dict[str, Any] = {
        "episodes": 0,
        "uncaught": 0,
        "tool_calls": 0,
        "tool_errors": 0,
        "bad_actions": 0,
        "truncated": 0,
        "by_task": Counter(),
        "reward_by_task": Counter(),
    }

    def on_episode(trajectory: Trajectory) -> None:
        totals["episodes"] += 1
        totals["by_task"][trajectory.task] += 1
        totals["reward_by_task"][trajectory.task] += trajectory.reward
        totals["truncated"] += trajectory.truncated
        calls = [c for turn in trajectory.turns for c in turn["tool_calls"]]
        totals["tool_calls"] += len(calls)
        totals["tool_errors"] += sum(not c["ok"] for c in calls)
        totals["bad_actions"] += sum(turn["text"] in BAD_ACTIONS for turn in trajectory.turns)

    rows: list[dict[str, Any]] = []
    handle = (out / "soak.csv").open("w", newline="")
    writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    start = time.perf_counter()

    trim = _malloc_trim() if args.malloc_trim else None

    def sample() -> None:
        gc.collect()
        if trim is not None:
            trim(0)
        t = time.perf_counter() - start
        caches = cache_sizes(encoder)
        prev = rows[-1] if rows else None
        rate = (
            (totals["episodes"] - prev["episodes"]) / (t - prev["t_s"]) if prev and t > prev["t_s"] else 0.0
        )
        files, mb = folder_size(clips)
        row = {"t_s": round(t, 2), "episodes": totals["episodes"], "episodes_per_s": round(rate, 3),
               **process_stats(), "py_objects": len(gc.get_objects()), **caches, "clip_files": files,
               "clip_mb": round(mb, 3), "uncaught": totals["uncaught"],
               "lru": {k[4:]: v for k, v in caches.items() if k.startswith("lru:")}}
        rows.append(row)
        writer.writerow(row)
        handle.flush()

    sample()
    deadline, index, round_ = start + 60 * args.minutes, 0, 0
    with handle:
        while time.perf_counter() < deadline:
            for name in names:
                config: dict[str, Any] = {"difficulty": round_ % 3} if "difficulty" in fields[name] else {}
                if "clip_dir" in fields[name]:
                    config["clip_dir"] = str(clips)

                def env_fn(name: str = name, config: dict[str, Any] = config) -> VisualToolEnv:
                    return VisualToolEnv(name, task_config=config)

                specs = [
                    EpisodeSpec("train", i, group_id=i, seed=i) for i in range(index, index + args.batch)
                ]
                index += args.batch
                try:
                    rollout(
                        env_fn,
                        policy,
                        encoder,
                        specs,
                        RolloutConfig(batch_size=args.batch),
                        on_episode=on_episode,
                    )
                except Exception:  # a soak reports crashes instead of stopping at the first
                    totals["uncaught"] += 1
                    with (out / "errors.log").open("a") as log:
                        log.write(
                            f"--- {name} episodes "
                            f"{specs[0].index}-{specs[-1].index}\n{traceback.format_exc()}"
                        )
                if time.perf_counter() - start - rows[-1]["t_s"] >= args.interval:
                    sample()
                if time.perf_counter() >= deadline:
                    break
            round_ += 1
        sample()
    totals["reward_by_task"] = {k: v / totals["by_task"][k] for k, v in totals["reward_by_task"].items()}
    totals["by_task"] = dict(totals["by_task"])
    summary = summarize(rows, args, totals)
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.keep_clips:
        shutil.rmtree(clips, ignore_errors=True)
    _report(summary, out)
    return summary


if __name__ == "__main__":
    main()
