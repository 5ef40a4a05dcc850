"""Task families (one module per family); importing this package registers them and their gymnasium ids."""

from vgym.tasks import counting, visual_search

__all__ = ["counting", "visual_search"]
