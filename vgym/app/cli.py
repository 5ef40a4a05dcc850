"""The ``vgym`` command line: ``list``, ``demo``, ``convert``, ``quickstart``, ``diagnose``, ``sft``,
``train``, ``view``, ``eval``, ``compare``.

Contents: :data:`app` (a typer app), :func:`main` (the ``vgym`` console script). Progress bars and printing
live here, never in library modules.

Every command also takes ``--import MODULE`` (repeatable: a module or ``.py`` file whose tasks and tools
register before the command runs; installed packages' ``vgym.plugins`` entry points load too, see
:mod:`vgym.app.options`) and ``--debug``. A user's mistake — any :class:`~vgym.errors.VgymError`: an unknown
name, a bad config value, a missing file — prints one line on stderr and exits with status 2; a traceback is
shown only for a bug, or for every error with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from vgym.app.options import load_plugins, parse_task_config, parse_tools
from vgym.errors import InvalidConfigError, VgymError

EPILOG = ("Every command also takes --import MODULE (repeatable; a module or .py file registering your tasks "
          "and tools) and --debug (full tracebacks).")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, epilog=EPILOG,
                  pretty_exceptions_enable=False, help="vgym: VLMs that reason with visual tools.")
console = Console()
errors = Console(stderr=True)

TaskConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--task-config",
        help="task config field as KEY=VALUE (YAML value), e.g. root=/data/vstar or difficulty=2; repeatable",
    ),
]
TaskConfigFileOpt = Annotated[
    Path | None, typer.Option("--task-config-file", help="YAML/JSON mapping of task config fields")
]
ToolsOpt = Annotated[
    str, typer.Option(help="default (the task's), off, or comma-separated tool names, e.g. crop,flip")
]


@app.command("list", epilog=EPILOG)
def list_cmd() -> None:
    """Show the registered environments (gymnasium ids) and tools."""
    import gymnasium

    import vgym
    from vgym.task import env_id

    table = Table(title="vgym environments")
    for col in ("gymnasium id", "task", "default tools"):
        table.add_column(col)
    for name in vgym.TASKS.names():
        cls = vgym.TASKS.get(name)
        table.add_row(env_id(cls), name, ", ".join(cls.default_tools) or "-")
    console.print(table)
    tools = Table(title="vgym tools")
    tools.add_column("tool")
    tools.add_column("backends (default first)")
    tools.add_column("arguments")
    tools.add_column("description")
    for name in vgym.TOOLS.names():
        tool = vgym.TOOLS.get(name)
        backends = [tool.default_backend] + [b for b in tool.backends if b != tool.default_backend]
        tools.add_row(name, ", ".join(backends), tool.signature_hint(), tool.description)
    console.print(tools)
    ids = [i for i in gymnasium.registry if i.startswith("vgym/")]
    console.print(f"{len(ids)} environment(s), {len(vgym.TOOLS)} tool(s)")


@app.command(epilog=EPILOG)
def demo(
    env_id: Annotated[
        str, typer.Argument(help="gymnasium id (vgym/VisualSearch-v0) or task name (visual_search)")
    ] = "vgym/VisualSearch-v0",
    seed: Annotated[int, typer.Option(help="reset seed (picks the sample)")] = 0,
    split: Annotated[
        str | None, typer.Option(help="train, val or test (default: the task's; test for RealMini)")
    ] = None,
    tools: ToolsOpt = "default",
    task_config: TaskConfigOpt = None,
    task_config_file: TaskConfigFileOpt = None,
) -> None:
    """Play one episode with the scripted oracle and print every turn."""
    import torch

    from vgym.env import VisualToolEnv
    from vgym.policies.base import PolicyInput, ground_truth
    from vgym.policies.oracle import OraclePolicy

    env = VisualToolEnv(
        _task_name(env_id),
        task_config=parse_task_config(task_config or (), task_config_file),
        tools=parse_tools(tools),
    )
    try:
        obs, info = env.reset(seed=seed, options={"split": split} if split else None)
        console.rule(f"{env_id} · {info['sample_id']}", characters="-")
        console.print(_styled("question", env.sample.question))
        console.print(_styled("images", f"{[im.shape[:2] for im in obs['images']]} (shown to the model)"))
        oracle = OraclePolicy()
        done, turn, reward = False, 0, 0.0
        while not done:
            item = PolicyInput(torch.zeros(0, dtype=torch.long), None, None, [], turn, env.tools_enabled,
                               episode_id=env.sample.id, task_name=env.task.name,
                               answer_choices=env.task.answer_choices(),
                               ground_truth=ground_truth(env.task, env.sample, env.tools_enabled))
            action = oracle.act([item])[0].text
            console.print(_styled("model", action, "bold cyan"))
            obs, reward, terminated, truncated, info = env.step(action)
            for call in info["tool_calls"]:
                sizes = [im.shape[:2] for im in obs["images"]]
                status = "ok" if call["ok"] else f"error: {call['error']}"
                console.print(_styled("tool", f"{call['name']} {status}; result images {sizes}; "
                                              f"{call['latency_s'] * 1000:.1f} ms", "bold green"))
            done = terminated or truncated
            turn += 1
        console.print(_styled("answer", f"{info['answer']!r} (gold {env.sample.answer!r})"))
        console.print(_styled("reward", f"{float(reward):.3f} parts {info['reward_parts']}"))
    finally:
        env.close()


@app.command(epilog=EPILOG)
def convert(
    env_id: Annotated[str, typer.Argument(help="a dataset env: gymnasium id (vgym/Refcoco-v0) or task name")],
    out: Annotated[Path, typer.Option(help="the vgym JSONL file to write; its media paths are relative to "
                                           "the dataset root, so put it inside the root")],
    task_config: TaskConfigOpt = None,
    task_config_file: TaskConfigFileOpt = None,
) -> None:
    """Write every record of a dataset env (all splits) as one vgym JSONL file, for vgym/VgymJsonl-v0."""
    import os

    from vgym.data.dataset_task import DatasetTask
    from vgym.data.records import save_vgym_jsonl
    from vgym.task import SPLITS, TASKS

    task = TASKS.get(_task_name(env_id))(parse_task_config(task_config or (), task_config_file))
    if not isinstance(task, DatasetTask):
        raise InvalidConfigError(f"{env_id} generates its samples; convert reads dataset envs (those with a "
                                 "task_config 'root')")
    count = save_vgym_jsonl([r for split in SPLITS for r in task.split_records(split)], out)
    root = os.path.realpath(task.root())
    relative = os.path.relpath(os.path.realpath(out), root)
    console.print(f"wrote {count} records to {out}")
    if relative.startswith(".."):
        console.print(f"its media paths are relative to {root}: move it inside that folder to read it")
    else:
        console.print(f"read it with: vgym demo vgym/VgymJsonl-v0 --split test --task-config root={root} "
                      f"--task-config annotations={relative}", markup=False, highlight=False, soft_wrap=True)


def _styled(label: str, text: str, style: str = "bold") -> Text:
    """``label text`` with the label styled and the text shown as it is (a model's ``[...]`` is not
    markup)."""
    return Text.assemble((label, style), " ", text)


def _task_name(name: str) -> str:
    """The task registry name of a gymnasium id (``vgym/VisualSearch-v0``) or of a task name itself.

    Raises:
        UnknownNameError: for an id or name that is not registered (with the closest registered one).
    """
    from vgym.task import TASKS, env_id

    if "/" not in name:
        TASKS.get(name)  # raises with the registered names and the closest match
        return name
    by_id = {env_id(TASKS.get(n)): n for n in TASKS.names()}
    if name not in by_id:
        import difflib

        close = difflib.get_close_matches(name, list(by_id), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InvalidConfigError(f"unknown environment id {name!r}.{hint} `vgym list` shows them all (your "
                                 "own tasks need --import MODULE)")
    return by_id[name]


@app.command(epilog=EPILOG)
def quickstart(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/quickstart"),
    train_episodes: Annotated[int, typer.Option(help="oracle trajectories per arm")] = 768,
    eval_episodes: Annotated[int, typer.Option(help="held-out episodes per arm")] = 200,
    steps: Annotated[int, typer.Option(help="SFT steps of the tools arm")] = 1000,
    no_tools_steps: Annotated[int, typer.Option(help="SFT steps of the tools-off arm")] = 300,
    seed: Annotated[int, typer.Option(help="data and model seed")] = 0,
    grpo_steps: Annotated[int, typer.Option(help="GRPO steps after SFT for the tools arm (0: none)")] = 20,
    teacher_skip_tools: Annotated[
        float, typer.Option(help="share of teacher episodes that skip the tool")
    ] = 0.5,
    teacher_noise: Annotated[float, typer.Option(help="share of the teacher's answers made wrong")] = 0.0,
) -> None:
    """Build the tiny VLM, SFT it on teacher trajectories with and without tools, GRPO the tools arm,
    evaluate."""
    from dataclasses import replace

    from vgym.app.quickstart import QUICKSTART_GRPO, QuickstartConfig, run_quickstart

    base = QuickstartConfig()
    cfg = QuickstartConfig(out=out, train_episodes=train_episodes, eval_episodes=eval_episodes,
                           sft=replace(base.sft, steps=steps), no_tools_sft_steps=no_tools_steps, seed=seed,
                           teacher_noise=teacher_noise, teacher_skip_tools=teacher_skip_tools,
                           grpo=replace(QUICKSTART_GRPO, steps=grpo_steps) if grpo_steps else None)
    logging.basicConfig(level=logging.WARNING)
    with _progress_bars() as progress:
        result = run_quickstart(cfg, progress)
    print_quickstart_results(result, eval_episodes)


def print_quickstart_results(result: dict[str, Any], eval_episodes: int) -> None:
    """The quickstart's summary table and closing line."""
    table = Table(title=f"held-out test split, {eval_episodes} episodes per row")
    for col in ("arm", "acc [95% CI]", "reward", "calls/ep", "format", "train loss / reward", "train s"):
        table.add_column(col)
    for arm in result["arms"]:
        lo, hi = arm["accuracy_ci"]
        table.add_row(
            f"{arm['label']} (SFT)",
            f"{arm['accuracy']:.3f} [{lo:.2f}, {hi:.2f}]",
            f"{arm['reward']:.3f}",
            f"{arm['tool_calls_per_episode']:.2f}",
            f"{arm['format_ok']:.2f}",
            f"loss {arm['initial_loss']:.1f}→{arm['final_loss']:.3f}",
            f"{arm['train_seconds']:.0f}",
        )
    grpo = result.get("grpo")
    if grpo:
        lo, hi = grpo["accuracy_ci"]
        rewards = grpo["rewards"]
        table.add_row(grpo["label"], f"{grpo['accuracy']:.3f} [{lo:.2f}, {hi:.2f}]", f"{grpo['reward']:.3f}",
                      f"{grpo['tool_calls_per_episode']:.2f}", f"{grpo['format_ok']:.2f}",
                      f"reward {rewards[0]:.2f}→{rewards[-1]:.2f}", f"{grpo['train_seconds']:.0f}")
    console.print(table)
    for alarm in (grpo or {}).get("alarms", []):
        console.print(f"[yellow]alarm:[/yellow] {alarm}")
    console.print(f"chance accuracy {result['chance']:.3f} · wall time {result['wall_seconds']:.0f} s · "
                  f"run folder {result['out']} (results.json, curves.png, */eval_test*.jsonl, images/)")


