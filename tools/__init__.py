"""Visual tools (one module per tool); importing this package registers them in :data:`vgym.tooling.TOOLS`."""

from vgym.tools import crop, depth, measure, segment

__all__ = ["crop", "depth", "measure", "segment"]
