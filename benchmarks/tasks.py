"""Sample-generation speed per task and difficulty: median and 95th-percentile milliseconds per sample.

Run: ``python benchmarks/tasks.py [--samples 50]``. Targets (issue 5): ≤ 50 ms per image sample, ≤ 500 ms per
video clip. Video tasks are measured cold (a fresh clip folder, so every clip is rendered and encoded) and
warm (the clips already on disk). Nothing here is asserted: these machines are noisy, so targets are read, not
tested.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import numpy as np

from vgym.task import TASKS, env_id


def timings(task, samples: int, offset: int = 0) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(samples):
        start = time.perf_counter()
        task.sample("train", offset + i, 0)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    print(f"{'env id':<26}{'diff':>5}{'median ms':>11}{'p95 ms':>9}  note")
    with tempfile.TemporaryDirectory() as clips:
        for name in TASKS.names():
            cls = TASKS.get(name)
            if not cls.procedural:  # dataset loaders read files; their speed is the disk's
                continue
            fields = {f.name for f in dataclasses.fields(cls.config_cls)}
            for level in (0, 1, 2):
                config = {"difficulty": level}
                if "clip_dir" in fields:
                    config["clip_dir"] = f"{clips}/{name}-{level}"
                task = cls(config)
                task.sample("train", 10**6, 0)  # warm-up: caches, imports
                cold = timings(task, args.samples)
                note = "video: cold (new clips)" if "clip_dir" in fields else ""
                print(f"{env_id(cls):<26}{level:>5}{statistics.median(cold):>11.1f}"
                      f"{float(np.percentile(cold, 95)):>9.1f}  {note}")
                if "clip_dir" in fields:
                    warm = timings(task, args.samples)  # the same items again: clips are on disk
                    print(f"{env_id(cls):<26}{level:>5}{statistics.median(warm):>11.1f}"
                          f"{float(np.percentile(warm, 95)):>9.1f}  video: warm (cached clips)")


if __name__ == "__main__":
    main()
