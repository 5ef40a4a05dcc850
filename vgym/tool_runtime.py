"""Running tools: backend selection, lazy loading, a deterministic result cache, timeouts and process
isolation.

Contents: :class:`ToolRuntimeConfig`, :class:`ResourcePool`, :data:`RESOURCES`, :func:`call_backend`,
:class:`ToolWorker`, :class:`CallInfo`, :class:`ToolCache`, :class:`ToolServer`, :func:`tool_server_name`,
:class:`ToolRuntime`.

One :class:`ToolRuntime` serves one env. Every failure of a call — invalid arguments, a backend that raises,
hangs past the timeout or kills its worker process — comes back as a :class:`~vgym.errors.ToolError` for the
model; the episode goes on, and the next call gets a fresh worker where the old one was hung or dead. A worker
is readied (started, its backend's resource loaded) before a call's clock starts, under its own limit. Under
"subprocess" isolation a leaking backend is contained by recycling the worker process after N calls or past an
RSS limit.

**Workers.** A :class:`ToolRuntime` hands every call with a timeout, or under "subprocess" isolation, to its
:class:`ToolWorker`, which keeps one worker: a thread (isolation "none"; a hung thread cannot be killed, so it
is abandoned) or a process (isolation "subprocess", forked from a fork server that has imported vgym, so a
restart takes ~0.1 s). A worker that hangs past the timeout or dies (a crash, an out-of-memory kill, also
while idle) is discarded and the next call starts a fresh one; a worker process is also retired after
``max_calls_per_worker`` calls or once a call leaves its RSS above ``max_worker_rss_mb``, which bounds a
leaking backend. Every failure is a :class:`~vgym.errors.ToolError` for the model, and
:attr:`ToolWorker.counters` records it.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vgym.errors import InvalidConfigError, ToolError
from vgym.tooling import Tool, ToolContext, ToolResult

__all__ = ["ToolRuntimeConfig", "ResourcePool", "RESOURCES", "call_backend", "ToolWorker", "CallInfo",
           "ToolCache", "ToolServer", "tool_server_name", "ToolRuntime"]

logger = logging.getLogger(__name__)

@dataclass
class ToolRuntimeConfig:
    """How an env runs its tools."""

    backends: dict[str, str] = field(default_factory=dict)
    """Backend per tool name, e.g. ``{"ground": "opencv"}``; tools not named use their default backend."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Backend options per tool name, e.g. ``{"depth": {"model": "/models/dpt"}}`` (JSON values only)."""
    cache_dir: str | None = None
    """Folder of the result cache; None disables caching."""
    timeout_s: float | None = 60.0
    """Per-call wall-clock limit; None waits forever (and runs the call in the env's own thread)."""
    isolation: str = "none"
    """"none" (a worker thread of this process; a hung thread cannot be killed, it is abandoned), "subprocess"
    (a worker process, so a crash, a hang or an out-of-memory kill in a backend cannot take the rollout down
    and is cleaned up by killing it; the tool is pickled by reference, so its functions must be importable
    module-level functions; each env's worker loads its own copy of a backend's model) or "ray" (one named Ray
    actor per (tool, backend, options), shared by every env of the Ray job, so one copy of a detector serves
    all env workers; needs ``ray.init`` first, e.g. by ``rollout(parallel="ray")``). The actor is not
    detached: Ray ties it to the process that first asked for it (an env worker, or the driver for envs
    that run in it), so it ends when that process does, and with the job at the latest: a model-backed tool
    holds no GPU after the driver exits. If its owner goes first (a closed or replaced env worker), a call in
    flight fails as that call's error and the next call starts a fresh server under the same name."""

    start_timeout_s: float = 300.0
    """Wall-clock limit, in seconds, for readying a worker before a call's clock starts: starting a worker
    process ("subprocess": ~4 s for the first in a process, which boots the fork server, ~0.2 s after) and
    loading the backend's resource in it (a model). Not counted in ``timeout_s``, so a short ``timeout_s``
    still lets a worker start. A worker not ready in time is killed and the call fails with a ToolError."""
    max_calls_per_worker: int | None = None
    """"subprocess" only: recycle the worker process after this many calls (a backend's leak is then bounded
    by what N calls can leak; its model is reloaded in the new worker); None never recycles by count."""
    max_worker_rss_mb: float | None = None
    """"subprocess" only: recycle the worker process after any call that leaves its resident memory (RSS, MiB)
    above this; the worker's RSS then stays below this plus what one call adds. Set it well above the worker's
    RSS after loading its backends (~210 MiB after importing vgym on CPU, more with a model), or every call
    restarts it. None never checks."""

    def __post_init__(self) -> None:
        if self.isolation not in ("none", "subprocess", "ray"):
            raise InvalidConfigError(
                f"isolation must be 'none', 'subprocess' or 'ray', got {self.isolation!r}"
            )
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise InvalidConfigError(f"timeout_s must be positive or None, got {self.timeout_s}")
        if self.start_timeout_s <= 0:
            raise InvalidConfigError(f"start_timeout_s must be positive, got {self.start_timeout_s}")
        recycle = {
            "max_calls_per_worker": self.max_calls_per_worker,
            "max_worker_rss_mb": self.max_worker_rss_mb,
        }
        for name, value in recycle.items():
            if value is not None and value <= 0:
                raise InvalidConfigError(f"{name} must be positive or None, got {value}")
        if self.isolation != "subprocess" and any(v is not None for v in recycle.values()):
            raise InvalidConfigError(
                f"max_calls_per_worker and max_worker_rss_mb recycle a worker process, so they "
                f"need isolation='subprocess'; got isolation={self.isolation!r} with {recycle}"
            )


