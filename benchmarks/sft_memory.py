"""Peak RSS of SFT against the number of training episodes (issue 20): 100 vs 1,000 vs 10,000, side by side.

Run: ``python benchmarks/sft_memory.py`` (defaults below; ~3 minutes on 2 CPU cores), or e.g.
``python benchmarks/sft_memory.py --episodes 100 1000 --eager 100 1000 --distinct 100``.

Each measurement runs in its own subprocess, which loads the tiny Qwen2-VL (built once by the parent), builds
the SFT data, runs ``--steps`` SFT steps of ``--batch`` trajectories, and reports its peak RSS
(``ru_maxrss``) and its RSS after the data was built and after the steps:

- ``compact``: the data as ``vgym train`` and the quickstart build it now — an
  :class:`~vgym.trainers.sft_data.SFTDataset` filled one lockstep batch of episodes at a time (token ids and
  masks in RAM, images in an unlinked spill file in a temporary folder, patches made per batch);
- ``eager``: the trajectories held in a list, as :func:`vgym.app.pipeline.collect` returns them, each with
  the processor's fp32 patches — what SFT held before the dataset existed.

Episodes come from the scripted oracle on ``visual_search`` (the quickstart's task and 224² image budget, a
lazy teacher: half its episodes skip the crop, so rows hold one or two images). Generating an episode costs
~50 ms here, mostly rendering its 1344² scene, so 10,000 real episodes would take ~10 minutes: only
``--distinct`` episodes are played (default 250), and each is added ``N / distinct`` times (the eager list
gets a copy of its tensors each time, as distinct episodes would have). What is measured is what grows with
N — the data held and the batches read from it — not the cost of playing the episodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from intra-op threads


def _rss_mib() -> float:
    """This process's resident set size now (``/proc/self/status`` VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _copies(n: int, distinct: int) -> list[int]:
    """How many times each of the ``distinct`` played episodes is added so that ``n`` are added in all."""
    return [n // distinct + (j < n % distinct) for j in range(distinct)]


def measure(model_dir: Path, mode: str, n: int, distinct: int, steps: int, batch: int) -> dict[str, Any]:
    """One measurement, in this process (the parent runs each in a fresh subprocess)."""
    import torch

    from vgym.engine.tiny import load_vlm
    from vgym.env import VisualToolEnv
    from vgym.policies.oracle import OraclePolicy
    from vgym.rollout.chat import ChatEncoder
    from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
    from vgym.rollout.workers import make_pool
    from vgym.trainers.sft import SFTConfig, SFTTrainer
    from vgym.trainers.sft_data import SFTDataset

    model, processor = load_vlm(model_dir)
    encoder = ChatEncoder(processor)
    start_rss = _rss_mib()
    distinct = min(distinct, n)
    copies = _copies(n, distinct)
    spill = tempfile.TemporaryDirectory(prefix="vgym-sft-memory-")
    data: Any = SFTDataset(encoder, spill_dir=spill.name) if mode == "compact" else []
    env_fn = lambda: VisualToolEnv("visual_search")
    teacher = OraclePolicy(skip_tools=0.5, seed=1)
    pool = make_pool("local", env_fn, encoder, min(32, distinct))
    start = time.perf_counter()
    for first in range(0, distinct, 32):  # one lockstep batch at a time, as collect_sft_data plays them
        specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(first, min(first + 32, distinct))]
        for j, traj in zip(range(first, distinct), rollout(env_fn, teacher, encoder, specs,
                                                            RolloutConfig(batch_size=32), pool=pool)):
            for _ in range(copies[j]):
                if mode == "compact":
                    data.add(traj)
                else:  # its own tensors, as a distinct episode has
                    data.append(dataclasses.replace(traj, input_ids=traj.input_ids.clone(),
                                                    loss_mask=traj.loss_mask.clone(),
                                                    pixel_values=traj.pixel_values.clone()))
    pool.close()
    build_s = time.perf_counter() - start
    data_rss = _rss_mib()
    trainer = SFTTrainer(model, data, SFTConfig(steps=steps, batch_size=batch, warmup_steps=1),
                         processor=processor)
    start = time.perf_counter()
    losses = [m["loss/sft"] for m in trainer.train()]
    steps_s = time.perf_counter() - start
    result = {
        "mode": mode, "episodes": n, "distinct": distinct, "build_s": build_s, "steps_s": steps_s,
        "start_rss_mib": start_rss, "data_rss_mib": data_rss, "end_rss_mib": _rss_mib(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "spill_mib": trainer.data.spill.nbytes / 2**20, "final_loss": losses[-1],
        "torch_threads": torch.get_num_threads(),
    }
    spill.cleanup()
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, nargs="+", default=[100, 1000, 10_000],
                        help="training-set sizes measured with the compact dataset")
    parser.add_argument("--eager", type=int, nargs="*", default=[100, 1000],
                        help="sizes measured with the eager list (~2 MB per episode: 10,000 need ~20 GB)")
    parser.add_argument("--distinct", type=int, default=250, help="episodes actually played per measurement")
    parser.add_argument("--steps", type=int, default=10, help="SFT steps after the data is built")
    parser.add_argument("--batch", type=int, default=16, help="trajectories per SFT step")
    parser.add_argument("--model", type=Path, default=None, help="a tiny VLM folder (default: build one)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # a measurement subprocess: one JSON line on stdout
        row = measure(args.model, args.child[0], int(args.child[1]), args.distinct, args.steps, args.batch)
        print(json.dumps(row))
        return [row]

    with tempfile.TemporaryDirectory(prefix="vgym-tiny-") as tmp:
        model_dir = args.model
        if model_dir is None:
            from vgym.app.quickstart import tokenizer_corpus
            from vgym.engine.tiny import build_tiny_vlm

            model_dir = build_tiny_vlm(Path(tmp) / "vlm", corpus=tokenizer_corpus("visual_search", 0))
        rows = []
        for mode, sizes in (("compact", args.episodes), ("eager", args.eager)):
            for n in sizes:
                command = [sys.executable, __file__, "--child", mode, str(n), "--model", str(model_dir),
                           "--distinct", str(args.distinct), "--steps", str(args.steps), "--batch",
                           str(args.batch)]
                done = subprocess.run(command, check=False, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{mode} {n}: failed (exit {done.returncode})\n{done.stderr[-2000:]}")
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(_line(rows[-1]), flush=True)
    _summary(rows)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


def _line(row: dict[str, Any]) -> str:
    return (f"{row['mode']:>7} {row['episodes']:>7,} episodes ({row['distinct']} played): "
            f"peak RSS {row['peak_rss_mib']:7.0f} MiB | RSS after loading {row['start_rss_mib']:6.0f}, "
            f"with the data {row['data_rss_mib']:6.0f}, after the steps {row['end_rss_mib']:6.0f} MiB"
            f" | spill {row['spill_mib']:6.0f} MiB | build {row['build_s']:5.1f} s, "
            f"steps {row['steps_s']:5.1f} s")


def _summary(rows: list[dict[str, Any]]) -> None:
    """Each mode's peaks against its smallest run."""
    for mode in ("compact", "eager"):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["episodes"])
        if len(mine) < 2:
            continue
        base = mine[0]
        ratios = ", ".join(f"{r['episodes']:,}: {r['peak_rss_mib'] / base['peak_rss_mib']:.3f}"
                           for r in mine[1:])
        print(f"{mode}: peak RSS relative to {base['episodes']:,} episodes: {ratios}")


if __name__ == "__main__":
    main()
