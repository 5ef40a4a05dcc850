"""Fault and recovery tests (issue 9): real hangs, crashes, leaks, SIGKILLed runs and full disks.

- Tools: a hung backend becomes a ToolError naming the tool and its timeout, in both isolation modes, and the
  env goes on; a backend that segfaults or SIGKILLs its worker process, or a worker killed while idle (what
  the out-of-memory killer does), costs one call and the next call runs on a fresh worker; a leaking backend's
  worker is recycled by RSS or call count, so its memory stays bounded.
- Training: a ``vgym train`` subprocess SIGKILLed at a seeded random time resumes (the recipe with ``resume``,
  what ``--resume`` runs) to exactly the metrics and weights of an uninterrupted run; a process SIGKILLed
  while saving checkpoints leaves every visible checkpoint complete and loadable.
- Evaluation: a ``vgym eval`` subprocess SIGKILLed at a seeded random time resumes without scoring any episode
  twice and reproduces the uninterrupted report.
- Full disk: ``tests/test_disk_full.py``.

The Ray case (a killed Ray env worker loses and duplicates no episode) is in
``tests/rollout/test_workers.py``.

The backends below are module-level functions so that spawned worker processes can import them; the module
keeps its top-level imports light because every worker start imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import vgym  # noqa: F401  (registers crop and visual_search)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import Tool, ToolContext, ToolResult

# --- tool backends that misbehave ---------------------------------------------------------------------------

_RELEASE = threading.Event()  # set at the end of a thread-mode test, so its hung worker thread ends
_LEAKED: list[np.ndarray] = []  # what the leaking backend keeps alive (in the worker process)


def _fault(ctx: ToolContext, mode: str = "ok") -> ToolResult:
    """A tool whose backend misbehaves on request.

    Args:
        mode: "ok", "hang", "segfault", "sigkill" or "leak".
    """
    if mode == "hang":
        _RELEASE.wait(60.0)  # blocks like a hung detector; 60 s is far past every timeout used here
    elif mode == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "leak":
        _LEAKED.append(np.ones(20 * 2**20, dtype=np.uint8))  # 20 MiB, every page touched, never freed
    return ToolResult(text=f"pid={os.getpid()}")


FAULT = Tool(_fault, name="fault")


def _ctx() -> ToolContext:
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    return ToolContext([image], {}, np.random.default_rng(0), 224 * 224)


def _pid(runtime: ToolRuntime) -> int:
    """Call the fault tool harmlessly; the pid of the process that ran it."""
    result, _ = runtime.call(FAULT, _ctx(), {"mode": "ok"})
    return int(result.text.removeprefix("pid="))


def _alive(pid: int, wait_s: float = 5.0) -> bool:
    """Whether process ``pid`` still exists after up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.02)
    return True


def _call(env: VisualToolEnv, name: str, arguments: dict) -> tuple[dict, dict, bool]:
    import json

    call = json.dumps({"name": name, "arguments": arguments})
    obs, _, terminated, _, info = env.step(f"<tool_call>{call}</tool_call>")
    return obs, info["tool_calls"][0], terminated


# --- tools --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["none", "subprocess"])
def test_a_hung_backend_times_out_and_the_env_goes_on(isolation: str) -> None:
    env = VisualToolEnv("visual_search", tool_runtime={"isolation": isolation, "timeout_s": 0.5})
    env.tools["fault"] = FAULT  # this env instance only
    try:
        env.reset(seed=0)
        start = time.perf_counter()
        obs, record, terminated = _call(env, "fault", {"mode": "hang"})
        assert time.perf_counter() - start < 30.0  # returned at the timeout, not after the 60 s hang
        assert "Error: fault timed out after 0.5 s" in obs["text"]
        assert record["ok"] is False and not terminated
        region = env.sample.metadata["region"]  # type: ignore[union-attr]
        obs, record, _ = _call(env, "crop", {"box": region})  # a later call runs on a fresh worker
        assert record["ok"] is True and len(obs["images"]) == 1
        answer = env.sample.answer  # type: ignore[union-attr]
        _, reward, terminated, _, _ = env.step(f"<answer>{answer}</answer>")
        assert terminated and reward > 0.9
        assert env.runtime.counters["timeouts"] == 1 and env.runtime.counters["worker_starts"] == 2
    finally:
        _RELEASE.set()  # thread mode: the abandoned worker thread ends instead of lingering
        env.close()
        _RELEASE.clear()