class ResourcePool:
    """Loaded backend resources, built once per process per (tool, backend, options)."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, tool: Tool, backend: str, options: Mapping[str, Any]) -> Any:
        """The resource of ``tool``'s ``backend`` for ``options``, loading it on first use (None without
        loader)."""
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
    """How worker processes start: forked from a fork server that has imported vgym once (a restart then takes
    a fork, ~0.1 s, instead of a spawn's fresh interpreter and imports, ~3.5 s on 2 CPU cores), where the
    platform has fork servers; else spawned. Either way a worker shares no threads, locks or CUDA state with
    the rollout.

    The fork server is per process and shared by every user of the "forkserver" start method; the preload list
    only applies when it starts, so a server someone else started first works too, just without the head
    start.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["vgym"])
        return context
    return multiprocessing.get_context("spawn")


class ToolWorker:
    """One env's tool worker (a thread, or a process under "subprocess" isolation), started on first use.

    Each method takes the runtime's current :class:`ToolRuntimeConfig`, so a config replaced
    between calls applies from the next call on.

    Attributes:
        executor: the single-worker pool, or None before the first call and after the worker was discarded.
        counters: ``{"worker_starts", "timeouts", "crashes", "recycled"}``: workers started (thread or
            process), calls that timed out, workers that died during a call, and "subprocess" workers retired
            by ``max_calls_per_worker`` / ``max_worker_rss_mb`` (diagnostics for soak runs).
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
            ToolError: for a backend error, a timeout, a worker that could not be readied in
                ``start_timeout_s`` or a dead worker process; a hung or dead worker is discarded, so the next
                call gets a fresh one.
        """
        timeout = config.timeout_s
        pool = self._ready(tool, backend, ctx.options, config)
        isolated = config.isolation == "subprocess"
        try:
            if isolated:
                worker_ctx = ToolContext(
                    list(ctx.images),
                    dict(ctx.metadata),
                    ctx.rng,
                    ctx.max_pixels,
                    ctx.video,
                    dict(ctx.arrays),
                    None,
                    dict(ctx.options),
                )
                future = pool.submit(_worker_call, tool, backend, worker_ctx, arguments)
            else:
                future = pool.submit(call_backend, tool, backend, ctx, arguments)
            # cf.wait, not future.result(timeout): a backend's own TimeoutError must not read as our timeout
            if not cf.wait([future], timeout=timeout).done:
                self.counters["timeouts"] += 1
                self.abandon()  # a hung call keeps its worker; later calls get a fresh one
                raise ToolError(
                    f"{tool.name} timed out after {timeout} s; try a smaller input or another call."
                )
            out = future.result()
        except cf.BrokenExecutor:  # the worker process died (crash, out-of-memory kill)
            self.counters["crashes"] += 1
            self.abandon()
            raise ToolError(
                f"{tool.name} crashed its worker process (backend {backend!r}); the call was lost."
            ) from None
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

    def _ready(
        self, tool: Tool, backend: str, options: Mapping[str, Any], config: ToolRuntimeConfig
    ) -> cf.Executor:
        """The worker pool, started if needed, with ``tool``'s backend resource loaded, within
        ``start_timeout_s``.

        Raises:
            ToolError: if the worker is not ready in time or dies while starting (it is discarded).
        """
        # it died while idle (OOM killer)
        if self.executor is not None and getattr(self.executor, "_broken", False):
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
                    raise ToolError(
                        f"{tool.name} could not be readied within {limit} s (backend {backend!r}: "
                        "worker start-up and loading); the call was not run."
                    )
                # a loader's own exception propagates: a config error, such as a missing model
                future.result()
            except cf.BrokenExecutor:
                self.counters["crashes"] += 1
                self.abandon()
                raise ToolError(
                    f"{tool.name} crashed its worker process while loading (backend {backend!r}); the "
                    "call was not run."
                ) from None
            self._loaded.add(key)
        return self.executor

    @staticmethod
    def _new_executor(isolation: str) -> cf.Executor:
        if isolation == "subprocess":
            return cf.ProcessPoolExecutor(max_workers=1, mp_context=_worker_context())
        return cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vgym-tool")

    def retire(self) -> None:
        """Let an idle worker process exit (its memory goes back to the system); killed if it does not in 5
        s."""
        pool, self.executor = self.executor, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False)
        # Wait on the sentinels (readable once a process ended) rather than join: the pool's own thread joins
        # them.
        ended = multiprocessing.connection.wait([p.sentinel for p in processes], timeout=5.0)
        for proc in processes:
            if proc.sentinel not in ended:
                proc.kill()

    def abandon(self) -> None:
        """Discard the worker without waiting: a worker process is killed, a thread left to finish
        (idempotent)."""
        if self.executor is not None:
            pool = self.executor
            self.executor = None
            if isinstance(pool, cf.ProcessPoolExecutor):
                for proc in list(getattr(pool, "_processes", {}).values()):  # a hung worker process is killed
                    proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class CallInfo:
    """What happened in one call (merged into the env's per-call record, which also times the call)."""

    backend: str
    cache_hit: bool = False


