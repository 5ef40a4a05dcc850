"""GRPO step throughput: vgym's GRPOTrainer vs TRL's GRPOTrainer, side by side in one run (ratios; nothing
asserted).

Run: ``python benchmarks/train.py [--steps 5] [--warmup 2]``. Same tiny Qwen2-VL, same sample, same group
(1 prompt × 8 generations), fp32, no KL, temperature 1, one thread; each framework runs in its own subprocess
so peak RSS is its own. Goals (issue): ≥ 2× TRL's total tokens/s single-turn, and ≥ 2× TRL's
``environment_factory`` path on a two-turn crop episode with an image tool result.

1. single turn: visual_search with tools off, max_turns=1, 224² image, 32 new tokens per completion. Both
   generate exactly 32 tokens (``min_new_tokens=32``: the random model would otherwise stop early at random).
2. two-turn crop: visual_search with crop, max_turns=2, 112² budget. A random model never calls a tool, so the
   tiny model is first taught (next-token training on one episode in each framework's format) to call crop on
   the sample's region and then answer; sampling at temperature 1 still varies, so compare tokens/s and look
   at the reported turns and tool images per episode.

Total tokens = prompt + completion tokens of every sequence of the step (TRL's ``num_input_tokens_seen``;
vgym's trajectory lengths, env tokens included). The breakdown splits a step into generation, the rest of the
rollout (env, tools, templating, processor), the loss forward (with collation) and backward + optimizer.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

from vgym.app.quickstart import tokenizer_corpus  # noqa: E402
from vgym.engine.modeling import model_inputs  # noqa: E402
from vgym.engine.tiny import build_tiny_vlm, load_vlm  # noqa: E402
from vgym.env import VisualToolEnv  # noqa: E402
from vgym.policies.oracle import OraclePolicy  # noqa: E402
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.trainers.sft import collate  # noqa: E402

TASK = "visual_search"
SCENARIOS = {  # env settings, new tokens per turn, TRL's completion budget
    "single": {"env": {"tools": (), "max_turns": 1, "max_pixels": 224 * 224}, "new_tokens": 32,
               "trl_budget": 32},
    "crop": {"env": {"tools": ("crop",), "max_turns": 2, "max_pixels": 112 * 112}, "new_tokens": 48,
             "trl_budget": 160},
}
GROUP = 8


class Clock:
    """Adds up the wall time of calls to wrapped callables, per label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, label: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def _peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (``ru_maxrss`` survives ``exec`` on Linux, so a worker would report
    the launching parent's peak whenever that is higher)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB there too


def _summary(steps: list[dict[str, float]], extra: dict[str, Any]) -> dict[str, Any]:
    wall = sum(s["wall"] for s in steps)
    keys = sorted({k for s in steps for k in s})
    out = {"s_per_step": statistics.median(s["wall"] for s in steps),
           "tokens_per_s": sum(s["tokens"] for s in steps) / wall,
           "mean": {k: sum(s.get(k, 0.0) for s in steps) / len(steps) for k in keys},
           "peak_rss_mib": _peak_rss_mib()}
    return {**out, **extra}


# ---------------------------------------------------------------- workers (one framework per process)


def run_vgym(model_dir: str, scenario: str, warmup: int, steps: int) -> dict[str, Any]:
    from vgym.trainers.grpo import GRPOTrainer, hf_policy
    from vgym.trainers.grpo_config import GRPOConfig

    spec = SCENARIOS[scenario]
    model, processor = load_vlm(model_dir)
    if scenario == "single":  # generation honours the model's generation config: no early stop, as TRL's
        model.generation_config.min_new_tokens = spec["new_tokens"]
    env_fn = functools.partial(VisualToolEnv, TASK, **spec["env"])
    cfg = GRPOConfig(num_generations=GROUP, prompts_per_step=1, max_new_tokens=spec["new_tokens"],
                     temperature=1.0, learning_rate=1e-6, mask_truncated_completions=False,
                     steps=warmup + steps)
    clock = Clock()
    policy = hf_policy(model, processor, cfg)
    policy.act = clock.wrap("generate", policy.act)  # type: ignore[method-assign]
    trainer = GRPOTrainer(model, processor, policy, env_fn, cfg)
    trainer.loss_on = clock.wrap("forward", trainer.loss_on)  # type: ignore[method-assign]
    records = []
    for step in range(warmup + steps):
        trainer.data_position = 0  # the same sample every step, as TRL's one-row dataset
        clock.take()
        metrics = trainer.step()
        parts = clock.take()
        trajs_tokens = metrics["perf/tokens_per_s"] * metrics["perf/step_s"]
        if step < warmup:
            continue
        wall, roll = metrics["perf/step_s"], metrics["perf/rollout_s"]
        records.append({"wall": wall, "tokens": trajs_tokens, "generate": parts["generate"],
                        "rollout_other": roll - parts["generate"], "forward": parts["forward"],
                        "backward_optim": wall - roll - parts["forward"],
                        "policy_tokens": metrics["rollout/policy_tokens"], "turns": metrics["rollout/turns"],
                        "tool_calls": metrics["rollout/tool_calls_per_episode"],
                        "tool_errors": metrics["rollout/tool_error_rate"],
                        "reward": metrics["rollout/reward"]})
    env = env_fn()
    obs, info = env.reset(seed=0, options={"split": "train", "index": 0})
    prompt_tokens = len(ChatEncoder(processor).encode_prompt(info["messages"], obs["images"]).input_ids)
    return _summary(records, {"prompt_tokens": prompt_tokens,
                              "model_tokens": statistics.mean(r["policy_tokens"] for r in records)})


def run_trl(model_dir: str, scenario: str, warmup: int, steps: int, checkpointing: bool) -> dict[str, Any]:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from vgym.trainers.trl_adapter import (
        vgym_dataset,
        vgym_env_reward_func,
        vgym_environment_factory,
        vgym_reward_func,
        with_tool_chat_template,
    )

    spec = SCENARIOS[scenario]
    model, processor = load_vlm(model_dir)
    env = spec["env"]
    ds = vgym_dataset(TASK, "train", 1, 0, tools=env["tools"], max_pixels=env["max_pixels"])
    extra: dict[str, Any] = {}
    if scenario == "single":
        extra = {"generation_kwargs": {"min_new_tokens": spec["new_tokens"]}}
        kwargs: dict[str, Any] = {"reward_funcs": vgym_reward_func(TASK), "processing_class": processor}
    else:
        factory = vgym_environment_factory(TASK, **env)
        kwargs = {"reward_funcs": vgym_env_reward_func,
                  "processing_class": with_tool_chat_template(processor), "environment_factory": factory}
        extra = {"max_tool_calling_iterations": env["max_turns"] - 1}
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, bf16=False, use_cpu=True, num_generations=GROUP,
                          per_device_train_batch_size=GROUP, max_completion_length=spec["trl_budget"],
                          max_steps=warmup + steps, report_to="none", save_strategy="no", logging_steps=1,
                          temperature=1.0, beta=0.0, learning_rate=1e-6, gradient_checkpointing=checkpointing,
                          disable_tqdm=True, seed=0, **extra)
        trainer = GRPOTrainer(model, args=args, train_dataset=ds, **kwargs)
        clock = Clock()
        trainer._generate = clock.wrap("generate", trainer._generate)  # type: ignore[method-assign]
        trainer._generate_and_score_completions = clock.wrap(  # type: ignore[method-assign]
            "rollout", trainer._generate_and_score_completions)
        trainer.compute_loss = clock.wrap("forward", trainer.compute_loss)  # type: ignore[method-assign]
        records: list[dict[str, float]] = []

        class Record(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.start, self.seen = time.perf_counter(), state.num_input_tokens_seen
                clock.take()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                wall, parts = time.perf_counter() - self.start, clock.take()
                if state.global_step > warmup:
                    records.append({"wall": wall, "tokens": float(state.num_input_tokens_seen - self.seen),
                                    "generate": parts["generate"],
                                    "rollout_other": parts["rollout"] - parts["generate"],
                                    "forward": parts["forward"],
                                    "backward_optim": wall - parts["rollout"] - parts["forward"]})

        trainer.add_callback(Record())
        trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h][warmup:]
    mean = lambda key: sum(h.get(key, 0.0) for h in logs) / max(1, len(logs))  # noqa: E731
    extra_out = {"model_tokens": mean("completions/mean_length"), "tool_calls": mean("tools/call_frequency"),
                 "tool_failures": mean("tools/failure_frequency"), "reward": mean("reward")}
    if scenario == "single":
        ids = processor.apply_chat_template(_with_images(ds[0]), tokenize=True, add_generation_prompt=True)
    else:
        ids = trainer.processing_class.apply_chat_template(
            _with_images(ds[0]), tools=trainer._env_tools[None], tokenize=True, add_generation_prompt=True)
    return _summary(records, {"prompt_tokens": len(ids[0]), **extra_out})