@app.command(epilog=EPILOG)
def diagnose(
    task: Annotated[
        list[str] | None,
        typer.Option(
            help="task name or gymnasium id; repeatable (default: every procedural task at each difficulty)"
        ),
    ] = None,
    episodes: Annotated[int, typer.Option(help="episodes per task and difficulty")] = 50,
    seed: Annotated[int, typer.Option(help="data seed")] = 0,
    tools: ToolsOpt = "default",
    task_config: TaskConfigOpt = None,
    task_config_file: TaskConfigFileOpt = None,
) -> None:
    """Oracle success, tool necessity (tools off / decoy) and answer-prior baselines for every task and
    difficulty."""
    from vgym.eval.diagnose import diagnose_all

    if episodes < 1:
        raise InvalidConfigError(f"--episodes must be at least 1, got {episodes}")
    names = [_task_name(t) for t in task] if task else None
    config = parse_task_config(task_config or (), task_config_file)
    rows = diagnose_all(episodes=episodes, seed=seed, names=names, task_config=config or None,
                        tools=parse_tools(tools))
    table = Table(title=f"task diagnostics ({episodes} test episodes each; accuracy unless marked reward)")
    for col in ("env id", "diff", "oracle reward", "calls", "needs", "witnessed", "off bound", "off acc",
                "decoy acc", "maj acc", "rand acc", "maj rate"):
        table.add_column(col)

    def fmt(value: float, spec: str = ".3f") -> str:
        return "-" if value != value else format(value, spec)  # NaN (no claim / no answer set) shows as "-"

    for r in rows:
        table.add_row(
            r.env_id,
            "-" if r.difficulty is None else str(r.difficulty),
            f"{r.oracle_reward:.3f}",
            f"{r.oracle_tool_calls:.2f}",
            "|".join(r.necessary_tools) or "-",
            fmt(r.witnessed, ".2f"),
            fmt(r.tools_off_bound),
            fmt(r.tools_off_accuracy),
            fmt(r.decoy_accuracy),
            fmt(r.majority_accuracy),
            fmt(r.random_accuracy),
            f"{r.majority_rate:.2f}",
        )
    console.print(table)


