"""Tests of trainers/grpo.py on the tiny VLM: every parameter moves, masking, dynamic sampling, OTC shaping,
turn ids, config checks, exact resume, any policy with a weight-sync hook, the shared-prompt forward only
where the fast paths allow it, and that GRPO raises the reward on its training distribution with a fixed
seed."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from vgym.app.pipeline import collect
from vgym.engine import fast_paths as fp
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, UnknownNameError
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.tasks.visual_search import VisualSearchTask
from vgym.trainers import grpo as grpo_module
from vgym.trainers.grpo import GRPOTrainer, hf_policy, otc_tool_factor, step_rewards, turn_ids_from_mask
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.objective import LossSettings
from vgym.trainers.sft import SFTConfig, SFTTrainer, collate

search_env = functools.partial(VisualToolEnv, "visual_search")
# Small groups and short turns keep a step ~1 s on the tiny model (real runs: 8 x 8 or more, 256+ tokens).
SMALL = {"num_generations": 4, "prompts_per_step": 2, "max_new_tokens": 16, "steps": 2}


@pytest.fixture(scope="module")
def sft_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM behaviour-cloned on 128 oracle episodes for 60 steps: it calls crop and answers, sometimes
    correctly, so sampled groups have reward variance (a random model never answers)."""
    from vgym.engine.tiny import load_vlm

    model, processor = load_vlm(tiny_dir)
    data = collect(search_env, OraclePolicy(), ChatEncoder(processor), "train", 128, batch_size=32,
                   progress=lambda *a: None, stage="")
    SFTTrainer(model, data, SFTConfig(steps=60, batch_size=16, learning_rate=1e-3, warmup_steps=5),
               pad_id=processor.tokenizer.pad_token_id).train()
    out = tmp_path_factory.mktemp("sft") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _trainer(model, processor, env_fn, cfg: GRPOConfig) -> GRPOTrainer:  # type: ignore[no-untyped-def]
    """A trainer whose rollouts the model itself plays (:func:`hf_policy`)."""
    return GRPOTrainer(model, processor, hf_policy(model, processor, cfg), env_fn, cfg)


def _load(path: Path):  # type: ignore[no-untyped-def]
    from vgym.engine.tiny import load_vlm

    return load_vlm(path)


def test_every_trainable_parameter_changes(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    # A random model never answers, so every episode is truncated and its advantage is 0; keeping truncated
    # episodes and an entropy bonus gives every parameter a gradient (the bonus flows through the image
    # tokens).
    cfg = GRPOConfig(**SMALL, learning_rate=1e-3, entropy_coef=0.01, mask_truncated_completions=False)
    trainer = _trainer(model, processor, search_env, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = trainer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p)]
    assert not unchanged
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # old log-probs from the rollout match
    assert metrics["rollout/episodes"] == 8 and metrics["actor/entropy"] > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_truncated_episodes_are_masked_out(tiny, loss_type: str) -> None:  # type: ignore[no-untyped-def]
    """All episodes truncated and masked: the step trains on nothing and says so — for dapo too, whose token
    normaliser is then 0 (it raised before; found on the GPU with a random 2B model, which never ends a
    turn)."""
    model, processor = tiny
    cfg = GRPOConfig(**SMALL, learning_rate=1e-3, loss_type=loss_type, mini_batch_size=4)
    trainer = _trainer(model, processor, search_env, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = trainer.step()
    assert metrics["rollout/truncated_rate"] == 1.0  # the random model never answers within 4 turns
    assert metrics["optim/skipped_minibatches"] == 2 and "optim/grad_norm" not in metrics
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_dynamic_sampling_refills_and_gives_up(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    cfg = GRPOConfig(**SMALL, dynamic_sampling=True, max_resample_rounds=2)
    trainer = _trainer(model, processor, search_env, cfg)
    metrics = trainer.step()
    # Every group has reward 0 for all members: all dropped, two refills tried, nothing trained, data moved
    # on.
    assert metrics["rollout/kept_episodes"] == 0 and metrics["rollout/resample_rounds"] == 2
    assert metrics["rollout/episodes"] == 8 * 3 and trainer.data_position == 2 * 3
    assert trainer.step_count == 1


def test_otc_factor_and_turn_helpers() -> None:
    assert otc_tool_factor(0, 2.0) == 1.0  # cos(0)
    assert otc_tool_factor(1, 2.0) == pytest.approx(math.cos(math.pi / 4))  # m=1, c=2: cos(pi/4)
    assert otc_tool_factor(3, 2.0) < otc_tool_factor(1, 2.0)
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0], [1, 0, 1, 1, 1, 0, 0]])
    assert turn_ids_from_mask(mask).tolist() == [[0, 1, 1, 0, 0, 2, 0], [1, 0, 2, 2, 2, 0, 0]]


