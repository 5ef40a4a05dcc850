"""The worker that runs one env's tool calls: a thread, or an isolated process that is restarted and recycled.

Contents: :class:`ResourcePool`, :data:`RESOURCES`, :func:`call_backend`, :class:`ToolWorker`.

:class:`~vgym.tool_runtime.ToolRuntime` hands every call with a timeout, or under "subprocess" isolation, to its
:class:`ToolWorker`, which keeps one worker: a thread (isolation "none"; a hung thread cannot be killed, so it is
abandoned) or a process (isolation "subprocess", forked from a fork server that has imported vgym, so a restart
takes ~0.1 s). A worker is readied (started, the backend's resource loaded) before a call's clock starts, under its
own limit. A worker that hangs past the timeout or dies (a crash, an out-of-memory kill, also while idle) is
discarded and the next call starts a fresh one; a worker process is also retired after ``max_calls_per_worker``
calls or once a call leaves its RSS above ``max_worker_rss_mb``, which bounds a leaking backend. Every failure is
a :class:`~vgym.errors.ToolError` for the model, and :attr:`ToolWorker.counters` records it.

:mod:`vgym.tool_runtime` re-exports :class:`ResourcePool` and :data:`RESOURCES`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vgym.errors import ToolError
from vgym.tooling import Tool, ToolContext, ToolResult

if TYPE_CHECKING:
    from vgym.tool_runtime import ToolRuntimeConfig

__all__ = ["ResourcePool", "RESOURCES", "call_backend", "ToolWorker"]

logger = logging.getLogger(__name__)


class ResourcePool:
    """Loaded backend resources, built once per process per (tool, backend, options)."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, tool: Tool, backend: str, options: Mapping[str, Any]) -> Any:
        """The resource of ``tool``'s ``backend`` for ``options``, loading it on first use (None without loader)."""
        loader = tool.backend(backend).loader
        if loader is None:
            return None
        key = json.dumps([tool.name, backend, options], sort_keys=True, default=str)
        with self._lock:
            if key not in self._items:
                logger.info("loading %s/%s with %s", tool.name, backend, options)
                self._items[key] = loader(options)
            return self._items[key]


RESOURCES = ResourcePool()
"""This process's loaded backends (a model is loaded once however many envs use it)."""