@app.command(epilog=EPILOG)
def sft(
    model: Annotated[
        Path, typer.Option(help="local checkpoint folder (e.g. Qwen2-VL-2B-Instruct); never downloaded")
    ],
    task: Annotated[str, typer.Option(help="task registry name")] = "visual_search",
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/sft"),
    tools: Annotated[str, typer.Option(help="'default', 'off', or comma-separated tool names")] = "default",
    train_episodes: Annotated[int, typer.Option(help="oracle trajectories")] = 2048,
    eval_episodes: Annotated[int, typer.Option(help="held-out episodes")] = 200,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 500,
    batch_size: Annotated[int, typer.Option(help="trajectories per step")] = 8,
    learning_rate: Annotated[float, typer.Option(help="peak AdamW learning rate")] = 1e-5,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cuda",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16")] = "bfloat16",
    max_pixels: Annotated[int, typer.Option(help="env image budget (H*W)")] = 224 * 224,
    gradient_checkpointing: Annotated[bool, typer.Option(help="trade compute for memory")] = True,
    seed: Annotated[int, typer.Option(help="data seed")] = 0,
) -> None:
    """Behaviour-clone the oracle with a local checkpoint, then evaluate it on the held-out split."""
    from dataclasses import asdict

    import torch

    from vgym.app.pipeline import sft_then_evaluate
    from vgym.engine.modeling import enable_checkpointing
    from vgym.engine.tiny import load_vlm
    from vgym.env import VisualToolEnv
    from vgym.policies.hf import GenerationConfig
    from vgym.trainers.config_checks import check_choice
    from vgym.trainers.sft import SFTConfig

    check_choice("--device", device, ("cpu", "cuda"))
    check_choice("--dtype", dtype, ("float32", "bfloat16"))
    chosen = None if tools == "default" else () if tools == "off" else tuple(t for t in tools.split(",") if t)
    vlm, processor = load_vlm(model, device=device, dtype=getattr(torch, dtype))
    if gradient_checkpointing and hasattr(vlm, "gradient_checkpointing_enable"):
        enable_checkpointing(vlm)
    config = SFTConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=min(20, steps)
    )

    def env_fn() -> VisualToolEnv:
        return VisualToolEnv(task, tools=chosen, data_seed=seed, max_pixels=max_pixels)

    with _progress_bars() as progress:
        result = sft_then_evaluate(
            vlm,
            processor,
            env_fn,
            label=task,
            out=out,
            train_episodes=train_episodes,
            eval_episodes=eval_episodes,
            sft=config,
            generation=GenerationConfig(temperature=0.0),
            batch_size=16,
            progress=progress,
        )
    from vgym.rollout.trajectory import write_json

    # write-then-rename: a kill or full disk keeps the old file
    write_json(out / "results.json", asdict(result))
    console.print(
        f"held-out accuracy {result.accuracy:.3f} · reward {result.reward:.3f} · tool calls/episode "
        f"{result.tool_calls_per_episode:.2f} · SFT loss {result.initial_loss:.3f}→{result.final_loss:.3f} "
        f"· checkpoint {out / 'checkpoint'}"
    )