def test_crashing_and_killed_workers_are_restarted() -> None:
    runtime = ToolRuntime(ToolRuntimeConfig(isolation="subprocess", timeout_s=30.0))
    try:
        pids = []
        for mode in ("segfault", "sigkill"):  # the backend kills its own worker in the middle of a call
            with pytest.raises(ToolError, match="fault crashed its worker process"):
                runtime.call(FAULT, _ctx(), {"mode": mode})
            pids.append(_pid(runtime))  # the next call works, on a new worker
        os.kill(pids[-1], signal.SIGKILL)  # the idle worker dies between calls (the out-of-memory killer)
        deadline = time.monotonic() + 10.0
        while not getattr(runtime._pool, "_broken", False) and time.monotonic() < deadline:
            time.sleep(0.05)  # the executor notices the dead worker
        pids.append(_pid(runtime))
        assert len(set(pids)) == 3 and os.getpid() not in pids
        assert runtime.counters == {"worker_starts": 4, "timeouts": 0, "crashes": 3, "recycled": 0}
    finally:
        runtime.close()


def test_a_leaking_backend_is_recycled_by_rss_and_by_call_count() -> None:
    # Start with recycling off, read the worker's RSS after one leaking call, then cap RSS 50 MiB above it.
    runtime = ToolRuntime(ToolRuntimeConfig(isolation="subprocess", timeout_s=30.0, max_worker_rss_mb=1e9))
    try:
        rss: list[float] = []
        pids: list[int] = []
        for i in range(10):
            result, _ = runtime.call(FAULT, _ctx(), {"mode": "leak"})
            pids.append(int(result.text.removeprefix("pid=")))
            rss.append(runtime.last_worker_rss_mb)  # type: ignore[arg-type]
            if i == 0:
                limit = rss[0] + 50.0
                runtime.config = dataclasses.replace(runtime.config, max_worker_rss_mb=limit)
        # The leak is real: within one worker each call adds ~20 MiB.
        same = [b - a for a, b, p, q in zip(rss, rss[1:], pids, pids[1:]) if p == q]
        assert same and all(18.0 < d < 30.0 for d in same), rss
        # A worker is retired by the first call that leaves it above the limit (limit = r0 + 50: after 4
        # calls, r0 + 60), so 10 calls take 3 workers, and no worker ever holds more than the limit plus one
        # call's leak.
        assert len(set(pids)) == 3 and runtime.counters["recycled"] == 2
        assert max(rss) <= limit + 20.0 + 5.0, rss  # 5 MiB slack for allocator noise
        # retired workers are gone, their memory returned
        assert not any(_alive(pid) for pid in set(pids) - {pids[-1]})
        # By call count: three calls per worker, whatever the memory.
        runtime.config = dataclasses.replace(runtime.config, max_worker_rss_mb=None, max_calls_per_worker=3)
        runtime.close()  # start counting on a fresh worker
        counted = [_pid(runtime) for _ in range(4)]
        assert counted[0] == counted[1] == counted[2] != counted[3]
    finally:
        runtime.close()


@pytest.mark.parametrize("change, message", [
    ({"max_worker_rss_mb": 500.0}, "need isolation='subprocess'"),
    ({"isolation": "ray", "max_calls_per_worker": 10}, "need isolation='subprocess'"),
    ({"isolation": "subprocess", "max_calls_per_worker": 0}, "max_calls_per_worker must be positive"),
    ({"start_timeout_s": 0.0}, "start_timeout_s must be positive"),
])
def test_recycling_config_is_checked(change: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        ToolRuntimeConfig(**change)


# --- training and evaluation killed at a random point -------------------------------------------------------

# A random tiny model never answers, so every episode is truncated; keeping truncated episodes and an entropy
# bonus gives every step a non-zero loss and gradient, so a wrong resume (weights, optimizer, RNG, data
# position) shows. Groups of 2, 2 turns of 8 tokens: a step takes ~0.5 s on the tiny model (real runs: 8 x 8
# episodes, 256+ tokens).
GRPO_FAST = {"num_generations": 2, "prompts_per_step": 2, "max_new_tokens": 8, "steps": 5,
             "learning_rate": 1e-3, "entropy_coef": 0.01, "mask_truncated_completions": False}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vgym.app.cli", *args]


def _start(args: list[str], log) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """Start a child with one intra-op thread (the same kernels as this process: bit-identical numbers); its
    stderr goes to the file ``log`` (a pipe nobody reads could fill up and stall it)."""
    with open(log, "wb") as fh:
        return subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=fh)