class ToolCache:
    """Results on disk keyed by (tool, version, backend, options, arguments, inputs); replays are
    byte-identical.

    A result is stored as ``<dir>/<key[:2]>/<key>.npz`` holding the text and each image array.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(tool: Tool, backend: str, arguments: Mapping[str, Any], ctx: ToolContext) -> str:
        """SHA-256 over everything a result may depend on: the tool (name, version), backend, options,
        arguments, every episode image and ground-truth array (shape, dtype, bytes), the scene metadata and
        the video's bytes."""
        h = hashlib.sha256()
        head = [tool.name, tool.version, backend, dict(ctx.options), dict(arguments), dict(ctx.metadata)]
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        for array in [*ctx.images, *(ctx.arrays[k] for k in sorted(ctx.arrays))]:
            h.update(_array_digest(array))
        if ctx.video is not None:
            h.update(_file_digest(ctx.video).encode())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def load(self, key: str) -> ToolResult | None:
        """The stored result, or None."""
        path = self._path(key)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            n = int(data["num_images"])
            return ToolResult(text=str(data["text"]), images=[data[f"image_{i}"].copy() for i in range(n)])

    def store(self, key: str, result: ToolResult) -> None:
        """Write ``result`` atomically (temporary file, then rename).

        Raises:
            OSError: if the file cannot be written (e.g. a full disk); the temporary file is removed.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"image_{i}": np.asarray(im) for i, im in enumerate(result.images)}
        # unique across Ray workers too
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npz")
        try:
            np.savez(tmp, text=np.array(result.text), num_images=np.array(len(result.images)), **arrays)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


_DIGESTS: dict[tuple[str, float, int], str] = {}
_ARRAY_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}


def _array_digest(array: np.ndarray) -> bytes:
    """BLAKE2b of an array's shape, dtype and bytes, memoised while the array lives.

    An episode's images stay the same objects across its steps, so a 4K image (25 MB) is hashed once per
    episode, not once per call. Arrays must not be mutated in place after they were hashed (the env never
    does).
    """
    entry = _ARRAY_DIGESTS.get(id(array))
    if entry is not None and entry[0]() is array:
        return entry[1]
    h = hashlib.blake2b(f"{array.shape}{array.dtype}".encode(), digest_size=32)
    h.update(np.ascontiguousarray(array).data)
    digest = h.digest()
    if len(_ARRAY_DIGESTS) > 4096:  # drop entries of dead arrays now and then
        for key in [k for k, (ref, _) in _ARRAY_DIGESTS.items() if ref() is None]:
            del _ARRAY_DIGESTS[key]
    _ARRAY_DIGESTS[id(array)] = (weakref.ref(array), digest)
    return digest


def _file_digest(path: str) -> str:
    """SHA-256 of a file's bytes, memoised by (path, mtime, size)."""
    stat = Path(path).stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _DIGESTS[key]


