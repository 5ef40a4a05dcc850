"""Eval throughput of the OpenAI policy against a real ``transformers serve``: native vs text tool calling.

Builds the tests' served model (the tiny Qwen2-VL taught to crop on visual search; see
``tests/policies/transformers_server.py``), starts ``transformers serve`` on 127.0.0.1 and times ``vgym eval``
(:func:`vgym.eval.evaluate.run_eval`) on the same ``n`` visual-search episodes (each: a crop call, the crop,
an answer — two requests) with

- ``native``: the folder whose server parses tool calls, ``tool_calling=native`` (``tools`` sent,
  ``message.tool_calls`` read, tool messages sent back);
- ``text``: the folder whose server parses none, ``tool_calling=text`` (the calls stay in the content).

Each mode runs ``--repeats`` times, alternating, after one untimed warm-up run each; it prints every run's
episodes/s and the median. Usage::

    python benchmarks/openai_serve.py --n 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the tests: tiny models gain nothing from more threads

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "policies"))  # the served-model builder the tests use

from transformers_server import (
    ServeProcess,
    serve_command,
    teach_tiny_model,
    write_served_folders,
)

from vgym.app.quickstart import tokenizer_corpus
from vgym.engine.tiny import build_tiny_vlm
from vgym.eval.evaluate import EvalConfig, run_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="visual-search episodes per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="episodes in flight (vgym eval --batch-size)")
    args = parser.parse_args()
    command = serve_command()
    if command is None:
        sys.exit("the `transformers` command is missing")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        base = build_tiny_vlm(folder / "base", corpus=tokenizer_corpus("visual_search", 0, n=40))
        parsing, plain = write_served_folders(teach_tiny_model(base, folder / "taught"), folder)
        print(f"served model built in {time.perf_counter() - start:.0f} s")
        server = ServeProcess(command, folder / "server.log")
        try:
            modes = {"native": f"openai:{server.base_url}#{parsing},tool_calling=native",
                     "text": f"openai:{server.base_url}#{plain},tool_calling=text"}
            rates: dict[str, list[float]] = {mode: [] for mode in modes}
            for run in range(args.repeats + 1):
                for mode, spec in modes.items():
                    n = args.n if run else 8  # run 0 warms up: a model's process starts on its first request
                    config = EvalConfig(policy=spec, suite=("visual_search",), n=n, difficulties=(0,),
                                        max_new_tokens=48, batch_size=args.batch_size,
                                        save_trajectories="none")
                    start = time.perf_counter()
                    report = run_eval(config, folder / f"{mode}-{run}")
                    seconds = time.perf_counter() - start
                    overall = report["overall"]
                    assert overall["episodes"] == n and overall["could_not_run"] == 0, overall
                    if run:
                        rates[mode].append(n / seconds)
                        print(f"{mode:6s} run {run}: {n} episodes in {seconds:.2f} s = {n / seconds:.1f} "
                              f"episodes/s (avg@1 {overall['avg_at_k']:.3f}, calls/ep "
                              f"{overall['calls_per_episode']:.2f})")
            for mode, values in rates.items():
                print(f"{mode:6s} median {statistics.median(values):.1f} episodes/s over {len(values)} runs "
                      f"of {args.n}")
        finally:
            server.close()


if __name__ == "__main__":
    main()