def call_backend(tool: Tool, backend: str, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
    """Load the backend's resource (once per process) and run it; what worker threads and processes execute.

    Raises:
        ToolError: for a bad call (the backend's own message, for the model).
    """
    ctx.resource = RESOURCES.get(tool, backend, ctx.options)
    return tool(ctx, arguments, backend=backend)


def _load_resource(tool: Tool, backend: str, options: dict[str, Any]) -> None:
    """Ready a worker: imports done (it runs at all), the backend's resource loaded."""
    RESOURCES.get(tool, backend, options)


def _rss_mb() -> float:
    """This process's resident memory in MiB (Linux: current, from /proc; elsewhere: the peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _worker_call(tool: Tool, backend: str, ctx: ToolContext,
                 arguments: dict[str, Any]) -> tuple[ToolResult | None, str | None, float]:
    """What a worker process runs: ``(result, None, rss_mb)`` or ``(None, ToolError message, rss_mb)``, so the
    RSS is reported after failed calls too (any other exception is a bug and propagates)."""
    try:
        return call_backend(tool, backend, ctx, arguments), None, _rss_mb()
    except ToolError as exc:
        return None, str(exc), _rss_mb()


def _worker_context() -> Any:
    """How worker processes start: forked from a fork server that has imported vgym once (a restart then takes a
    fork, ~0.1 s, instead of a spawn's fresh interpreter and imports, ~3.5 s on 2 CPU cores), where the platform
    has fork servers; else spawned. Either way a worker shares no threads, locks or CUDA state with the rollout.

    The fork server is per process and shared by every user of the "forkserver" start method; the preload list only
    applies when it starts, so a server someone else started first works too, just without the head start.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["vgym"])
        return context
    return multiprocessing.get_context("spawn")


class ToolWorker:
    """One env's tool worker (a thread, or a process under "subprocess" isolation), started on first use.

    Each method takes the runtime's current :class:`~vgym.tool_runtime.ToolRuntimeConfig`, so a config replaced
    between calls applies from the next call on.

    Attributes:
        executor: the single-worker pool, or None before the first call and after the worker was discarded.
        counters: ``{"worker_starts", "timeouts", "crashes", "recycled"}``: workers started (thread or process),
            calls that timed out, workers that died during a call, and "subprocess" workers retired by
            ``max_calls_per_worker`` / ``max_worker_rss_mb`` (diagnostics for soak runs).
        last_rss_mb: the "subprocess" worker's RSS after the last call (None before one).
    """

    def __init__(self) -> None:
        self.executor: cf.Executor | None = None
        self.counters = {"worker_starts": 0, "timeouts": 0, "crashes": 0, "recycled": 0}
        self.last_rss_mb: float | None = None
        self._loaded: set[str] = set()
        self._calls = 0

    def run(self, tool: Tool, backend: str, ctx: ToolContext, arguments: dict[str, Any],
            config: ToolRuntimeConfig) -> ToolResult:
        """Run one call on the worker (readied first), within ``config.timeout_s``.

        Returns:
            The backend's result.

        Raises:
            ToolError: for a backend error, a timeout, a worker that could not be readied in ``start_timeout_s``
                or a dead worker process; a hung or dead worker is discarded, so the next call gets a fresh one.
        """
        timeout = config.timeout_s
        pool = self._ready(tool, backend, ctx.options, config)
        isolated = config.isolation == "subprocess"
        try:
            if isolated:
                worker_ctx = ToolContext(list(ctx.images), dict(ctx.metadata), ctx.rng, ctx.max_pixels, ctx.video,
                                         dict(ctx.arrays), None, dict(ctx.options))
                future = pool.submit(_worker_call, tool, backend, worker_ctx, arguments)
            else:
                future = pool.submit(call_backend, tool, backend, ctx, arguments)
            # cf.wait, not future.result(timeout): a backend's own TimeoutError must not read as our timeout
            if not cf.wait([future], timeout=timeout).done:
                self.counters["timeouts"] += 1
                self.abandon()  # a hung call keeps its worker; later calls get a fresh one
                raise ToolError(f"{tool.name} timed out after {timeout} s; try a smaller input or another call.")
            out = future.result()
        except cf.BrokenExecutor:  # the worker process died (crash, out-of-memory kill)
            self.counters["crashes"] += 1
            self.abandon()
            raise ToolError(f"{tool.name} crashed its worker process (backend {backend!r}); the call was lost.") from None
        if not isolated:
            return out  # type: ignore[no-any-return]
        result, error, rss = out
        self._calls += 1
        self.last_rss_mb = rss
        if ((config.max_calls_per_worker is not None and self._calls >= config.max_calls_per_worker)
                or (config.max_worker_rss_mb is not None and rss > config.max_worker_rss_mb)):
            self.counters["recycled"] += 1
            self.retire()
        if error is not None:
            raise ToolError(error)
        return result  # type: ignore[no-any-return]

    def _ready(self, tool: Tool, backend: str, options: Mapping[str, Any], config: ToolRuntimeConfig) -> cf.Executor:
        """The worker pool, started if needed, with ``tool``'s backend resource loaded, within ``start_timeout_s``.

        Raises:
            ToolError: if the worker is not ready in time or dies while starting (it is discarded).
        """
        if self.executor is not None and getattr(self.executor, "_broken", False):  # it died while idle (OOM killer)
            self.counters["crashes"] += 1
            self.abandon()
        if self.executor is None:
            self.executor = self._new_executor(config.isolation)
            self._loaded, self._calls = set(), 0
            self.counters["worker_starts"] += 1
        key = json.dumps([tool.name, backend, options], sort_keys=True, default=str)
        if key not in self._loaded:
            limit = config.start_timeout_s
            try:
                future = self.executor.submit(_load_resource, tool, backend, dict(options))
                if not cf.wait([future], timeout=limit).done:
                    self.counters["timeouts"] += 1
                    self.abandon()
                    raise ToolError(f"{tool.name} could not be readied within {limit} s (backend {backend!r}: "
                                    "worker start-up and loading); the call was not run.")
                future.result()  # a loader's own exception propagates: a config error, such as a missing model
            except cf.BrokenExecutor:
                self.counters["crashes"] += 1
                self.abandon()
                raise ToolError(f"{tool.name} crashed its worker process while loading (backend {backend!r}); the "
                                "call was not run.") from None
            self._loaded.add(key)
        return self.executor

    @staticmethod
    def _new_executor(isolation: str) -> cf.Executor:
        if isolation == "subprocess":
            return cf.ProcessPoolExecutor(max_workers=1, mp_context=_worker_context())
        return cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vgym-tool")

    def retire(self) -> None:
        """Let an idle worker process exit (its memory goes back to the system); killed if it does not in 5 s."""
        pool, self.executor = self.executor, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False)
        # Wait on the sentinels (readable once a process ended) rather than join: the pool's own thread joins them.
        ended = multiprocessing.connection.wait([p.sentinel for p in processes], timeout=5.0)
        for proc in processes:
            if proc.sentinel not in ended:
                proc.kill()

    def abandon(self) -> None:
        """Discard the worker without waiting: a worker process is killed, a thread left to finish (idempotent)."""
        if self.executor is not None:
            pool = self.executor
            self.executor = None
            if isinstance(pool, cf.ProcessPoolExecutor):
                for proc in list(getattr(pool, "_processes", {}).values()):  # a hung worker process is killed
                    proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