def _kill_when(proc, ready, delay: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``ready()`` (polling), then ``delay`` seconds more, then SIGKILL ``proc``; it must still be
    running (else the kill tested nothing)."""
    deadline = time.monotonic() + 120.0
    while not ready():
        assert proc.poll() is None, f"{what} ended early (exit {proc.returncode}); see its stderr log"
        assert time.monotonic() < deadline, f"{what} never got there"
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, f"{what} finished before the kill; kill earlier"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@contextlib.contextmanager
def _killer(proc, ready, delay: float, what: str):  # type: ignore[no-untyped-def]
    """:func:`_kill_when` on a watcher thread while the block runs (the test's own work uses the other core);
    its failure is raised when the block ends."""
    failed: list[BaseException] = []

    def watch() -> None:
        try:
            _kill_when(proc, ready, delay, what)
        except BaseException as exc:  # handed to the test thread
            failed.append(exc)
            proc.kill()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield
    finally:
        watcher.join()
    if failed:
        raise failed[0]


def _steps(path) -> dict[int, dict[str, str]]:  # type: ignore[no-untyped-def]
    """metrics.csv rows by step, without the timing columns (perf/*), as the exact strings written."""
    import csv

    with open(path, newline="") as fh:
        return {int(r["step"]): {k: v for k, v in r.items() if not k.startswith("perf/")}
                for r in csv.DictReader(fh)}


def test_training_killed_at_a_random_point_resumes_to_the_same_metrics(
    tiny_dir: Path, tmp_path: Path
) -> None:
    import yaml
    from safetensors.numpy import load_file

    from vgym.app.recipes import load_recipe, run_recipe

    rng = np.random.default_rng(2024)
    step = int(rng.integers(1, 3))  # kill during step 2 or 3 of 5, at a random time within it
    delay = float(rng.uniform(0.0, 0.5))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(tiny_dir), "eval_episodes": 0, "grpo": GRPO_FAST,
                                      "env": {"max_turns": 2}, "save_every": 1, "report_to": ["csv"]}))
    killed = tmp_path / "killed"
    proc = _start(_cli("train", "--config", str(recipe), "--out", str(killed)), tmp_path / "train.log")
    with _killer(proc, lambda: (killed / f"checkpoint-{step}").exists(), delay, "vgym train"):
        # Meanwhile, the uninterrupted run, in this process (same code, same kernels).
        run_recipe(load_recipe(recipe, out=str(tmp_path / "straight")))
    saved = sorted(p.name for p in killed.glob("checkpoint-*"))
    assert f"checkpoint-{step}" in saved and "checkpoint-5" not in saved
    first = (killed / "checkpoint-1" / "grpo_state.pt").stat().st_mtime_ns
    run_recipe(load_recipe(recipe, out=str(killed), resume=True))  # what `vgym train ... --resume` runs
    assert (killed / "checkpoint-1" / "grpo_state.pt").stat().st_mtime_ns == first  # resumed, not restarted
    straight, again = _steps(tmp_path / "straight" / "metrics.csv"), _steps(killed / "metrics.csv")
    assert sorted(again) == list(range(1, 6))
    assert float(straight[5]["loss/total"]) != 0.0  # the steps really trained
    for n in range(1, 6):
        assert again[n] == straight[n], f"step {n} differs after the kill at {saved[-1]} + {delay:.2f} s"
    a = load_file(str(tmp_path / "straight" / "checkpoint-5" / "model.safetensors"))
    b = load_file(str(killed / "checkpoint-5" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


_SAVE_LOOP = """
import functools, sys
from pathlib import Path
from vgym.env import VisualToolEnv
from vgym.engine.tiny import load_vlm
from vgym.trainers.grpo import GRPOTrainer, hf_policy
from vgym.trainers.grpo_config import GRPOConfig
model, processor = load_vlm(sys.argv[1])
config = GRPOConfig(steps=1000)
trainer = GRPOTrainer(model, processor, hf_policy(model, processor, config),
                      functools.partial(VisualToolEnv, "visual_search"), config)
for step in range(1, 1001):
    trainer.step_count = step
    trainer.save(Path(sys.argv[2]) / f"checkpoint-{step}")
"""


def test_a_kill_while_saving_leaves_every_visible_checkpoint_loadable(tiny_dir: Path, tmp_path: Path) -> None:
    import functools

    from vgym.engine.tiny import load_vlm
    from vgym.trainers.grpo import GRPOTrainer, hf_policy
    from vgym.trainers.grpo_config import GRPOConfig

    out = tmp_path / "run"
    proc = _start([sys.executable, "-c", _SAVE_LOOP, str(tiny_dir), str(out)], tmp_path / "save.log")
    rng = np.random.default_rng(7)
    after, file = int(rng.integers(2, 6)), str(rng.choice(["config.json", "model.safetensors"]))

    def mid_save() -> bool:  # checkpoint `after` is done and the next save has begun writing `file`
        next_save = [*out.glob(f".checkpoint-{after + 1}.tmp-*"), out / f"checkpoint-{after + 1}"]
        return (out / f"checkpoint-{after}").exists() and any((p / file).exists() for p in next_save)

    with _killer(proc, mid_save, 0.0, "the save loop"):
        model, processor = load_vlm(tiny_dir)
        config = GRPOConfig(steps=1000)
        trainer = GRPOTrainer(model, processor, hf_policy(model, processor, config),
                              functools.partial(VisualToolEnv, "visual_search"), config)
    # The kill landed inside a save (on a loaded machine, possibly a later one than the save that triggered
    # it: the tiny model saves in milliseconds): its temporary folder is left behind ...
    stale = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert len(stale) <= 1, stale
    assert all(int(name.split(".tmp-")[0].split("-")[1]) > after for name in stale), stale
    # ... and every checkpoint under its final name is whole: the newest loads and is the step it is named
    # after.
    visible = sorted((p for p in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    assert all({"model.safetensors", "config.json", "grpo_state.pt"} <= {f.name for f in p.iterdir()}
               for p in visible)
    trainer.load(visible[-1])
    assert trainer.step_count == int(visible[-1].name.split("-")[1])
    # Saving the interrupted checkpoint again clears the dead writer's temporary folder.
    interrupted = out / (stale[0][1:].split(".tmp-")[0] if stale else f"checkpoint-{after + 1}")
    trainer.save(interrupted)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_evaluation_killed_at_a_random_point_scores_each_episode_once(tmp_path: Path) -> None:
    import json

    from vgym.eval.evaluate import EvalConfig, run_eval

    config = EvalConfig(policy="random", suite=("visual_search", "counting"), n=12, k=2, difficulties=(1,))
    total = 2 * 12 * 2
    run, path = tmp_path / "killed", tmp_path / "killed" / "episodes.jsonl"
    lines = int(np.random.default_rng(11).integers(1, total - 12))  # kill after a random number of episodes
    args = _cli("eval", "--policy", "random", "--suite", "visual_search", "--suite", "counting", "--n", "12",
                "--k", "2", "--difficulty", "1", "--out", str(run))
    proc = _start(args, tmp_path / "eval.log")
    with _killer(proc, lambda: path.exists() and path.read_bytes().count(b"\n") >= lines, 0.0, "vgym eval"):
        straight = run_eval(config, tmp_path / "straight")  # meanwhile, the uninterrupted run
    before = path.read_bytes()
    assert 0 < before.count(b"\n") < total
    resumed = run_eval(config, run)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [(r["task"], r["index"], r["attempt"]) for r in records]
    assert len(keys) == len(set(keys)) == total  # nothing lost, nothing scored twice
    assert path.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # whole lines kept as written
    for r in records:  # every failure trajectory a line points to was written whole before the line
        if r["trajectory"] is not None:
            assert json.loads((run / r["trajectory"]).read_text())["sample_id"] == r["sample_id"]
    assert resumed == straight