def _with_images(row: dict[str, Any]) -> list[dict[str, Any]]:
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(row["prompt"], images=row["images"])


# ---------------------------------------------------------------- teaching the two-turn episode


def _trl_episode(processor: Any, max_pixels: int) -> tuple[torch.Tensor, ...]:
    """Sample 0's crop episode as TRL's tool loop builds it: prompt | call | tool suffix | answer (piecewise
    ids)."""
    from vgym.trainers.trl_adapter import vgym_dataset, vgym_environment_factory, with_tool_chat_template

    tools = with_tool_chat_template(processor)
    env = vgym_environment_factory(TASK, tools=("crop",), max_turns=2, max_pixels=max_pixels)()
    row = vgym_dataset(TASK, "train", 1, 0, tools=("crop",), max_pixels=max_pixels)[0]
    env.reset(**row)
    solution = env.env.task.solution(env.env.sample, True)  # type: ignore[arg-type]
    (name, arguments), = solution.tool_calls
    result = env.crop(**arguments)
    prompt = _with_images(row)
    messages = prompt + [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "name": name, "content": result},
        {"role": "assistant", "content": f"<answer>{solution.answer}</answer>"}]
    full = tools.apply_chat_template(messages, tools=[env.crop], tokenize=False)
    head = tools.apply_chat_template(prompt, tools=[env.crop], tokenize=False, add_generation_prompt=True)
    rest = full[len(head) :]
    i = rest.index("<|im_end|>") + len("<|im_end|>")
    j = rest.index("<|im_start|>assistant\n", i) + len("<|im_start|>assistant\n")
    pieces = [(head, row["images"], False), (rest[:i], None, True), (rest[i:j], [result[0]["image"]], False),
              (rest[j:].rstrip("\n"), None, True)]
    ids, labels, pixels, grids = [], [], [], []
    for text, images, trained in pieces:
        out = tools(text=[text], images=images, return_tensors="pt")
        x = out["input_ids"][0]
        ids.append(x)
        labels.append(x if trained else torch.full_like(x, -100))
        if images:
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
    return torch.cat(ids)[None], torch.cat(labels)[None], torch.cat(pixels), torch.cat(grids)


