"""vgym: a gym where vision-language models learn to reason with visual tools.

The package root holds the contracts a task or tool author needs: the env (:mod:`vgym.env`), its spaces
(:mod:`vgym.spaces`), the action protocol (:mod:`vgym.protocol`), registries (:mod:`vgym.registry`), the task
contract (:mod:`vgym.task`), the tool contract (:mod:`vgym.tooling`) and how tools run
(:mod:`vgym.tool_runtime`), rewards (:mod:`vgym.rewards`) and errors (:mod:`vgym.errors`); none of them
imports a model library, the trainers, eval or the CLI. Subpackages, in import order: :mod:`vgym.data` →
``vgym.tasks`` / ``vgym.tools`` → the env → :mod:`vgym.rollout` (with :mod:`vgym.policies` and
:mod:`vgym.engine`) → :mod:`vgym.eval` / ``vgym.trainers`` → :mod:`vgym.app` (CLI, recipes);
``tests/test_imports.py`` holds the code to that order.

Importing ``vgym`` registers the built-in tasks (with their gymnasium ids ``vgym/<Task>-v<N>``) and tools by
name (:mod:`vgym.catalog`); each module loads on first use, so ``gymnasium.make("vgym/VisualSearch-v0")``
works after ``import vgym`` without importing torch. Importing changes no global state beyond those
registrations. The names below are the contracts, importable from here or from their modules.
"""

from vgym.catalog import register_builtins
from vgym.env import EnvConfig, VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError, UnknownNameError, VgymError
from vgym.task import TASKS, Sample, Solution, Task, register_task
from vgym.tooling import TOOLS, Tool, ToolContext, ToolResult

register_builtins()

__version__ = "0.1.0"

__all__ = [
    "EnvConfig",
    "VisualToolEnv",
    "VgymError",
    "UnknownNameError",
    "InvalidConfigError",
    "ToolError",
    "TASKS",
    "TOOLS",
    "Task",
    "Sample",
    "Solution",
    "register_task",
    "Tool",
    "ToolContext",
    "ToolResult",
]
