"""vgym: a gym where vision-language models learn to reason with visual tools.

Importing ``vgym`` registers the built-in tools and tasks (and their gymnasium ids ``vgym/<Task>-v<N>``), so
``gymnasium.make("vgym/VisualSearch-v0")`` works after ``import vgym``. Importing changes no global state beyond
those registrations.
"""

from vgym.env import EnvConfig, VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError, UnknownNameError, VgymError
from vgym.task import TASKS, Sample, Solution, Task, register_task
from vgym.tooling import TOOLS, Tool, ToolContext, ToolResult

from vgym import tasks as _tasks  # noqa: E402,F401  (registers built-in tasks)
from vgym import tools as _tools  # noqa: E402,F401  (registers built-in tools)

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