def _vgym_episode(processor: Any, max_pixels: int) -> tuple[torch.Tensor, ...]:
    """Sample 0's crop episode as vgym's rollout builds it (the scripted oracle's turns)."""
    env_fn = functools.partial(VisualToolEnv, TASK, tools=("crop",), max_turns=2, max_pixels=max_pixels)
    (traj,) = rollout(env_fn, OraclePolicy(), ChatEncoder(processor), [EpisodeSpec("train", 0, seed=0)],
                      RolloutConfig(batch_size=1))
    batch = collate([traj], processor.tokenizer.pad_token_id)
    labels = batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100)
    return batch["input_ids"], labels, batch["pixel_values"], batch["image_grid_thw"]


def teach_crop_episode(base: Path, out: Path, steps: int = 80) -> Path:
    """Next-token training of the tiny model on sample 0's crop episode in both formats (~0.02 loss)."""
    model, processor = load_vlm(base)
    max_pixels = SCENARIOS["crop"]["env"]["max_pixels"]
    sequences = [_trl_episode(processor, max_pixels), _vgym_episode(processor, max_pixels)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1.5e-3)
    model.train()
    for _ in range(steps):
        for ids, labels, pixels, grids in sequences:
            loss = model(**model_inputs(model, ids, torch.ones_like(ids), pixels, grids), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ---------------------------------------------------------------- driver


def _spawn(*argv: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--worker", *argv], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"worker {argv} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(label: str, r: dict[str, Any]) -> str:
    m = r["mean"]
    parts = " / ".join(f"{m.get(k, float('nan')):.3f}"
                       for k in ("generate", "rollout_other", "forward", "backward_optim"))
    return (f"  {label:<24} {r['s_per_step']:6.3f} s/step {r['tokens_per_s']:6.0f} tok/s "
            f"{m['tokens']:5.0f} tok/step (prompt {r['prompt_tokens']}, "
            f"model {r['model_tokens']:.0f}/episode)  peak RSS {r['peak_rss_mib']:4.0f} MiB  "
            f"[gen / rollout rest / fwd / bwd+optim s: {parts}]")


def _ratios(ours: dict[str, Any], theirs: dict[str, Any], label: str) -> str:
    return (f"  vgym / {label}: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tokens/s, "
            f"{theirs['s_per_step'] / ours['s_per_step']:.2f}x steps/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, scenario, model_dir = args.worker[:3]
        if framework == "vgym":
            result = run_vgym(model_dir, scenario, args.warmup, args.steps)
        else:
            result = run_trl(model_dir, scenario, args.warmup, args.steps,
                             checkpointing=framework == "trl_gc")
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_vlm(Path(tmp) / "vlm", corpus=tokenizer_corpus(TASK, 0, n=40))
        taught = teach_crop_episode(base, Path(tmp) / "taught")
        w, s = str(args.warmup), str(args.steps)
        print(f"{args.steps} timed steps after {args.warmup} warm-up, 1 prompt x {GROUP} generations, fp32, "
              "1 thread")
        single = {fw: _spawn(fw, "single", str(base), "--warmup", w, "--steps", s)
                  for fw in ("vgym", "trl_gc", "trl")}
        print("1. single turn (224², 32 new tokens, tools off):")
        for fw, label in (("vgym", "vgym GRPOTrainer"), ("trl_gc", "TRL (default: grad ckpt)"),
                          ("trl", "TRL (no grad ckpt)")):
            print(_line(label, single[fw]))
        print(_ratios(single["vgym"], single["trl_gc"], "TRL default"))
        print(_ratios(single["vgym"], single["trl"], "TRL no grad ckpt"))
        crop = {fw: _spawn(fw, "crop", str(taught), "--warmup", w, "--steps", s) for fw in ("vgym", "trl")}
        print("2. two-turn crop episode (112², crop tool result as an image; TRL environment_factory, "
              "no grad ckpt):")
        print(_line("vgym GRPOTrainer", crop["vgym"]))
        print(_line("TRL environment_factory", crop["trl"]))
        v, t = crop["vgym"]["mean"], crop["trl"]
        print(f"  per episode: vgym {v['turns']:.2f} turns, {v['tool_calls']:.2f} tool calls "
              f"({v['tool_errors']:.0%} failed), reward {v['reward']:.2f}; "
              f"TRL {t['tool_calls']:.2f} tool calls ({t['tool_failures']:.0%} failed), "
              f"reward {t['reward']:.2f}")
        print(_ratios(crop["vgym"], crop["trl"], "TRL"))
        print("  (total tokens/s favours the longer prompt: TRL renders the full tool JSON schema; compare "
              "steps/s too)")


if __name__ == "__main__":
    main()