@app.command(epilog=EPILOG)
def train(
    config: Annotated[Path, typer.Option(help="a YAML recipe, e.g. configs/quickstart_cpu.yaml")],
    out: Annotated[Path | None, typer.Option(help="run folder (overrides the recipe's)")] = None,
    resume: Annotated[
        bool, typer.Option(help="continue from the newest checkpoint in the run folder")
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. grpo.learning_rate=1e-4; repeatable")
    ] = None,
) -> None:
    """SFT warm start (optional) then GRPO, from a YAML recipe; held-out evaluation before and after.
    Checkpoints (model folders) land in the run folder; Ctrl-C saves one and stops, --resume continues.
    Under torchrun (torchrun --nproc_per_node N -m vgym.app.cli train ...) it trains data-parallel; rank 0
    prints."""
    from vgym.app.recipes import load_recipe, run_recipe
    from vgym.trainers.distributed import launch_rank

    recipe = load_recipe(config, *(set_ or []), out=str(out) if out else None, resume=resume or None)
    logging.basicConfig(level=logging.WARNING)
    try:
        with _progress_bars() as progress:
            result = run_recipe(recipe, progress)
    except KeyboardInterrupt:
        errors.print(f"interrupted; the same command with --resume continues from the newest checkpoint in "
                     f"{recipe.out}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(130) from None
    if launch_rank() != 0:  # rank 0 prints the job's result
        return
    table = Table(title=f"held-out test split of {recipe.task} ({recipe.eval_episodes} episodes)")
    for col in ("when", "acc", "reward", "calls/ep", "format"):
        table.add_column(col)
    for when in ("before", "after"):
        if when in result:
            r = result[when]
            table.add_row(f"{when} GRPO", f"{r['accuracy']:.3f}", f"{r['reward']:.3f}",
                          f"{r['tool_calls_per_episode']:.2f}", f"{r['format_ok']:.2f}")
    console.print(table)
    for alarm in result["alarms"]:
        console.print(f"[yellow]alarm:[/yellow] {alarm}")
    processes = f" · {result['processes']} processes" if result["processes"] > 1 else ""
    console.print(f"{result['steps']} GRPO steps · wall time {result['wall_seconds']:.0f} s{processes} · run "
                  f"folder {recipe.out}")


@app.command(epilog=EPILOG)
def view(
    run: Annotated[Path, typer.Argument(help="run folder; every trajectory *.jsonl under it is shown")],
    out: Annotated[Path | None, typer.Option(help="page to write (default <run>/view.html)")] = None,
) -> None:
    """Write a static HTML page of the run's trajectories (filters, turns, tool calls, images) and print its
    path."""
    from vgym.errors import VgymError
    from vgym.eval.viewer import build_view

    logging.basicConfig(level=logging.WARNING)  # shows which *.jsonl files were skipped and why
    try:
        page = build_view(run, out)
    except (FileNotFoundError, VgymError) as exc:  # one line on stderr, exit 2, as main() prints a VgymError
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    print(page)  # plain print: the path alone, not wrapped by rich, so scripts can use it


@app.command("eval", epilog=EPILOG)
def eval_cmd(
    policy: Annotated[str, typer.Option(help="oracle | random | hf:DIR | vllm:DIR | "
                                        "openai:URL[#model[,tool_calling=text|native|auto]]")],
    suite: Annotated[
        list[str], typer.Option(help="suite (spatial, video, visual, all) or task name; repeatable")
    ],
    out: Annotated[Path, typer.Option(help="run folder (an existing one is resumed)")],
    k: Annotated[int, typer.Option(help="attempts per episode")] = 1,
    n: Annotated[
        int, typer.Option(help="episodes per task and difficulty (a smaller dataset: each record once)")
    ] = 200,
    seed: Annotated[int, typer.Option(help="data, env and policy seed")] = 0,
    tools: Annotated[
        str,
        typer.Option(help="default (the task's), off, oracle (the task's tools on their oracle backends), or "
                     "comma-separated tool names, e.g. crop,ground"),
    ] = "default",
    difficulty: Annotated[
        list[int] | None, typer.Option(help="levels to run instead of the suite's; repeatable")
    ] = None,
    task_config: TaskConfigOpt = None,
    task_config_file: TaskConfigFileOpt = None,
    clip_dir: Annotated[Path | None, typer.Option(help="folder for video tasks' clips")] = None,
    save_trajectories: Annotated[
        str, typer.Option(help="failures | all | none: the episodes saved for vgym view")
    ] = "failures",
    count_errors_as_failures: Annotated[
        bool,
        typer.Option("--count-errors-as-failures",
                     help="score episodes that could not run (media errors, requests a server refused) as "
                     "failures instead of leaving "
                     "them out of accuracy and pass@k"),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="episodes in flight")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="most tokens per model turn")] = 256,
) -> None:
    """Evaluate a policy on task suites (seeded, resumable); prints a summary table and writes report.json,
    report.md (every column, with a legend), plots and view.html."""
    from vgym.eval.evaluate import EvalConfig, run_eval
    from vgym.eval.plots import write_plots
    from vgym.eval.tables import write_markdown
    from vgym.eval.viewer import build_view

    logging.basicConfig(level=logging.WARNING)
    overrides = parse_task_config(task_config or (), task_config_file)
    if clip_dir:
        overrides["clip_dir"] = str(clip_dir)
    config = EvalConfig(
        policy=policy,
        suite=tuple(suite),
        n=n,
        k=k,
        seed=seed,
        tools=_eval_tools(tools),
        difficulties=tuple(difficulty) if difficulty else None,
        task_config=overrides,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        save_trajectories=save_trajectories,
        count_errors_as_failures=count_errors_as_failures,
    )
    with _progress_bars() as progress:
        report = run_eval(config, out, progress)
    print_eval_report(report)
    written = [out / "report.json"]
    write_markdown(report, out / "report.md")
    written += [out / "report.md", *write_plots(report, out / "plots", run_name=out.resolve().name)]
    saved = [p for folder in ("failures", "trajectories") for p in (out / folder).glob("*.jsonl")]
    if saved:  # the trajectories the run kept (--save-trajectories)
        written.append(build_view(out, out / "view.html"))
    for path in written:
        print(path)  # plain print: whole paths, not wrapped by rich, so scripts can use them


