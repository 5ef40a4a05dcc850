"""The entry layer: the ``vgym`` command line, YAML recipes, the quickstart and the SFT pipeline.

Modules: :mod:`~vgym.app.cli` (the typer app; progress bars and printing live here only),
:mod:`~vgym.app.recipes` (``vgym train --config``), :mod:`~vgym.app.quickstart` (``vgym quickstart``) and
:mod:`~vgym.app.pipeline` (oracle data → SFT → held-out evaluation, shared by quickstart and ``vgym sft``).

May import everything; it is the only part of vgym that imports :mod:`vgym.trainers`. Nothing imports it.
"""