def test_step_rewards_read_tool_outcomes(sft_dir: Path) -> None:
    model, processor = _load(sft_dir)
    encoder = ChatEncoder(processor)
    good = collect(search_env, OraclePolicy(), encoder, "train", 1, batch_size=1, progress=lambda *a: None,
                   stage="")
    bad_env = functools.partial(VisualToolEnv, "visual_search", tools=("crop",), max_turns=2)

    class BadCrop:
        def act(self, batch):  # type: ignore[no-untyped-def]
            from vgym.policies.base import PolicyOutput

            text = '<tool_call>{"name": "crop", "arguments": {"box": [5, 5, 1, 1]}}</tool_call>'
            return [PolicyOutput(text=text if item.turn == 0 else "<answer>vertical</answer>")
                    for item in batch]

    bad = collect(bad_env, BadCrop(), encoder, "train", 1, batch_size=1, progress=lambda *a: None, stage="")
    assert step_rewards(good + bad, 4).tolist() == [[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("change, message", [
    ({"num_generations": 1}, "at least 2 generations"),
    ({"advantage": "grpoo"}, "Did you mean"),
    ({"turn_credit": "tokens"}, "turn_credit must be"),
    ({"temperature": 0.0}, "temperature must be positive"),
    ({"otc_weight": 2.0}, "otc_weight"),
    ({"policy_loss": "ppo_clp"}, "Did you mean 'ppo_clip'"),
    ({"loss_type": "dapoo"}, "Did you mean 'dapo'"),
    ({"kl_estimator": "k2"}, "kl_estimator must be one of 'k1', 'k3', got 'k2'"),
    ({"loss_type": "foo"}, "^loss_type must be one of 'bnpo', 'dapo', 'dr_grpo', 'grpo', got 'foo'$"),
    ({"rollout_mode": "asinc"}, "^rollout_mode must be one of 'lockstep', 'async', got 'asinc'. Did you"),
    ({"scale_rewards": "maybe"}, "^scale_rewards must be one of True, False, got 'maybe'"),
    ({"learning_rate": -1e-4}, r"^learning_rate must be > 0, got -0.0001$"),
    ({"learning_rate": 0.0}, "^learning_rate must be > 0"),
    ({"top_p": 0.0}, r"^top_p must be in \(0, 1\]"),
    ({"epsilon": 1.5}, r"^epsilon must be in \(0, 1\)"),
    ({"epsilon_high": -0.1}, "^epsilon_high must be > 0"),
    ({"policy_loss": "dual_clip", "clip_ratio_c": 0.5}, "^clip_ratio_c must be > 1"),
    ({"beta": -0.04}, "^beta must be >= 0"),
    ({"max_new_tokens": 0}, "^max_new_tokens must be >= 1"),
    ({"mini_batch_size": 0}, "^mini_batch_size must be >= 1"),
    ({"steps": -1}, "^steps must be >= 0"),
    ({"data_offset": -5}, "^data_offset must be >= 0"),
    ({"prompts_per_step": "4"}, "^prompts_per_step must be a number, got '4'"),
])
def test_config_checks(change: dict, message: str) -> None:
    with pytest.raises((InvalidConfigError, UnknownNameError), match=message):
        GRPOConfig(**change)


@pytest.mark.parametrize("variant", [
    {},
    {"policy_loss": "gspo", "loss_type": "dapo", "advantage": "rloo"},
    {"policy_loss": "dual_clip", "loss_type": "dr_grpo", "advantage": "dgrpo", "scale_rewards": False},
    {"beta": 0.04, "kl_estimator": "k3", "llds_coef": 0.1, "turn_credit": "steps", "otc_weight": 0.5,
     "epsilon_high": 0.28, "num_iterations": 2, "mini_batch_size": 4, "gradient_accumulation_steps": 2,
     "advantage": "reinforce_pp", "loss_type": "bnpo"},
], ids=["grpo", "gspo-dapo-rloo", "dualclip-drgrpo-dgrpo", "kl-llds-steps-otc-iters"])
def test_variants_run_and_resume_exactly(sft_dir: Path, tmp_path: Path, variant: dict) -> None:
    """Two steps straight, versus one step, save, load into a fresh trainer, one step: the second step's
    metrics (rollout and loss) are identical."""
    cfg = GRPOConfig(**{**SMALL, "learning_rate": 1e-4, **variant})
    model, processor = _load(sft_dir)
    straight = _trainer(model, processor, search_env, cfg)
    straight.step()
    straight.save(tmp_path / "ckpt")
    second = straight.step()
    assert all(math.isfinite(v) for v in second.values())
    model2, processor2 = _load(sft_dir)
    resumed = _trainer(model2, processor2, search_env, cfg)
    resumed.load(tmp_path / "ckpt")
    again = resumed.step()
    for key in ("rollout/reward", "rollout/accuracy", "loss/total", "loss/policy", "optim/grad_norm",
                "actor/logprob_mean"):
        assert again[key] == second[key], key
    for (name, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), name


def test_a_checkpoint_is_a_model_folder(sft_dir: Path, tmp_path: Path) -> None:
    """A GRPO checkpoint loads with load_vlm (what ``hf:DIR`` does): the trained weights and the processor
    with its chat template, the trainer state beside them."""
    from vgym.engine.tiny import load_vlm

    # the entropy bonus moves the weights even when a group's rewards are equal (no advantage)
    cfg = GRPOConfig(**{**SMALL, "steps": 1, "learning_rate": 1e-3, "mask_truncated_completions": False,
                        "entropy_coef": 0.01})
    model, processor = _load(sft_dir)
    before = model.lm_head.weight.detach().clone()
    trainer = _trainer(model, processor, search_env, cfg)
    trainer.train()
    assert not torch.equal(before, model.lm_head.weight)  # trained: the save has new weights to show
    folder = trainer.save(tmp_path / "checkpoint-1")
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "grpo_state.pt"} <= {p.name for p in folder.iterdir()}
    loaded, loaded_processor = load_vlm(folder)
    for (name, p), q in zip(loaded.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
    assert loaded_processor.chat_template == processor.chat_template


def test_a_checkpoint_from_before_the_policy_interface_resumes_exactly(sft_dir: Path, tmp_path: Path) -> None:
    """Checkpoints written before policies saved their own state kept HFPolicy's generator under
    ``policy_rng``; they still resume to the same next step."""
    cfg = GRPOConfig(**{**SMALL, "learning_rate": 1e-4})
    model, processor = _load(sft_dir)
    straight = _trainer(model, processor, search_env, cfg)
    straight.step()
    straight.save(tmp_path / "ckpt")
    second = straight.step()
    path = tmp_path / "ckpt" / "grpo_state.pt"
    state = torch.load(path, weights_only=True)
    state["policy_rng"] = state.pop("policy")["rng"]  # the old layout
    torch.save(state, path)
    model2, processor2 = _load(sft_dir)
    resumed = _trainer(model2, processor2, search_env, cfg)
    resumed.load(tmp_path / "ckpt")
    again = resumed.step()
    assert again["loss/total"] == second["loss/total"] and again["rollout/reward"] == second["rollout/reward"]


def test_resume_refuses_another_config(sft_dir: Path, tmp_path: Path) -> None:
    model, processor = _load(sft_dir)
    trainer = _trainer(model, processor, search_env, GRPOConfig(**SMALL))
    trainer.save(tmp_path / "ckpt")
    other = _trainer(model, processor, search_env, GRPOConfig(**{**SMALL, "epsilon_high": 0.28}))
    with pytest.raises(InvalidConfigError, match="differs from this run"):
        other.load(tmp_path / "ckpt")


def test_lora_trains_adapters_only_and_resumes(sft_dir: Path, tmp_path: Path) -> None:
    """LoRA via peft: only adapter weights move, the KL reference is the base with adapters off (KL starts at
    0), and a resumed run restores the adapters exactly."""
    peft = pytest.importorskip("peft")

    def lora_model():  # type: ignore[no-untyped-def]
        model, processor = _load(sft_dir)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])  # real runs: r 16-64
        return peft.get_peft_model(model, config), processor

    cfg = GRPOConfig(**{**SMALL, "learning_rate": 1e-3, "beta": 0.04, "entropy_coef": 0.01,
                        "mask_truncated_completions": False})
    model, processor = lora_model()
    trainer = _trainer(model, processor, search_env, cfg)
    assert trainer.ref_is_base and trainer.ref_model is None  # no second copy of the weights
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = trainer.step()
    assert first["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero: policy == reference
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all("lora_" in n for n in moved)
    trainer.save(tmp_path / "ckpt")
    second = trainer.step()
    model2, processor2 = lora_model()
    resumed = _trainer(model2, processor2, search_env, cfg)
    resumed.load(tmp_path / "ckpt")
    again = resumed.step()
    assert again["loss/total"] == second["loss/total"] and again["loss/kl"] == second["loss/kl"]
    # The checkpoint is an adapter folder that loads as the model it was saved from.
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    loaded, _ = _load(tmp_path / "ckpt")
    adapters = torch.load(tmp_path / "ckpt" / "grpo_state.pt", weights_only=True)["adapters"]
    state = loaded.state_dict()
    assert adapters and all(torch.equal(state[k], v) for k, v in adapters.items())


class _PreferVertical(VisualSearchTask):
    """Visual search whose verifier pays for answering "vertical", whatever the image: a reward that depends
    only on the policy's own choice, so learning it is fast enough for a unit test (not registered: the env's
    task instance is swapped, leaving the registries untouched)."""

    def score(self, sample, answer):  # type: ignore[no-untyped-def]
        return float(answer.strip() == "vertical")


def _prefer_vertical_env() -> VisualToolEnv:
    env = VisualToolEnv("visual_search")
    env.task = _PreferVertical(env.task.config)
    return env


def test_grpo_raises_the_reward_on_its_training_distribution(sft_dir: Path) -> None:
    """With a fixed seed, 12 GRPO steps raise the mean rollout reward of the last three steps well above the
    first three. Settings that learn fast on the tiny model: token-level loss (shared prefixes cancel), no std
    scaling, four PPO passes per batch under the clip. (Seeds 0-3 gave +0.26 to +0.37; after 8 steps the gain
    ranged from +0.01 to +0.28 over seeds, too close to the margin.)"""
    model, processor = _load(sft_dir)
    cfg = GRPOConfig(num_generations=8, prompts_per_step=4, max_new_tokens=48, steps=12, learning_rate=3e-4,
                     loss_type="dapo", scale_rewards=False, num_iterations=4, data_offset=100_000)
    history = _trainer(model, processor, _prefer_vertical_env, cfg).train()
    rewards = [h["rollout/reward"] for h in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.15, rewards


def test_loss_forward_projects_only_positions_that_predict_trained_tokens(tiny: Any) -> None:
    """``logits_to_keep`` from the first trained column: the same log-probs there and after, zeros before, and
    only ``T - first + 1`` positions of logits; the first-pass ratio of a real step stays 1."""
    model, processor = tiny
    cfg = GRPOConfig(**SMALL, mask_truncated_completions=False)
    trainer = _trainer(model, processor, search_env, cfg)
    trajs, _ = trainer.collect()
    batch = collate(trajs[:3], trainer.pad_id)
    mask = batch.pop("loss_mask")
    first = int(mask.any(0).nonzero()[0])
    width = batch["input_ids"].shape[1]
    assert first > 10  # the prompt (with its image) is long: most positions are skipped
    with torch.no_grad():
        full_logits, full = trainer._logits(model, batch)
        kept_logits, kept = trainer._logits(model, batch, first)
    assert full_logits.shape[1] == width and kept_logits.shape[1] == width - first + 1
    assert kept.shape == full.shape and not kept[:, :first].any()
    torch.testing.assert_close(kept[:, first:], full[:, first:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept_logits, full_logits[:, first - 1 :], atol=1e-5, rtol=1e-5)


def test_loss_settings_come_from_the_config() -> None:
    """The loss fields reach the objective as they are; a clip field the policy loss does not take is left
    out, with a warning, as the trainer always ignored it."""
    cfg = GRPOConfig(policy_loss="dual_clip", clip_ratio_c=2.0, epsilon_high=0.28, loss_type="dr_grpo",
                     beta=0.04, kl_estimator="k1", llds_coef=0.1, entropy_coef=0.01)
    assert cfg.loss_settings(max_tokens=64) == LossSettings(
        policy_loss="dual_clip", clip_ratio_c=2.0, epsilon_high=0.28, loss_type="dr_grpo", max_tokens=64,
        beta=0.04, kl_estimator="k1", llds_coef=0.1, entropy_coef=0.01)
    with pytest.warns(UserWarning, match="clip_ratio_c does not apply to policy_loss='gspo' and is ignored"):
        ignored = GRPOConfig(policy_loss="gspo", clip_ratio_c=2.0)
    assert ignored.loss_settings().clip_ratio_c is None


class _Counted:
    """A policy that is not an HFPolicy (no sampling state exposed): it plays through one and counts the
    calls."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.calls = inner, 0

    def act(self, batch):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner.act(batch)


def test_any_policy_plays_and_the_sync_hook_follows_every_weight_change(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Two minibatches: two optimizer steps, each followed by ``sync_weights(model)`` seeing the new weights;
    a policy without sampling state saves none, resumes, and gets the loaded weights; a stateful policy
    refuses a checkpoint without its state."""
    model, processor = _load(tiny_dir)
    cfg = GRPOConfig(**SMALL, learning_rate=1e-3, entropy_coef=0.01, mask_truncated_completions=False,
                     mini_batch_size=4)
    policy, synced = _Counted(hf_policy(model, processor, cfg)), []
    first = next(model.parameters())
    trainer = GRPOTrainer(model, processor, policy, search_env, cfg,
                          sync_weights=lambda m: synced.append(next(m.parameters()).detach().clone()))
    before = first.detach().clone()
    trainer.step()
    assert policy.calls > 0 and trainer.policy is policy
    assert len(synced) == 2 and not torch.equal(synced[0], before) and torch.equal(synced[-1], first)
    trainer.save(tmp_path / "ckpt")
    assert "policy" not in torch.load(tmp_path / "ckpt" / "grpo_state.pt", weights_only=True)
    model2, processor2 = _load(tiny_dir)
    resumed_syncs = []
    resumed = GRPOTrainer(model2, processor2, _Counted(hf_policy(model2, processor2, cfg)), search_env, cfg,
                          sync_weights=resumed_syncs.append)
    resumed.load(tmp_path / "ckpt")
    assert resumed_syncs == [model2] and torch.equal(next(model2.parameters()), first)
    stateful = GRPOTrainer(model2, processor2, hf_policy(model2, processor2, cfg), search_env, cfg)
    with pytest.raises(InvalidConfigError, match="holds no sampling state for the policy"):
        stateful.load(tmp_path / "ckpt")


@pytest.mark.parametrize("checked", [True, False])
def test_shared_prompt_forward_only_where_the_fast_paths_allow_it(tiny: Any, monkeypatch: pytest.MonkeyPatch,
                                                                  checked: bool) -> None:
    """On a checked transformers version the loss forward tries the shared-prompt forward; on another it never
    does, and the logits are the plain forward's."""
    model, processor = tiny
    trainer = _trainer(model, processor, search_env, GRPOConfig(**SMALL, mask_truncated_completions=False))
    trajs, _ = trainer.collect()
    batch = collate(trajs, trainer.pad_id)
    first = int(batch.pop("loss_mask").any(0).nonzero()[0])
    major, minor = max(fp.CHECKED_TRANSFORMERS)
    fp._decide.cache_clear()
    monkeypatch.setattr(fp, "installed_transformers", lambda: f"{major}.{minor}.0" if checked else "5.26.0")
    tried = []
    real = grpo_module.shared_prefix_logits
    monkeypatch.setattr(grpo_module, "shared_prefix_logits", lambda *args: tried.append(1) or real(*args))
    try:
        with torch.no_grad():
            logits, _ = trainer._logits(model, batch, first)
    finally:
        fp._decide.cache_clear()
    assert tried == ([1] if checked else [])
    if not checked:
        inputs = grpo_module.model_inputs(model, **batch)
        with torch.no_grad(), grpo_module.shared_image_features(model):
            plain = model(**inputs, logits_to_keep=logits.shape[1]).logits / trainer.config.temperature
        plain[..., trainer.suppressed_ids] = -1e9
        assert torch.equal(logits, plain)


def test_importance_ratio_is_one_for_the_trained_model_and_shows_a_mismatched_sampler(tiny: Any) -> None:
    """``rollout/is_ratio_*``: the HF policy playing the trained model gives ratio 1 on the first minibatch
    (scored before the step's first optimizer step: a second minibatch, after one, is not counted -- counted,
    it brings the minimum to 0.30); a sampler at another temperature than the trainer scores (as a rollout
    engine with other numerics would) does not."""
    from vgym.policies.hf import GenerationConfig, HFPolicy

    model, processor = tiny
    cfg = GRPOConfig(**SMALL, learning_rate=1e-2, entropy_coef=0.01, mask_truncated_completions=False,
                     mini_batch_size=4)
    metrics = _trainer(model, processor, search_env, cfg).step()
    assert metrics["rollout/is_ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["rollout/is_ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["rollout/logprob_abs_diff"] < 1e-4
    hot = HFPolicy(model, processor, GenerationConfig(cfg.max_new_tokens, temperature=2.0), seed=0)
    mismatched = GRPOTrainer(model, processor, hot, search_env, cfg).step()
    assert mismatched["rollout/logprob_abs_diff"] > 0.05
    assert mismatched["rollout/is_ratio_max"] > 1.05
