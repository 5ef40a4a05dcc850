"""Checkpoints of ``vgym train`` end to end: every ``checkpoint-<step>`` (GRPO and SFT, full and LoRA) is a
model folder that ``vgym eval --policy hf:<folder>`` evaluates; SFT resumes exactly from its newest
checkpoint after an interrupt (the next step's loss and the final weights equal an uninterrupted run's); a
Ctrl-C (a real SIGINT) ends the step under way and saves it, a second one stops at once; a missing or
incomplete ``hf:`` folder is named, exit 2."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from vgym.app.cli import main
from vgym.app.recipes import load_recipe, run_recipe
from vgym.engine.tiny import load_vlm
from vgym.trainers.reporters import read_metrics_csv

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart_cpu.yaml"
# configs/quickstart_cpu.yaml cut to seconds: 8 oracle episodes, 2 SFT steps, 2 GRPO steps of 2 x 2 episodes
# at 8 tokens a turn, 2 evaluation episodes, a checkpoint every step (the recipe: 768 / 1000 / 20 of 8 x 8).
SHORT = ["sft_episodes=8", "sft.steps=2", "sft.batch_size=4", "grpo.num_generations=2",
         "grpo.prompts_per_step=2", "grpo.max_new_tokens=8", "grpo.steps=2", "eval_episodes=2",
         "max_new_tokens=8", "rollout_batch=8", "save_every=1", "report_to=[csv]"]


def _vgym(*args: str) -> int:
    """Run the ``vgym`` console script in-process; its exit status."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_vgym_eval_runs_on_fresh_checkpoints_of_vgym_train(tmp_path: Path, lora: bool) -> None:
    """``vgym train`` (the CPU quickstart recipe, shortened), then ``vgym eval --policy hf:<checkpoint>`` on a
    GRPO and an SFT checkpoint: both succeed and write report.json. With LoRA the checkpoints hold adapters,
    the processor and the absolute path of the base, not the base's weights."""
    if lora:
        pytest.importorskip("peft")
    run = tmp_path / "run"
    sets = [*SHORT, *(["lora={r: 4, alpha: 8}"] if lora else [])]
    assert _vgym("train", "--config", str(QUICKSTART), "--out", str(run),
                 *[arg for s in sets for arg in ("--set", s)]) == 0
    for checkpoint in (run / "checkpoint-1", run / "sft" / "checkpoint-2"):
        names = {p.name for p in checkpoint.iterdir()}
        weights = {"adapter_config.json", "adapter_model.safetensors"} if lora else {"config.json",
                                                                                       "model.safetensors"}
        assert weights | {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
        assert ("model.safetensors" in names) is not lora
        out = tmp_path / f"eval-{checkpoint.parent.name}-{checkpoint.name}"
        assert _vgym("eval", "--policy", f"hf:{checkpoint}", "--suite", "visual_search", "--n", "4",
                     "--max-new-tokens", "16", "--out", str(out)) == 0
        assert (out / "report.json").is_file()


def _recipe(tmp_path: Path, tiny_dir: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    # SFT 4 steps then 2 GRPO steps; GRPO's entropy bonus and unmasked truncations make every step move the
    # weights, so equal checkpoints are evidence.
    path.write_text(
        f"model: {tiny_dir}\n"
        "sft: {steps: 4, batch_size: 4, learning_rate: 2.0e-3, warmup_steps: 2}\n"
        "sft_episodes: 8\n"
        "grpo: {num_generations: 2, prompts_per_step: 2, max_new_tokens: 8, steps: 2,\n"
        "       learning_rate: 1.0e-3, entropy_coef: 0.01, mask_truncated_completions: false}\n"
        "eval_episodes: 0\n"
        "rollout_batch: 8\n"
        "report_to: [csv]\n"
    )
    return path


def _interrupt_at(stage: str, step: int):  # type: ignore[no-untyped-def]
    """A progress callback that raises KeyboardInterrupt once ``stage`` reports ``step`` done."""

    def progress(name: str, done: int, total: int) -> None:
        if name == stage and done == step:
            raise KeyboardInterrupt

    return progress


def _same_weights(a: Path, b: Path) -> None:
    model_a, model_b = load_vlm(a)[0], load_vlm(b)[0]
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_interrupted_sft_and_grpo_resume_exactly(tmp_path: Path, tiny_dir: Path) -> None:
    """Straight run versus one interrupted after SFT step 2, resumed, interrupted after GRPO step 1, resumed:
    every step's loss (SFT and GRPO) and the final SFT and GRPO weights are equal; each interrupt left the
    checkpoint of its step and nothing after it."""
    recipe = _recipe(tmp_path, tiny_dir)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    run_recipe(load_recipe(recipe, out=str(straight)))

    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe, out=str(cut)), _interrupt_at("SFT", 2))
    assert [p.name for p in (cut / "sft").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not list(cut.glob("checkpoint-*"))
    load_vlm(cut / "sft" / "checkpoint-2")  # a model folder already
    reported: list[tuple[str, int]] = []
    stop = _interrupt_at("GRPO", 1)

    def progress(name: str, done: int, total: int) -> None:
        reported.append((name, done))
        stop(name, done, total)

    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe, out=str(cut), resume=True), progress)
    assert [done for name, done in reported if name == "SFT"] == [3, 4]  # continued, not started over
    assert [p.name for p in cut.glob("checkpoint-*")] == ["checkpoint-1"]
    reported.clear()
    result = run_recipe(load_recipe(recipe, out=str(cut), resume=True), lambda *a: reported.append(a[:2]))
    assert result["steps"] == 2
    assert [done for name, done in reported if name in ("SFT", "GRPO")] == [2]  # GRPO step 2 only

    for name in ("sft/metrics.csv", "metrics.csv"):
        expected = read_metrics_csv(straight / name)
        got = read_metrics_csv(cut / name)
        assert [r["step"] for r in got] == [r["step"] for r in expected]
        loss = "loss/sft" if name.startswith("sft") else "loss/total"
        assert [r[loss] for r in got] == [r[loss] for r in expected], name  # the resumed steps' losses too
    _same_weights(straight / "sft" / "checkpoint-4", cut / "sft" / "checkpoint-4")
    _same_weights(straight / "checkpoint-2", cut / "checkpoint-2")


