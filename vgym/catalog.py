"""vgym's built-in tasks and tools, registered by name without importing them.

Contents: :data:`BUILTIN_TASKS`, :data:`BUILTIN_TOOLS`, :func:`register_builtins`.

``import vgym`` calls :func:`register_builtins`: every built-in task gets its registry name and gymnasium id,
every built-in tool its registry name, and each module is imported on first use (``TASKS.get``, ``TOOLS.get``,
``gymnasium.make``). A crop episode of ``vgym/VisualSearch-v0`` therefore imports the visual-search task and
the crop tool only — no torch, matplotlib, Ray, OCR or ONNX runtime. A new task or tool file under ``tasks/``
or ``tools/`` gets a line here; ``tests/test_catalog.py`` imports every module of those folders and fails when
a registered name, class or version is missing from, or differs from, these tables.
"""

from __future__ import annotations

from vgym.task import register_task_lazily
from vgym.tooling import TOOLS

__all__ = ["BUILTIN_TASKS", "BUILTIN_TOOLS", "register_builtins"]

BUILTIN_TASKS: tuple[tuple[str, str, int], ...] = (
    ("visual_search", "vgym.tasks.visual_search:VisualSearchTask", 0),
    ("counting", "vgym.tasks.counting:CountingTask", 0),
    ("chart_qa", "vgym.tasks.chart_qa:ChartQaTask", 0),
    ("geometry", "vgym.tasks.geometry:GeometryTask", 0),
    ("spatial_2d", "vgym.tasks.spatial_2d:Spatial2dTask", 0),
    ("depth_3d", "vgym.tasks.depth_3d:Depth3dTask", 0),
    ("box_grounding", "vgym.tasks.box_grounding:BoxGroundingTask", 0),
    ("video_grounding", "vgym.tasks.video_grounding:VideoGroundingTask", 0),
    ("video_qa", "vgym.tasks.video_qa:VideoQaTask", 0),
    ("multi_tool", "vgym.tasks.multi_tool:MultiToolTask", 0),
    ("real_mini", "vgym.tasks.real_mini:RealMiniTask", 0),
    ("vgym_jsonl", "vgym.tasks.local_data:VgymJsonlTask", 0),
    ("chartqa_dataset", "vgym.tasks.local_data:ChartqaTask", 0),
    ("vstar", "vgym.tasks.local_data:VstarTask", 0),
    ("refcoco", "vgym.tasks.local_data:RefcocoTask", 0),
    ("charades_sta", "vgym.tasks.local_data:CharadesStaTask", 0),
)
"""(registry name, ``"module:Class"``, version) of every built-in task."""

BUILTIN_TOOLS: tuple[tuple[str, str], ...] = (
    ("crop", "vgym.tools.crop"),
    ("ground", "vgym.tools.ground"),
    ("point", "vgym.tools.point"),
    ("depth", "vgym.tools.depth"),
    ("segment", "vgym.tools.segment"),
    ("measure", "vgym.tools.measure"),
    ("ocr", "vgym.tools.ocr"),
    ("sample_frames", "vgym.tools.video"),
    ("get_frame", "vgym.tools.video"),
    ("image_info", "vgym.tools.image_info"),
)
"""(registry name, module) of every built-in tool; importing the module registers the tool."""


def register_builtins() -> None:
    """Register every built-in task (with its gymnasium id) and tool lazily; called once by ``import vgym``.

    Raises:
        VgymError: if a name is taken already.
    """
    for name, target, version in BUILTIN_TASKS:
        register_task_lazily(name, target, version)
    for name, module in BUILTIN_TOOLS:
        TOOLS.register_lazy(name, module)

