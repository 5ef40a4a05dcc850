"""Tests of vgym.eval.evaluate: the pass@k estimator, suites, the oracle and random baselines, ablations and
resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vgym.errors import InvalidConfigError, UnknownNameError
from vgym.eval.evaluate import EvalConfig, load_suites, run_eval
from vgym.eval.stats import pass_at_k
from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.policies.spec import PolicyMaker
from vgym.protocol import HermesProtocol
from vgym.task import TASKS

SUITES = [name for name in load_suites() if name != "all"]


# --- pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)
# ----------------------------------------------------------


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # 1 - C(3,1)/C(5,1) = 1 - 3/5
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0  # no correct attempt: no subset passes
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k = 2: every pair holds a correct attempt
    assert pass_at_k(4, 1, 4) == 1.0  # k = n: pass@n is "any correct"
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(n, c, k)


# --- suites and config
# -------------------------------------------------------------------------------------------


def test_suites_cover_the_issue_tasks_and_all_is_their_union() -> None:
    suites = load_suites()
    tasks = {name: {e.task for e in entries} for name, entries in suites.items()}
    assert tasks["spatial"] == {"spatial_2d", "depth_3d", "box_grounding", "counting", "multi_tool"}
    assert tasks["video"] == {"video_grounding", "video_qa"}
    assert tasks["visual"] == {"visual_search", "chart_qa", "geometry"}
    assert tasks["all"] == tasks["spatial"] | tasks["video"] | tasks["visual"]
    for entries in suites.values():
        for entry in entries:
            TASKS.get(entry.task)  # every name is registered


def test_config_entries_apply_overrides_only_where_the_field_exists(tmp_path: Path) -> None:
    cfg = EvalConfig(policy="oracle", suite=("video_qa", "counting"), difficulties=(2,),
                     task_config={"clip_dir": str(tmp_path)})
    entries = {e.task: e for e in cfg.entries()}
    assert entries["video_qa"].task_config == {"clip_dir": str(tmp_path)}
    assert entries["counting"].task_config == {}  # counting has no clip_dir
    assert entries["counting"].difficulties == (2,)
    with pytest.raises(UnknownNameError):
        EvalConfig(policy="oracle", suite=("no_such_task",)).entries()
    with pytest.raises(InvalidConfigError, match="tools must be"):
        EvalConfig(policy="oracle", tools="sometimes")


# --- baselines
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_oracle_scores_one_on_every_task_of_each_suite(suite: str, tmp_path: Path) -> None:
    cfg = EvalConfig(policy="oracle", suite=(suite,), n=4, k=1, difficulties=(0, 2),
                     task_config={"clip_dir": str(tmp_path / "clips")})
    report = run_eval(cfg, tmp_path / "run")
    assert {g["task"] for g in report["groups"]} == {e.task for e in load_suites()[suite]}
    for group in report["groups"]:
        m = group["metrics"]
        assert m["episodes"] == 4 and m["attempts"] == 4
        assert m["avg_at_k"] == pytest.approx(1.0), group["task"]
        assert m["pass_at_k"] == 1.0 and m["format_ok"] == 1.0
        assert m["valid_call_rate"] in (None, 1.0)
        if TASKS.get(group["task"]).necessary_tools:
            assert m["right_tool_rate"] == 1.0  # the oracle calls a necessary tool on every episode
    assert report["overall"]["avg_at_k"] == pytest.approx(1.0)


def test_random_policy_matches_the_answer_prior(tmp_path: Path) -> None:
    # spatial_2d: four lettered options, one right, so a uniform guess is right 1/4 of the time.
    report = run_eval(
        EvalConfig(policy="random", suite=("spatial_2d",), n=60, k=1, difficulties=(0,)), tmp_path
    )
    (group,) = report["groups"]
    chance = TASKS.get("spatial_2d")().chance_accuracy()
    assert chance == 0.25
    lo, hi = group["metrics"]["avg_at_k_ci"]
    assert lo <= chance <= hi
    assert group["metrics"]["calls_per_episode"] == 0.0  # the baseline never calls a tool
    # ... and it is a real guess: its answers are not all the same letter.
    answers = {json.loads(line)["answer"] for line in (tmp_path / "episodes.jsonl").read_text().splitlines()}
    assert len(answers) == 4


def test_tools_off_ablation_offers_no_tools(tmp_path: Path) -> None:
    base = dict(policy="oracle", suite=("visual_search",), n=10, k=1, difficulties=(0,))
    on = run_eval(EvalConfig(**base), tmp_path / "on")
    off = run_eval(EvalConfig(**base, tools="off"), tmp_path / "off")
    assert on["overall"]["calls_per_episode"] == 1.0 and on["overall"]["right_tool_rate"] == 1.0
    assert off["overall"]["calls_per_episode"] == 0.0
    assert off["overall"]["turns"] == 1.0  # the oracle answers at once when no tool is offered
    assert off["overall"]["right_tool_rate"] is None  # no tools offered: no necessity to measure


class _ReadThenAnswer:
    """Calls ``ocr`` on image 0 (turn 0), then answers "0": a policy whose tool choice the oracle does not
    make."""

    def act(self, batch: list[PolicyInput]) -> list[PolicyOutput]:
        p = HermesProtocol()
        return [
            PolicyOutput(
                p.format_tool_call("ocr", {"image_index": 0}) if item.turn == 0 else p.format_answer("0")
            )
            for item in batch
        ]


def test_oracle_tools_ablation_switches_every_tool_to_its_oracle_backend(tmp_path: Path) -> None:
    # chart_qa's ocr defaults to rapidocr and has an oracle backend (the chart's own texts).
    base = dict(policy="scripted", suite=("chart_qa",), n=3, k=1, difficulties=(0,))
    used = {}
    for tools in ("default", "oracle"):
        run_eval(
            EvalConfig(**base, tools=tools),
            tmp_path / tools,
            policy=PolicyMaker(lambda seed: _ReadThenAnswer()),
        )
        lines = [json.loads(line) for line in (tmp_path / tools / "episodes.jsonl").read_text().splitlines()]
        used[tools] = {b for r in lines for b in r["backends"]}
        assert all(r["calls"] == 1 for r in lines)
    assert used == {"default": {"rapidocr"}, "oracle": {"oracle"}}


def test_k_attempts_use_different_env_seeds_and_pass_at_k_counts_any_correct(tmp_path: Path) -> None:
    report = run_eval(
        EvalConfig(policy="random", suite=("visual_search",), n=20, k=3, difficulties=(0,)), tmp_path
    )
    lines = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 60
    assert len({(r["index"], r["env_seed"]) for r in lines}) == 60
    m = report["overall"]
    by_index: dict[int, list[bool]] = {}
    for r in lines:
        by_index.setdefault(r["index"], []).append(r["correct"])
    expected = np.mean([pass_at_k(3, sum(v), 3) for v in by_index.values()])
    assert m["pass_at_k"] == pytest.approx(expected)
    assert m["pass_at_1"] == pytest.approx(np.mean([r["correct"] for r in lines]))
    assert m["pass_at_k"] >= m["pass_at_1"]


# --- resume
# ------------------------------------------------------------------------------------------------------


def test_resume_after_a_kill_scores_each_episode_once_and_reproduces_the_report(tmp_path: Path) -> None:
    cfg = EvalConfig(policy="random", suite=("visual_search", "counting"), n=6, k=2, difficulties=(1,))
    full = run_eval(cfg, tmp_path / "full")
    run = tmp_path / "killed"
    run_eval(cfg, run)
    path = run / "episodes.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # 3 whole lines and a torn one
    resumed = run_eval(cfg, run)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [(r["task"], r["difficulty"], r["index"], r["attempt"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * 6 * 2  # each (task, index, attempt) exactly once
    for task in ("visual_search", "counting"):
        for attempt in range(2):
            assert sorted(i for t, _, i, a in keys if t == task and a == attempt) == list(range(6))
    assert records[:3] == [json.loads(line) for line in lines[:3]]  # old lines kept as they were
    assert resumed == full
    again = run_eval(cfg, run)  # a finished run re-run adds nothing
    assert len(path.read_text().splitlines()) == 24 and again == full


def test_resume_refuses_another_config_but_allows_more_episodes(tmp_path: Path) -> None:
    cfg = EvalConfig(policy="oracle", suite=("counting",), n=2, k=1, difficulties=(0,))
    run_eval(cfg, tmp_path)
    with pytest.raises(InvalidConfigError, match="policy"):
        run_eval(EvalConfig(policy="random", suite=("counting",), n=2, k=1, difficulties=(0,)), tmp_path)
    more = run_eval(EvalConfig(policy="oracle", suite=("counting",), n=3, k=1, difficulties=(0,)), tmp_path)
    assert more["overall"]["episodes"] == 3
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 3


def test_failures_are_saved_for_the_viewer(tmp_path: Path) -> None:
    from vgym.eval.viewer import build_view

    report = run_eval(
        EvalConfig(policy="random", suite=("visual_search",), n=6, k=1, difficulties=(0,)), tmp_path
    )
    (group,) = report["groups"]
    records = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["accuracy"] < 1.0]
    assert failed and len(group["failures"]) == len(failed)
    for r in records:
        assert (r["trajectory"] is not None) == (r["accuracy"] < 1.0)
    for r in failed:
        saved = json.loads((tmp_path / r["trajectory"]).read_text())
        assert saved["sample_id"] == r["sample_id"] and saved["answer"] == r["answer"]
    page = build_view(tmp_path).read_text()
    assert all(r["sample_id"] in page for r in failed)


def test_hf_policy_smoke(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(policy=f"hf:{tiny_dir}", suite=("visual_search",), n=2, k=1, difficulties=(0,),
                     max_new_tokens=8, device="cpu")
    report = run_eval(cfg, tmp_path)
    m = report["overall"]
    assert m["attempts"] == 2
    assert m["tokens"] is not None and m["policy_tokens"] is not None and 0 < m["policy_tokens"] < m["tokens"]
    assert 0.0 <= m["avg_at_k"] <= 1.0


# --- starting a run: names, configs, the folder
# ----------------------------------------------------------------------------------


def _dataset(root: Path, records: int) -> Path:
    """A vgym JSONL dataset of ``records`` test records (one noise image each, exact answers)."""
    import cv2
    from dataset_helpers import noise, record_line, write_jsonl

    root.mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), noise(32, 40))
    write_jsonl(root / "data.jsonl", [record_line(id=f"r{i}", answer=f"gold{i}") for i in range(records)])
    return root


@pytest.mark.parametrize(("name", "kind", "suggested"), [
    ("spatail", "suite", "spatial"),  # a misspelt suite suggests the suite, not one of its tasks
    ("spatial2d", "task", "spatial_2d"),
    ("visul", "suite", "visual"),
    ("countng", "task", "counting"),
])
def test_an_unknown_suite_name_suggests_the_closest_suite_or_task(name: str, kind: str,
                                                                  suggested: str) -> None:
    with pytest.raises(UnknownNameError, match=rf"Did you mean the {kind} '{suggested}'\?"):
        EvalConfig(policy="oracle", suite=(name,)).entries()


def test_a_failed_start_leaves_the_folder_free_for_the_corrected_command(tmp_path: Path) -> None:
    """A typo in the suite, a missing hf: folder or a missing dataset root writes nothing that would make the
    corrected command refuse the folder."""
    out = tmp_path / "run"
    good = dict(policy="oracle", suite=("counting",), n=2, difficulties=(0,))
    with pytest.raises(UnknownNameError, match="spatial"):
        run_eval(EvalConfig(policy="oracle", suite=("spatail",), n=2), out)
    with pytest.raises(InvalidConfigError, match="missing does not exist"):
        run_eval(EvalConfig(**{**good, "policy": f"hf:{tmp_path / 'missing'}"}), out)
    with pytest.raises(InvalidConfigError, match="is not a folder"):
        run_eval(EvalConfig(policy="oracle", suite=("vgym_jsonl",), n=2,
                            task_config={"root": str(tmp_path / "nowhere")}), out)
    assert not (out / "config.json").exists()
    report = run_eval(EvalConfig(**good), out)
    assert report["overall"]["episodes"] == 2
    # a config.json without a scored episode (as an older vgym left after a failed start) is taken over too
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"policy": "random", "suite": ["spatail"]}))
    assert run_eval(EvalConfig(**good), tmp_path / "old")["config"]["policy"] == "oracle"


def test_a_task_config_key_the_task_lacks_is_an_error_naming_the_closest_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match=r"counting has no config field 'difficuly'\. Did you mean "
                                                 r"'difficulty'\?"):
        EvalConfig(policy="oracle", suite=("counting",), task_config={"difficuly": 1}).entries()
    with pytest.raises(InvalidConfigError, match="no config field 'clip_dir'"):  # counting has no clips
        EvalConfig(policy="oracle", suite=("counting",), task_config={"clip_dir": str(tmp_path)}).entries()
    # several tasks: a misspelling of a field of one of them is an error too
    with pytest.raises(InvalidConfigError, match="Did you mean 'clip_dir'"):
        EvalConfig(policy="oracle", suite=("video",), task_config={"clipdir": str(tmp_path)}).entries()
    # a difficulty in the task config is the level of the tasks that have one
    (entry,) = EvalConfig(policy="oracle", suite=("counting",), task_config={"difficulty": 2}).entries()
    assert entry.difficulties == (2,) and entry.task_config == {}
    with pytest.raises(InvalidConfigError, match="difficulty once"):
        EvalConfig(policy="oracle", suite=("counting",), difficulties=(1,),
                   task_config={"difficulty": 2}).entries()


class _InfoThenAnswer:
    """Calls ``image_info`` (turn 0), then answers "0": a call only an env offering that tool honours."""

    def act(self, batch: list[PolicyInput]) -> list[PolicyOutput]:
        p = HermesProtocol()
        return [PolicyOutput(p.format_tool_call("image_info", {}) if item.turn == 0 else p.format_answer("0"))
                for item in batch]


def test_tools_by_name_replace_the_tasks_tools(tmp_path: Path) -> None:
    # visual_search offers crop; image_info only when named
    maker = PolicyMaker(lambda seed: _InfoThenAnswer())
    base = dict(policy="scripted", suite=("visual_search",), n=2, difficulties=(0,))
    named = EvalConfig(**base, tools=["image_info", "crop"])
    assert named.tools == ("image_info", "crop") and named.env_tools == ("image_info", "crop")
    ok = {}
    for name, cfg in (("default", EvalConfig(**base)), ("named", named)):
        run_eval(cfg, tmp_path / name, policy=maker)
        lines = [json.loads(line) for line in (tmp_path / name / "episodes.jsonl").read_text().splitlines()]
        ok[name] = [(r["calls"], r["ok_calls"]) for r in lines]
    assert ok == {"default": [(1, 0), (1, 0)], "named": [(1, 1), (1, 1)]}
    with pytest.raises(UnknownNameError, match="Did you mean 'crop'"):
        EvalConfig(policy="oracle", tools=("crp",))
    with pytest.raises(InvalidConfigError, match="tools='off'"):
        EvalConfig(policy="oracle", tools=())


@pytest.mark.parametrize("mode", ["all", "none"])
def test_save_trajectories_all_or_none(mode: str, tmp_path: Path) -> None:
    run_eval(EvalConfig(policy="random", suite=("visual_search",), n=4, difficulties=(0,),
                        save_trajectories=mode), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    if mode == "none":
        assert all(r["trajectory"] is None for r in records) and not (tmp_path / "failures").exists()
        return
    assert all(r["trajectory"].startswith("trajectories/") for r in records)  # every episode, passed or not
    for r in records:
        saved = json.loads((tmp_path / r["trajectory"]).read_text())
        assert saved["sample_id"] == r["sample_id"] and saved["gold_answer"] == r["gold"] is not None
        assert saved["question"] == r["question"] is not None


def test_episode_lines_and_failures_carry_the_question_and_the_gold_answer(tmp_path: Path) -> None:
    report = run_eval(EvalConfig(policy="random", suite=("visual_search",), n=6, difficulties=(0,)), tmp_path)
    task = TASKS.get("visual_search")({"difficulty": 0})
    for line in (tmp_path / "episodes.jsonl").read_text().splitlines():
        r = json.loads(line)
        sample = task.sample("test", r["index"], 0)
        assert (r["question"], r["gold"]) == (sample.question, sample.answer)
    (group,) = report["groups"]
    assert group["failures"] and all(f["gold"] and f["question"] and f["answer"] != f["gold"]
                                     for f in group["failures"])


def test_a_dataset_smaller_than_n_uses_each_record_once_and_says_so(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data", 3)
    cfg = EvalConfig(policy="oracle", suite=("vgym_jsonl",), n=10, task_config={"root": str(root)})
    report = run_eval(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == [0, 1, 2]  # no record played twice
    assert sorted(r["gold"] for r in lines) == ["gold0", "gold1", "gold2"]
    (group,) = report["groups"]
    assert group["split_records"] == 3 and group["metrics"]["episodes"] == 3
    assert report["overall"]["avg_at_k_ci"] is None  # 3 episodes: too few for an interval
    assert any("holds 3 records, fewer than n=10" in note for note in report["notes"])
    assert report["incomplete_episodes"] == 0  # not a stopped run
