"""Tools, one module per tool (``vgym.tools``). Nothing is imported here: :mod:`vgym.catalog` registers each
built-in tool by name and its module loads on first use. A tool module may import the ``vgym`` root contracts
(tooling, errors), :mod:`vgym.data` and other tool modules; never tasks, the env, rollout, policies or
trainers."""
