"""Tests of vgym/recipes.py and configs/*.yaml: every shipped recipe parses and validates, bad keys are named,
and a small CPU recipe runs end to end (SFT warm start, evaluation, GRPO, checkpoint, CSV metrics, exact
resume)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vgym.app.recipes import Recipe, load_recipe, run_recipe
from vgym.errors import InvalidConfigError

CONFIGS = sorted(
    p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml") if p.stem != "suites"
)
"""Every training recipe in configs/ (``suites.yaml`` holds the evaluation suites, not a recipe)."""


def test_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"quickstart_cpu", "qwen2vl_2b", "qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_parses_and_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.grpo_config.steps > 0 and recipe.grpo_config.num_generations >= 2
    if recipe.model != "tiny":  # GPU recipes: a local folder, bf16 on CUDA, samples of RL after those of SFT
        assert recipe.model.startswith("/") and recipe.device == "cuda" and recipe.dtype == "bfloat16"
        assert recipe.grpo_config.data_offset >= recipe.sft_episodes


def test_unknown_and_invalid_keys_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: tiny\n")
    with pytest.raises(InvalidConfigError, match="unknown key 'modle'; did you mean 'model'"):
        load_recipe(bad)
    bad.write_text("grpo: {num_generations: 1}\n")
    with pytest.raises(InvalidConfigError, match="at least 2 generations"):
        load_recipe(bad)
    bad.write_text("grpo: {learning_rate: 1e-6x}\n")
    with pytest.raises(InvalidConfigError, match="grpo.learning_rate must be a number, got '1e-6x'"):
        load_recipe(bad)
    bad.write_text("model: /nowhere/Qwen2-VL\n")
    with pytest.raises(InvalidConfigError, match="not a local folder"):
        run_recipe(load_recipe(bad, out=str(tmp_path / "run")))


def test_a_small_recipe_runs_and_resumes(tmp_path: Path) -> None:
    recipe = tmp_path / "small.yaml"
    recipe.write_text(
        "model: tiny\n"
        "task: visual_search\n"
        "sft: {steps: 4, batch_size: 8, learning_rate: 1.0e-3}\n"
        "sft_episodes: 16\n"
        "grpo: "
        "{num_generations: 2, prompts_per_step: 2, max_new_tokens: 8, steps: 2, learning_rate: 1.0e-4}\n"
        "eval_episodes: 4\n"
        "max_new_tokens: 8\n"
        "report_to: [csv]\n"
        "save_every: 1\n"
    )
    out = tmp_path / "run"
    result = run_recipe(load_recipe(recipe, out=str(out)))
    assert result["steps"] == 2 and set(result) >= {"before", "after", "wall_seconds", "alarms"}
    assert json.loads((out / "results.json").read_text())["steps"] == 2
    assert (out / "checkpoint-1" / "grpo_state.pt").exists() and (
        out / "checkpoint-2" / "grpo_state.pt"
    ).exists()
    assert (out / "eval_before.jsonl").exists() and (out / "eval_after.jsonl").exists()
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["1", "2"] and "rollout/reward" in rows[0]
    # Extend to 4 steps, resuming from checkpoint-2: the CSV continues at step 3, nothing is evaluated twice.
    recipe.write_text(recipe.read_text().replace("steps: 2,", "steps: 4,"))
    result = run_recipe(load_recipe(recipe, out=str(out), resume=True))
    assert result["steps"] == 4 and "before" not in result
    with (out / "metrics.csv").open() as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3", "4"]
    # Another GRPO setting than the checkpoint's is refused, naming the field.
    recipe.write_text(recipe.read_text().replace("learning_rate: 1.0e-4", "learning_rate: 2.0e-4"))
    with pytest.raises(InvalidConfigError, match=r"differs from this run's in \['learning_rate'\]"):
        run_recipe(load_recipe(recipe, out=str(out), resume=True))


def test_exponent_notation_is_a_number(tmp_path: Path) -> None:
    """PyYAML reads ``1e-6`` (no dot) as a string; recipes and overrides read it as the float it means."""
    path = tmp_path / "r.yaml"
    path.write_text("grpo: {learning_rate: 1e-6, epsilon: 2E-1}\nsft: {learning_rate: 5e-5}\n")
    recipe = load_recipe(path, "grpo.beta=1e-3")
    assert recipe.grpo_config.learning_rate == 1e-6 and recipe.grpo_config.epsilon == 0.2
    assert recipe.grpo_config.beta == 1e-3 and recipe.sft == {"learning_rate": 5e-5}


def test_recipe_defaults_are_valid() -> None:
    assert Recipe().grpo_config.num_generations == 8


def test_dotted_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("grpo: {num_generations: 4, steps: 3}\ntask_config: null\n")
    loaded = load_recipe(
        recipe,
        "grpo.learning_rate=1e-4",
        "grpo.dynamic_sampling=true",
        "task_config.difficulty=2",
        "eval_episodes=7",
    )
    cfg = loaded.grpo_config
    assert (cfg.num_generations, cfg.steps, cfg.learning_rate, cfg.dynamic_sampling) == (4, 3, 1e-4, True)
    assert loaded.task_config == {"difficulty": 2} and loaded.eval_episodes == 7
    with pytest.raises(InvalidConfigError, match="an override is key=value"):
        load_recipe(recipe, "grpo.learning_rate")
    with pytest.raises(InvalidConfigError, match="'eval_episodes' is 7, not a mapping"):
        load_recipe(recipe, "eval_episodes=7", "eval_episodes.x=1")
    with pytest.raises(InvalidConfigError, match="Did you mean|did you mean"):
        load_recipe(recipe, "grpo.learnin_rate=1")