def _eval_tools(spec: str) -> str | tuple[str, ...]:
    """``vgym eval --tools``: ``oracle`` as it is, else :func:`~vgym.app.options.parse_tools` (``default``,
    ``off`` or checked tool names)."""
    if spec.strip() == "oracle":
        return "oracle"
    chosen = parse_tools(spec)
    return "default" if chosen is None else "off" if chosen == () else chosen


def print_eval_report(report: dict[str, Any]) -> None:
    """Print the terminal summary of an eval report: the main columns (``report.md`` has them all, with a
    legend) and the report's notes.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.
    """
    from vgym.eval.tables import table_cells

    config = report["config"]
    tools = config.get("tools", "default")
    tools = ",".join(tools) if isinstance(tools, list) else tools
    table = Table(title=f"{config['policy']} · n={report['n']}, k={report['k']}, tools={tools}",
                  box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)  # 80 columns hold it (k = 1)
    head, rows = table_cells(report, terminal=True)
    for col in head:  # task names never break, nor an interval ("[0.10, 0.45]", set under its value)
        wide = 12 if col.endswith("CI]") else None
        table.add_column(col.replace(" [", "\n[").replace("could not run", "could not\nrun"),
                         no_wrap=col == "task", overflow="fold", min_width=wide)
    last_group = max((i for i, (kind, _) in enumerate(rows) if kind == "group"), default=-1)
    for i, (kind, cells) in enumerate(rows):  # a rule between the groups and the pooled rows
        cells = [c.replace(" [", "\n[").replace(" (n<", "\n(n<") for c in cells]
        table.add_row(*cells, style=None if kind == "group" else "bold", end_section=i == last_group)
    console.print(table)
    for note in report.get("notes", []):
        console.print(Text.assemble(("note: ", "yellow"), note))
    console.print("every column, with a legend: report.md")


