"""Tests of vgym/recipes.py and configs/*.yaml: every shipped recipe parses and validates, bad keys and bad
values are named at load (through ``vgym train`` too: one line, exit 2), and a small CPU recipe runs end to
end (SFT warm start with its checkpoint, evaluation, GRPO, checkpoints, CSV metrics, exact resume that keeps
the first "before" evaluation)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from vgym.app.recipes import Recipe, load_recipe, run_recipe
from vgym.errors import InvalidConfigError

HAS_VLLM = importlib.util.find_spec("vllm") is not None

CONFIGS = sorted(
    p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml") if p.stem != "suites"
)
"""Every training recipe in configs/ (``suites.yaml`` holds the evaluation suites, not a recipe)."""


def test_configs_exist() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"quickstart_cpu", "qwen2vl_2b", "qwen25vl_3b", "qwen25vl_7b", "qwen3vl_8b",
            "qwen25vl_3b_vllm"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_recipe_parses_and_validates(path: Path) -> None:
    """Every recipe loads; one whose rollout engine is vLLM, on a machine without vLLM, fails at load with the
    install hint and otherwise validates whole (loaded with the HF engine instead)."""
    if "rollout_engine: vllm" in path.read_text() and not HAS_VLLM:
        hint = rf"^{path}: rollout_engine: vllm needs vLLM.*vgym\[vllm\]"
        with pytest.raises(InvalidConfigError, match=hint):
            load_recipe(path)
        recipe = load_recipe(path, "rollout_engine=hf", "vllm={}")
    else:
        recipe = load_recipe(path)
    assert recipe.grpo_config.steps > 0 and recipe.grpo_config.num_generations >= 2
    if recipe.model != "tiny":  # GPU recipes: a local folder, bf16 on CUDA, samples of RL after those of SFT
        assert recipe.model.startswith("/") and recipe.device == "cuda" and recipe.dtype == "bfloat16"
        assert recipe.grpo_config.data_offset >= recipe.sft_episodes


def test_the_7b_recipes_for_8_gpus_and_for_1_gpu() -> None:
    """The 8-GPU recipe shards full weights (FSDP2, no LoRA) and splits every step and minibatch into whole
    groups for 8 ranks; the 1-GPU recipe trains LoRA adapters in one process."""
    from vgym.trainers.grpo import _check_world  # the trainer's own check, at the recipe's world size

    configs = Path(__file__).resolve().parents[2] / "configs"
    eight = load_recipe(configs / "qwen25vl_7b_8gpu_fsdp2.yaml")
    assert eight.distributed_config.strategy == "fsdp2" and eight.lora is None
    _check_world(eight.grpo_config, 8)
    assert eight.sft_config is not None and eight.sft_config.batch_size % 8 == 0
    one = load_recipe(configs / "qwen25vl_7b.yaml")
    assert one.lora is not None and one.distributed == {}


def test_distributed_and_rollout_sections_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed: {strategi: ddp}\n")
    with pytest.raises(InvalidConfigError, match="unknown key distributed.'strategi'; did you mean "
                                                 "distributed.'strategy'"):
        load_recipe(bad)
    bad.write_text("distributed: {strategy: fsdp2}\nlora: {r: 8}\n")
    with pytest.raises(InvalidConfigError, match="fsdp2 does not take lora"):
        load_recipe(bad)
    bad.write_text("rollout: {paralel: ray}\n")
    with pytest.raises(InvalidConfigError, match="unknown key rollout.'paralel'; did you mean "
                                                 "rollout.'parallel'"):
        load_recipe(bad)
    bad.write_text("rollout: {parallel: spark}\n")
    with pytest.raises(InvalidConfigError, match="rollout: parallel must be 'local' or 'ray', got 'spark'"):
        load_recipe(bad)
    bad.write_text("rollout: {parallel: ray, num_workers: 4, address: auto}\n")
    settings = load_recipe(bad).rollout_settings
    assert (settings.parallel, settings.num_workers, settings.address) == ("ray", 4, "auto")


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
    assert (out / "sft" / "checkpoint-1" / "trainer_state.pt").exists()  # save_every 1 holds for SFT too
    assert (out / "sft" / "checkpoint-4" / "config.json").exists()
    assert (out / "eval_before.jsonl").exists() and (out / "eval_after.jsonl").exists()
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["1", "2"] and "rollout/reward" in rows[0]
    with (out / "sft" / "metrics.csv").open() as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3", "4"]
    # Extend to 4 steps, resuming from checkpoint-2: the CSV continues at step 3, nothing is evaluated twice,
    # and results.json keeps the first run's "before" evaluation.
    before_file = (out / "eval_before.jsonl").read_bytes()
    recipe.write_text(recipe.read_text().replace("steps: 2,", "steps: 4,"))
    resumed = run_recipe(load_recipe(recipe, out=str(out), resume=True))
    assert resumed["steps"] == 4 and resumed["before"] == result["before"]
    assert json.loads((out / "results.json").read_text())["before"] == result["before"]
    assert (out / "eval_before.jsonl").read_bytes() == before_file
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


BAD_VALUES = [
    # names: every enum a run reads, with the closest valid one when there is one
    ("grpo.loss_type=foo", "grpo.loss_type must be one of 'bnpo', 'dapo', 'dr_grpo', 'grpo', got 'foo'"),
    ("grpo.loss_type=dapoo", "grpo.loss_type must be one of .*, got 'dapoo'. Did you mean 'dapo'"),
    ("grpo.policy_loss=ppo_clp", "grpo.policy_loss must be one of .*Did you mean 'ppo_clip'"),
    ("grpo.kl_estimator=k2", "grpo.kl_estimator must be one of 'k1', 'k3', got 'k2'"),
    ("grpo.advantage=grpoo", "grpo.advantage must be one of .*Did you mean 'grpo'"),
    ("grpo.turn_credit=step", "grpo.turn_credit must be one of 'outcome', 'steps', got 'step'. Did you mean"),
    ("grpo.rollout_mode=asinc", "grpo.rollout_mode must be one of 'lockstep', 'async'.*Did you mean 'async'"),
    ("grpo.scale_rewards=group", "grpo.scale_rewards must be true or false, got 'group'"),
    ("device=gpu", "device must be one of 'cpu', 'cuda', got 'gpu'"),
    ("dtype=bfloat61", "dtype must be one of 'float32', 'bfloat16', got 'bfloat61'. Did you mean 'bfloat16'"),
    ("report_to=[csvv]", "report_to must be one of 'csv', 'tensorboard', 'wandb', 'none', got 'csvv'. Did"),
    ("report_to=[csv, csv]", "report_to must list distinct reporters"),
    ("report_to=csv", "report_to must be a list of strings, got 'csv'"),
    ("task=visual_serach", "task must be one of .*Did you mean 'visual_search'"),
    # signs and ranges
    ("grpo.learning_rate=-1e-4", "grpo.learning_rate must be > 0, got -0.0001"),
    ("grpo.learning_rate=0", "grpo.learning_rate must be > 0, got 0"),
    ("sft.learning_rate=-1e-3", "sft.learning_rate must be > 0, got -0.001"),
    ("sft.batch_size=0", "sft.batch_size must be >= 1, got 0"),
    ("sft.steps=2.5", "sft.steps must be an integer, got 2.5"),
    ("grpo.num_generations=1", "grpo.num_generations must be >= 2: GRPO needs at least 2 generations"),
    ("grpo.top_p=1.5", r"grpo.top_p must be in \(0, 1\], got 1.5"),
    ("grpo.epsilon=-0.2", r"grpo.epsilon must be in \(0, 1\), got -0.2"),
    ("grpo.beta=-0.04", "grpo.beta must be >= 0, got -0.04"),
    ("grpo.max_new_tokens=0", "grpo.max_new_tokens must be >= 1, got 0"),
    ("grpo.alarms.patience=0", "grpo.alarms: .*patience .*must be >= 1"),
    ("grpo.alarms.patiense=3", "unknown key grpo.alarms.'patiense'; did you mean grpo.alarms.'patience'"),
    ("eval_episodes=-5", "eval_episodes must be >= 0, got -5"),
    ("sft_episodes=0", "sft_episodes must be >= 1, got 0"),
    ("rollout_batch=0", "rollout_batch must be >= 1, got 0"),
    ("max_new_tokens=0", "max_new_tokens must be >= 1, got 0"),
    ("save_every=-1", "save_every must be >= 0, got -1"),
    ("sft_save_every=-1", "sft_save_every must be >= 0, got -1"),
    ("sft_teacher_skip_tools=1.5", r"sft_teacher_skip_tools must be in \[0, 1\], got 1.5"),
    ("data_seed=-1", "data_seed must be >= 0, got -1"),
    ("lora={r: 0}", "lora.r must be >= 1, got 0"),
    ("lora={r: 8, alpah: 16}", "unknown key lora.'alpah'; did you mean lora.'alpha'"),
    ("lora={dropout: 1.0}", r"lora.dropout must be in \[0, 1\), got 1.0"),
    # the env, built once at load
    ("env.max_turn=4", "unknown key env.'max_turn'; did you mean env.'max_turns'"),
    ("env.tools=[crop, flipp]", "task / task_config / env: .*flipp"),
    ("env.task_config={difficulty: 1}", "env.task_config is set by the recipe's own 'task_config'"),
    ("task_config.difficulty=7", "task / task_config / env: .*difficulty"),
    # the rollout engine
    ("rollout_engine=vlm", "rollout_engine must be one of 'hf', 'vllm', got 'vlm'. Did you mean 'vllm'?"),
    ("vllm.gpu_memory_utilisation=0.3",
     "unknown key vllm.'gpu_memory_utilisation'; did you mean vllm.'gpu_memory_utilization'"),
    ("vllm.max_model_len=8192", "vllm settings are given but rollout_engine is 'hf'"),
    ("rollout_engine=vllm", "rollout_engine: vllm needs device: cuda"),
]


@pytest.mark.parametrize("assignment, message", BAD_VALUES, ids=[a for a, _ in BAD_VALUES])
def test_bad_values_are_caught_at_load_naming_the_key(assignment: str, message: str) -> None:
    """Every bad name, sign or range of configs/quickstart_cpu.yaml raises when the recipe loads, with the
    file, the dotted key and (for names) the closest valid value; no run starts."""
    path = next(p for p in CONFIGS if p.stem == "quickstart_cpu")
    with pytest.raises(InvalidConfigError, match=f"^{path}: {message}"):
        load_recipe(path, assignment)


def test_vgym_train_prints_a_bad_recipe_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``vgym train --config bad.yaml``: one line on stderr naming the file and the key, exit status 2, no
    traceback."""
    from vgym.app.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: {loss_type: dapoo, learning_rate: 1.0e-4}\neval_episodes: 8\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {bad}: grpo.loss_type must be one of 'bnpo', 'dapo', "
                                        "'dr_grpo', 'grpo', got 'dapoo'. Did you mean 'dapo'?"]
    bad.write_text("eval_episodes: -5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(bad), "--set", "grpo.learning_rate=1e-4"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: eval_episodes must be >= 0, got -5"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("assignments, message", [
    (["vllm.gpu_memory_utilization=1.5"], r"vllm.gpu_memory_utilization must be in \(0, 1\], got 1.5"),
    (["vllm.max_model_len=0"], "vllm.max_model_len must be a positive integer or null, got 0"),
    (["lora={r: 8}"], "rollout_engine: vllm syncs full weights and does not take LoRA adapters"),
])
def test_vllm_engine_settings_are_checked_at_load(assignments: list[str], message: str) -> None:
    path = next(p for p in CONFIGS if p.stem == "qwen25vl_3b_vllm")
    with pytest.raises(InvalidConfigError, match=f"^{path}: {message}"):
        load_recipe(path, *assignments)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vgym_train_without_vllm_says_how_to_install_it_in_one_line(capsys: pytest.CaptureFixture) -> None:
    """``rollout_engine: vllm`` on a machine without vLLM: one line with the install command, exit status 2,
    before anything runs."""
    from vgym.app.cli import main

    path = next(p for p in CONFIGS if p.stem == "qwen25vl_3b_vllm")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(path)])
    assert exit_info.value.code == 2
    expected = (f"error: {path}: rollout_engine: vllm needs vLLM, which is not installed: "
                "pip install 'vgym[vllm]' on a CUDA machine")
    assert capsys.readouterr().err.strip().splitlines() == [expected]