class ToolServer:
    """The body of a shared Ray actor serving one (tool, backend, options): loads the resource once, then runs
    calls."""

    def __init__(self) -> None:
        self.calls = 0

    def call(self, tool: Tool, backend: str, ctx: ToolContext,
             arguments: dict[str, Any]) -> tuple[ToolResult | None, str | None]:
        """``(result, None)``, or ``(None, message)`` when the backend raised a :class:`ToolError` (an episode
        event, passed back as a value; any other exception is a bug and propagates)."""
        self.calls += 1
        try:
            return call_backend(tool, backend, ctx, arguments), None
        except ToolError as exc:
            return None, str(exc)

    def stats(self) -> dict[str, Any]:
        """``{"pid", "calls", "loaded"}``: this process, calls served, resources loaded (tests check
        sharing)."""
        import os

        return {"pid": os.getpid(), "calls": self.calls, "loaded": len(RESOURCES._items)}


def tool_server_name(tool: Tool, backend: str, options: Mapping[str, Any]) -> str:
    """The Ray actor name of the server of ``tool``'s ``backend`` with ``options``."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"vgym-tool-{tool.name}-{backend}-{digest}"


_SERVERS: dict[str, Any] = {}
"""This process's handles of the tool servers it has called, by actor name. Ray ends a non-detached actor
once no handle to it is left, so holding them keeps each server up for as long as this process lives, and
ties it to this process (or its owner) rather than to the cluster."""


def _call_tool_server(tool: Tool, backend: str, ctx: ToolContext, arguments: dict[str, Any],
                      timeout: float | None) -> ToolResult:
    """Run a call on the shared actor (created on first use by whichever env asks first)."""
    import ray

    if not ray.is_initialized():
        raise InvalidConfigError(
            "tool isolation 'ray' needs a running Ray (ray.init(...) or rollout(parallel='ray'))"
        )
    name = tool_server_name(tool, backend, ctx.options)
    server = _SERVERS.get(name)
    if server is None:
        server = ray.remote(ToolServer).options(name=name, get_if_exists=True, max_concurrency=1).remote()
        _SERVERS[name] = server
    remote_ctx = ToolContext(list(ctx.images), dict(ctx.metadata), ctx.rng, ctx.max_pixels, ctx.video,
                             dict(ctx.arrays), None, dict(ctx.options))
    ref = server.call.remote(tool, backend, remote_ctx, arguments)
    try:
        result, error = ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref)
        raise ToolError(
            f"{tool.name} timed out after {timeout} s; try a smaller input or another call."
        ) from None
    # the server died; the next call starts a fresh one under the same name
    except ray.exceptions.RayActorError:
        _SERVERS.pop(name, None)
        raise ToolError(
            f"{tool.name} crashed its tool server (backend {backend!r}); the call was lost."
        ) from None
    if error is not None:
        raise ToolError(error)
    return result  # type: ignore[return-value]


class ToolRuntime:
    """Runs tool calls for one env with caching, a timeout and optional process isolation.

    Calls with a timeout, and every call under "subprocess" isolation, run on a
    :class:`ToolWorker`, which reads ``config`` at each call (replacing ``config`` between calls
    takes effect at the next one).

    Attributes:
        counters: ``{"worker_starts", "timeouts", "crashes", "recycled"}``: workers started (thread or
            process), calls that timed out, workers that died during a call, and "subprocess" workers retired
            by ``max_calls_per_worker`` / ``max_worker_rss_mb`` (diagnostics for soak runs).
        last_worker_rss_mb: the "subprocess" worker's RSS after the last call (None before one).
    """

    def __init__(self, config: ToolRuntimeConfig | None = None) -> None:
        self.config = config or ToolRuntimeConfig()
        self.cache = ToolCache(self.config.cache_dir) if self.config.cache_dir else None
        self._worker = ToolWorker()
        self.counters = self._worker.counters  # the same dict: the worker counts, the runtime shows

    def backend_name(self, tool: Tool) -> str:
        """The backend this runtime uses for ``tool``."""
        return self.config.backends.get(tool.name, tool.default_backend)

    def call(self, tool: Tool, ctx: ToolContext, arguments: dict[str, Any]) -> tuple[ToolResult, CallInfo]:
        """Run one call.

        Returns:
            ``(result, info)``.

        Raises:
            ToolError: for invalid arguments, a backend error, a timeout, a worker that could not be readied
                in ``start_timeout_s`` or a dead worker process.
        """
        backend = self.backend_name(tool)
        info = CallInfo(backend=backend)
        tool.backend(backend)  # unknown backend names are config errors: raise UnknownNameError now
        tool.validate(arguments)
        ctx.options = self.config.options.get(tool.name, {})
        key = ToolCache.key(tool, backend, arguments, ctx) if self.cache else None
        if key is not None and (hit := self.cache.load(key)) is not None:  # type: ignore[union-attr]
            info.cache_hit = True
            return hit, info
        result = self._run(tool, backend, ctx, arguments)
        if key is not None:
            try:
                self.cache.store(key, result)  # type: ignore[union-attr]
            # the cache is an optimisation: a full disk must not fail a call that worked
            except OSError as exc:
                logger.warning(
                    "tool cache %s: could not store a %s result: %s", self.config.cache_dir, tool.name, exc
                )
        return result, info

    def _run(self, tool: Tool, backend: str, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResult:
        if self.config.isolation == "none" and self.config.timeout_s is None:
            return call_backend(tool, backend, ctx, arguments)
        if self.config.isolation == "ray":
            return _call_tool_server(tool, backend, ctx, arguments, self.config.timeout_s)
        return self._worker.run(tool, backend, ctx, arguments, self.config)

    @property
    def last_worker_rss_mb(self) -> float | None:
        """The "subprocess" worker's RSS (MiB) after the last call; None before one."""
        return self._worker.last_rss_mb

    @property
    def _pool(self) -> cf.Executor | None:
        """The worker's executor (None when no worker is running); tests watch it to see an idle worker
        die."""
        return self._worker.executor

    def close(self) -> None:
        """Shut the worker down (idempotent)."""
        self._worker.abandon()