@app.command(epilog=EPILOG)
def compare(
    run_a: Annotated[Path, typer.Argument(help="baseline run folder (with report.json)")],
    run_b: Annotated[Path, typer.Argument(help="run folder compared against it")],
) -> None:
    """Per-task avg@k deltas (B - A) with 95 % bootstrap intervals and whether they are significant."""
    from vgym.eval.reports import MIN_CI_EPISODES, load_report
    from vgym.eval.reports import compare as compare_reports

    reports = [load_report(run) for run in (run_a, run_b)]  # a missing folder or report: one line, exit 2
    table = Table(title=f"avg@k: {run_b} minus {run_a}")
    for col in ("task", "diff", "A", "B", "delta [95% CI]", "significant", "test"):
        table.add_column(col)
    for r in compare_reports(*reports)["rows"]:
        ci = (f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r["ci"] is not None else f"(n<{MIN_CI_EPISODES})")
        table.add_row(r["task"], "-" if r["difficulty"] is None else str(r["difficulty"]), f"{r['a']:.3f}",
                      f"{r['b']:.3f}", f"{r['delta']:+.3f} {ci}",
                      ("yes" if r["significant"] else "no") if r["ci"] is not None else "-",
                      "paired" if r["paired"] else "unpaired")
    console.print(table)


