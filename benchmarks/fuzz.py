"""Action fuzzing: a seeded grammar of near-valid model turns, played against every registered env (issue 9).

Run: ``python benchmarks/fuzz.py --actions 100000 --seed 0``. Prints the count, wall time, actions/s, uncaught
exceptions (the first traceback of each distinct kind), observations outside the space, errors that do not
name the problem, malformed turns that were accepted, and a row per env. Nothing is asserted here (the fast
version is ``tests/test_fuzz_actions.py``, which imports this module); exit status 1 when any problem was
found. The five dataset-backed envs play the sample datasets of :mod:`vgym.data.sample_data`, written to a
temporary folder (``--no-sample-data`` skips them); ``--targets Vstar Refcoco`` fuzzes only the targets whose
label contains one of the given texts.

Contents: :class:`Target`, :func:`fuzz_targets`, :func:`check_step`, :class:`FuzzReport`,
:func:`oracle_reward`, :func:`fuzz_target`, :func:`fuzz`. The grammar
(:class:`~benchmarks.fuzz_grammar.ActionGrammar`, and :class:`~benchmarks.fuzz_grammar.FuzzAction`, one
generated turn) is in ``benchmarks/fuzz_grammar.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script: benchmarks/ is importable from the repository root
    sys.path.insert(0, _ROOT)

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402

import vgym  # noqa: E402,F401  (registers the envs)
from benchmarks.fuzz_grammar import ActionGrammar, FuzzAction  # noqa: E402
from vgym.data.sample_data import write_sample_datasets  # noqa: E402
from vgym.task import TASKS, env_id  # noqa: E402
from vgym.tooling import TOOLS  # noqa: E402

__all__ = ["Target", "fuzz_targets", "check_step", "FuzzReport", "oracle_reward", "fuzz_target", "fuzz"]

_GENERIC = ("image budget", "timed out", "elongated", "video", "backend", "crashed")
"""Words that name a problem on their own (budget, timeout, tool-output shape, missing media, backend
setup)."""


@dataclass(frozen=True)
class Target:
    """One env to fuzz: a registered id and the ``gymnasium.make`` keyword arguments."""

    label: str
    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_ORACLES = {"ground": "oracle", "point": "oracle", "segment": "oracle", "ocr": "oracle", "depth": "oracle"}
"""Ground-truth backends: no model and no classical vision, so a call costs microseconds (the fast test's
choice)."""


def fuzz_targets(
    *, fast: bool = False, data_root: str | Path | None = None
) -> tuple[list[Target], dict[str, str]]:
    """Every registered env id once with its defaults, once "deep" (every tool, other backends, small
    budgets).

    Args:
        fast: run every tool on its oracle backend (RapidOCR, GrabCut and the Haar/HOG detectors take up to
            seconds a call on large images); decoders stay real.
        data_root: a folder to write :mod:`vgym.data.sample_data`'s datasets into (overwriting files of the
            same names); the dataset-backed envs then play them, the default target on the first split with
            records (train where there is one), the deep target on the last (test). None: those envs are
            skipped.

    Returns:
        ``(targets, skipped)``: ``skipped`` maps the ids that need a dataset root on disk (and have no sample
        dataset) to the reason; empty when ``data_root`` is given.
    """
    everything = tuple(TOOLS.names())
    # OCR's oracle keeps the deep runs fast (RapidOCR runs in the default targets); the others swap in the
    # classical backends (the defaults are oracles; stereo needs RealMini's stereo pair) and PyAV (the default
    # tries decord first).
    backends = {
        "ground": "opencv",
        "point": "opencv",
        "segment": "grabcut",
        "ocr": "oracle",
        "depth": "stereo",
        "sample_frames": "pyav",
        "get_frame": "pyav",
    }
    if fast:
        backends.update(_ORACLES)
    deep = {
        "tools": everything,
        "max_turns": 12,
        "max_calls_per_turn": 3,
        "max_images": 5,
        "max_pixels": 56 * 56,
        "tool_runtime": {"backends": backends},
    }
    default: dict[str, Any] = {"tool_runtime": {"backends": dict(_ORACLES)}} if fast else {}
    datasets = write_sample_datasets(data_root) if data_root is not None else {}
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for name in TASKS.names():
        task_cls = TASKS.get(name)
        eid = env_id(task_cls)
        base: dict[str, Any] = {}
        deep_base: dict[str, Any] = {}
        if name == "real_mini":  # media ship inside installed packages; all 40 questions are in "test"
            base = deep_base = {"split": "test"}
        elif name in datasets:
            sample = datasets[name]
            base = {"task_config": sample.task_config, "split": sample.splits[0]}
            deep_base = {"task_config": sample.task_config, "split": sample.splits[-1]}
        elif not task_cls.procedural:
            skipped[eid] = "needs a dataset root on disk (DatasetConfig.root): pass data_root for sample data"
            continue
        targets.append(Target(eid, eid, {**base, **default}))
        targets.append(Target(f"{eid} deep", eid, {**deep_base, **deep}))
    return targets, skipped


# ------------------------------------------------------------------------------------------------- checking


def check_step(env: gymnasium.Env, action: FuzzAction, result: tuple,
               format_errors_before: int) -> list[tuple[str, str]]:
    """The problems of one step's result.

    Args:
        env: the env that played the turn (its observation space and tools are read).
        action: the turn, with what its rejection must look like.
        result: what ``env.step(action.text)`` returned.
        format_errors_before: ``env.unwrapped``'s format-error count before the step.

    Returns:
        ``(category, detail)`` pairs, empty when all is well. Categories: ``outside_space``, ``bad_flags``,
        ``bad_reward``, ``unencodable`` (observation text or tool records that cannot be written as UTF-8
            JSON),
        ``internal_error`` (a tool crashed and the env caught it), ``unnamed`` (an error that names neither
            its
        problem nor the tool or an argument) and ``accepted`` (a turn that had to be rejected was not).
    """
    obs, reward, terminated, truncated, info = result
    problems: list[tuple[str, str]] = []
    if not env.observation_space.contains(obs):
        problems.append(("outside_space", f"{action.kind}: text {len(obs.get('text', ''))} chars, images "
                         f"{[getattr(im, 'shape', im) for im in obs.get('images', ())]}"))
    if type(terminated) is not bool or type(truncated) is not bool or (terminated and truncated):
        problems.append(("bad_flags", f"{action.kind}: terminated={terminated!r}, truncated={truncated!r}"))
    done = terminated or truncated
    if not isinstance(reward, float) or not math.isfinite(reward) or (not done and reward != 0.0):
        problems.append(("bad_reward", f"{action.kind}: reward {reward!r} (done={done})"))
    try:
        obs["text"].encode("utf-8")
        json.dumps(info["tool_calls"]).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError, TypeError) as exc:
        problems.append(("unencodable", f"{action.kind}: {type(exc).__name__}: {str(exc)[:120]}"))
    text = obs["text"].lower()
    for record in info["tool_calls"]:
        error = (record["error"] or "").lower()
        if not error:
            continue
        if error.startswith("internal error"):
            problems.append(("internal_error", f"{action.kind}: {record['name']}: {record['error']}"))
        props = env.unwrapped.tools[record["name"]].schema["function"]["parameters"]["properties"] \
            if record["name"] in env.unwrapped.tools else {}
        given = [a for a in record["arguments"] if len(a) >= 3]  # a one-letter key would match any message
        words = [record["name"].lower(), *props, *given, *_GENERIC, "unknown tool"]
        if not any(w and str(w).lower() in error for w in words):
            problems.append(("unnamed", f"{action.kind}: {record['name']}: {record['error'][:200]}"))
    if action.must_fail:
        if terminated:
            if info["format_errors"] <= format_errors_before:
                problems.append(("accepted", f"{action.kind}: {action.text[:120]!r} counted no format error"))
        elif "error" not in text:
            problems.append(("accepted", f"{action.kind}: {action.text[:120]!r} -> {obs['text'][:160]!r}"))
        elif not any(word.lower() in text for word in (*action.expect, *_GENERIC)):
            problems.append(
                ("unnamed", f"{action.kind}: expected one of {action.expect} in {obs['text'][:300]!r}")
            )
    return problems


@dataclass
class FuzzReport:
    """What a fuzzing run found (see :func:`check_step` for the problem categories)."""

    actions: int = 0
    episodes: int = 0
    seconds: float = 0.0
    rejected: int = 0
    kinds: Counter = field(default_factory=Counter)
    problems: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    exceptions: dict[str, str] = field(default_factory=dict)
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, category: str, detail: str) -> None:
        """Count one problem and keep the first few details of each category."""
        self.problems[category] += 1
        kept = self.samples.setdefault(category, [])
        if len(kept) < 5:
            kept.append(detail)

    @property
    def ok(self) -> bool:
        """True when no problem of any category was found."""
        return not self.problems

    def merge(self, other: FuzzReport) -> None:
        """Add ``other``'s counts, problems, first tracebacks and per-target rows to this report."""
        for name in ("actions", "episodes", "seconds", "rejected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kinds.update(other.kinds)
        for category, details in other.samples.items():
            for detail in details:
                self.add(category, detail)
            self.problems[category] += other.problems[category] - len(details)
        for key, tb in other.exceptions.items():
            self.exceptions.setdefault(key, tb)
        self.per_target.update(other.per_target)


def oracle_reward(env: gymnasium.Env, seed: int, options: dict[str, Any] | None) -> float:
    """Reset with ``seed`` and ``options`` and play the oracle's plan.

    Returns:
        The final reward (0.0 if the episode is cut short): equal for a fresh env and for one that was fuzzed.
    """
    env.reset(seed=seed, options=options)
    inner: Any = env.unwrapped
    solution = inner.task.solution(inner.sample, inner.tools_enabled)
    for name, arguments in solution.tool_calls:
        _, _, terminated, truncated, _ = env.step(inner.protocol.format_tool_call(name, arguments))
        if terminated or truncated:
            return 0.0
    return float(env.step(inner.protocol.format_answer(solution.answer))[1])


def fuzz_target(target: Target, actions: int, seed: int, *, huge_chars: int = 1 << 20,
                samples: int | None = None) -> FuzzReport:
    """Play ``actions`` generated turns on a fresh env of ``target``, then check that it still plays the
    oracle's episode exactly as a fresh env does (same reward).

    Args:
        target: the env.
        actions: how many turns to play (episodes restart as they end).
        seed: with the target's label, seeds the grammar and every episode.
        huge_chars: see :class:`ActionGrammar`.
        samples: draw every episode's sample from the split's first ``samples`` items (cached after the first
            reset: video tasks render a clip per new sample); None: any item.
    """
    report = FuzzReport()
    rng = np.random.default_rng(np.random.SeedSequence([seed, *target.label.encode()]))
    grammar = ActionGrammar(rng, huge_chars)
    env = gymnasium.make(target.env_id, **target.kwargs)
    start = time.perf_counter()

    def reset() -> None:
        options = None if samples is None else {"index": int(rng.integers(samples))}
        env.reset(seed=int(rng.integers(2**31)), options=options)
        grammar.start_episode(env.unwrapped)

    reset()
    report.episodes = 1
    slowest = (0.0, "")
    for _ in range(actions):
        action = grammar.next(env.unwrapped)
        report.actions += 1
        report.kinds[action.kind] += 1
        before = env.unwrapped._format_errors
        tick = time.perf_counter()
        try:
            result = env.step(action.text)
        except Exception as exc:  # the point of the exercise: step must never raise on model output
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {os.path.relpath(frame.filename)}:{frame.lineno}"
            report.exceptions.setdefault(key, "".join(traceback.format_exception(exc, limit=-12)))
            report.add("uncaught", f"{target.label} {action.kind}: {key}: {str(exc)[:160]}")
            result = None
        else:
            for category, detail in check_step(env, action, result, before):
                report.add(category, f"{target.label} {detail}")
            report.rejected += "error" in result[0]["text"].lower() or result[4]["format_errors"] > before
        took = time.perf_counter() - tick
        if took > slowest[0]:
            slowest = (took, f"{action.kind}: {action.text[:100]!r}")
        if result is None or result[2] or result[3]:
            reset()
            report.episodes += 1
    fresh = gymnasium.make(target.env_id, **target.kwargs)
    try:
        options = None if samples is None else {"index": 0}
        if oracle_reward(env, seed, options) != oracle_reward(fresh, seed, options):
            report.add("replay", f"{target.label}: oracle reward differs after fuzzing")
    except Exception as exc:
        report.add("replay", f"{target.label}: {type(exc).__name__}: {exc}")
    finally:
        fresh.close()
        env.close()
    report.seconds = time.perf_counter() - start
    report.per_target[target.label] = {"actions": report.actions, "episodes": report.episodes,
                                       "seconds": report.seconds, "problems": sum(report.problems.values()),
                                       "slowest_s": slowest[0], "slowest": slowest[1]}
    return report


def _row(label: str, row: dict[str, Any]) -> str:
    return (f"{label:28s} {row['actions']:7d} {row['episodes']:8d} {row['actions'] / row['seconds']:9.1f} "
            f"{row['problems']:8d}  {row['slowest_s']:.2f} s {row['slowest'][:70]}")


def fuzz(
    actions: int, seed: int, targets: list[Target] | None = None, *, verbose: bool = False
) -> FuzzReport:
    """Spread ``actions`` evenly over ``targets`` (default: :func:`fuzz_targets`) and merge the reports; with
    ``verbose``, print a row per target as it finishes."""
    targets = targets if targets is not None else fuzz_targets()[0]
    report = FuzzReport()
    if verbose:
        print(
            f"\n{'target':28s} {'actions':>7s} {'episodes':>8s} {'actions/s':>9s} {'problems':>8s}  slowest "
            "step"
        )
    for i, target in enumerate(targets):
        share = actions // len(targets) + (i < actions % len(targets))
        report.merge(fuzz_target(target, share, seed))
        if verbose:
            print(_row(target.label, report.per_target[target.label]), flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--actions", type=int, default=100_000, help="generated turns in all (spread over the envs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the grammar and of the episodes")
    parser.add_argument("--targets", "--only", nargs="+", default=[""], metavar="TEXT",
                        help="fuzz only targets whose label contains one of these texts (e.g. Vstar Refcoco)")
    parser.add_argument(
        "--no-sample-data",
        action="store_true",
        help="skip the dataset-backed envs instead of writing sample datasets to a temporary folder",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vgym-fuzz-data-") as folder:
        targets, skipped = fuzz_targets(data_root=None if args.no_sample_data else folder)
        targets = [t for t in targets if any(text in t.label for text in args.targets)]
        for eid, reason in sorted(skipped.items()):
            print(f"skipped {eid}: {reason}")
        report = fuzz(args.actions, args.seed, targets, verbose=True)
    print(
        f"\nactions {report.actions} over {len(targets)} targets ({report.episodes} episodes) in "
        f"{report.seconds:.1f} s = {report.actions / report.seconds:.0f} actions/s; rejected "
        f"{report.rejected}"
    )
    print("rules:", dict(sorted(report.kinds.items())))
    print("uncaught exceptions:", report.problems["uncaught"], "| observations outside the space:",
          report.problems["outside_space"], "| errors not naming the problem:", report.problems["unnamed"],
          "| malformed turns accepted:", report.problems["accepted"])
    print("all problem counts:", dict(report.problems) or "none")
    for category, details in report.samples.items():
        print(f"\n[{category}]", *details, sep="\n  ")
    for key, tb in report.exceptions.items():
        print(f"\n--- first {key}\n{tb}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
