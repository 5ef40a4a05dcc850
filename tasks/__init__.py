"""Task families, one module per family (``vgym.tasks``). Nothing is imported here: :mod:`vgym.catalog`
registers each built-in task by name and its module loads on first use. A task module may import the ``vgym``
root contracts, :mod:`vgym.data` and other task modules; never tools, the env, rollout, policies, eval or
trainers."""