def test_ctrl_c_finishes_the_step_and_saves_a_second_stops_at_once(tmp_path: Path, tiny_dir: Path) -> None:
    """A real SIGINT during SFT step 1's callback: the step is whole, so sft/checkpoint-1 is saved and the
    interrupt goes on; the handler in place before is back afterwards. Two SIGINTs: the second interrupts
    at once and nothing is saved."""
    recipe = _recipe(tmp_path, tiny_dir)
    handler = signal.getsignal(signal.SIGINT)

    def sigint(times: int):  # type: ignore[no-untyped-def]
        def progress(name: str, done: int, total: int) -> None:
            if name == "SFT" and done == 1:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)

        return progress

    once, twice = tmp_path / "once", tmp_path / "twice"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe, out=str(once)), sigint(1))
    assert [p.name for p in (once / "sft").glob("checkpoint-*")] == ["checkpoint-1"]
    assert signal.getsignal(signal.SIGINT) is handler
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe, out=str(twice)), sigint(2))
    assert not list((twice / "sft").glob("checkpoint-*"))
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_bad_hf_folder_is_named_without_a_traceback(tmp_path: Path, tiny_dir: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """``vgym eval --policy hf:DIR`` on a folder that is missing, or lacks its tokenizer: exit 2 and a message
    naming the folder and what is missing, never a transformers traceback pointing at the Hub."""
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    (partial / "tokenizer.json").unlink()
    for folder, what in ((tmp_path / "missing", "does not exist"), (partial, "is incomplete: no tokenizer")):
        code = _vgym("eval", "--policy", f"hf:{folder}", "--suite", "visual_search", "--n", "2", "--out",
                     str(tmp_path / f"eval-{folder.name}"))
        captured = capsys.readouterr()
        text = " ".join((captured.out + captured.err).split())  # the console may wrap it
        assert code == 2, text
        assert f"model folder {folder} {what}" in text
        assert "huggingface.co" not in text and "Traceback" not in text