class _progress_bars:
    """Context manager yielding a ``progress(stage, done, total)`` callback drawn as rich bars."""

    def __enter__(self):  # type: ignore[no-untyped-def]
        from transformers.utils import logging as hf_logging

        # our bars only; the CLI is an entry point, so global settings are fine
        hf_logging.disable_progress_bar()
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console)
        self.bars.__enter__()
        self.ids: dict[str, Any] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.ids:
            self.ids[stage] = self.bars.add_task(stage, total=total)
        self.bars.update(self.ids[stage], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)  # type: ignore[arg-type]


def _split_global(args: Sequence[str]) -> tuple[list[str], bool, list[str]]:
    """``--import MODULE`` (or ``--import=MODULE``) and ``--debug`` taken from anywhere before a ``--``;
    returns (modules, debug, the other arguments in order)."""
    modules, debug, rest, i = [], False, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg == "--import":
            if i + 1 >= len(args):
                raise InvalidConfigError("--import needs a module name or a .py path")
            modules.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--import="):
            modules.append(arg.split("=", 1)[1])
        elif arg == "--debug":
            debug = True
        else:
            rest.append(arg)
        i += 1
    return modules, debug, rest


def main(argv: Sequence[str] | None = None) -> None:
    """The ``vgym`` console script: plugins first, then the command.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Raises:
        SystemExit: always — 0 on success, 2 for a user's mistake (one line on stderr), click's own codes for
            usage errors; any other exception (a bug) propagates with its traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        modules, debug, rest = _split_global(args)
        load_plugins(modules)
        app(args=rest, prog_name="vgym")
    except VgymError as exc:
        if debug:
            raise
        errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
