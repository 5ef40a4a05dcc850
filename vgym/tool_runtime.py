"""Running tools: backend selection, lazy loading, a deterministic result cache, timeouts and process isolation.

Contents: :class:`ToolRuntimeConfig`, :class:`CallInfo`, :class:`ToolCache`, :class:`ToolServer`,
:func:`tool_server_name`, :class:`ToolRuntime`; re-exported from :mod:`vgym.tool_workers` (the worker that runs
calls, with its restarts and recycling): :class:`ResourcePool`, :data:`RESOURCES`.

One :class:`ToolRuntime` serves one env. Every failure of a call — invalid arguments, a backend that raises, hangs
past the timeout or kills its worker process — comes back as a :class:`~vgym.errors.ToolError` for the model;
the episode goes on, and the next call gets a fresh worker where the old one was hung or dead. A worker is readied
(started, its backend's resource loaded) before a call's clock starts, under its own limit. Under "subprocess"
isolation a leaking backend is contained by recycling the worker process after N calls or past an RSS limit.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vgym.errors import InvalidConfigError, ToolError
from vgym.tool_workers import RESOURCES, ResourcePool, ToolWorker, call_backend
from vgym.tooling import Tool, ToolContext, ToolResult

__all__ = ["ToolRuntimeConfig", "CallInfo", "ResourcePool", "RESOURCES", "ToolCache", "ToolServer", "tool_server_name",
           "ToolRuntime"]

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
    """"none" (a worker thread of this process; a hung thread cannot be killed, it is abandoned), "subprocess" (a
    worker process, so a crash, a hang or an out-of-memory kill in a backend cannot take the rollout down and is
    cleaned up by killing it; the tool is pickled by reference, so its functions must be importable module-level
    functions; each env's worker loads its own copy of a backend's model)
    or "ray" (one named Ray actor per (tool, backend, options), shared by every env of the Ray cluster, so one copy
    of a detector serves all env workers; needs ``ray.init`` first, e.g. by ``rollout(parallel="ray")``)."""

    start_timeout_s: float = 300.0
    """Wall-clock limit, in seconds, for readying a worker before a call's clock starts: starting a worker process
    ("subprocess": ~4 s for the first in a process, which boots the fork server, ~0.2 s after) and loading the
    backend's resource in it (a model). Not counted in ``timeout_s``, so a short ``timeout_s`` still lets a worker
    start. A worker not ready in time is killed and the call fails with a ToolError."""
    max_calls_per_worker: int | None = None
    """"subprocess" only: recycle the worker process after this many calls (a backend's leak is then bounded by what
    N calls can leak; its model is reloaded in the new worker); None never recycles by count."""
    max_worker_rss_mb: float | None = None
    """"subprocess" only: recycle the worker process after any call that leaves its resident memory (RSS, MiB)
    above this; the worker's RSS then stays below this plus what one call adds. Set it well above the worker's
    RSS after loading its backends (~210 MiB after importing vgym on CPU, more with a model), or every call
    restarts it. None never checks."""

    def __post_init__(self) -> None:
        if self.isolation not in ("none", "subprocess", "ray"):
            raise InvalidConfigError(f"isolation must be 'none', 'subprocess' or 'ray', got {self.isolation!r}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise InvalidConfigError(f"timeout_s must be positive or None, got {self.timeout_s}")
        if self.start_timeout_s <= 0:
            raise InvalidConfigError(f"start_timeout_s must be positive, got {self.start_timeout_s}")
        recycle = {"max_calls_per_worker": self.max_calls_per_worker, "max_worker_rss_mb": self.max_worker_rss_mb}
        for name, value in recycle.items():
            if value is not None and value <= 0:
                raise InvalidConfigError(f"{name} must be positive or None, got {value}")
        if self.isolation != "subprocess" and any(v is not None for v in recycle.values()):
            raise InvalidConfigError(f"max_calls_per_worker and max_worker_rss_mb recycle a worker process, so they "
                                     f"need isolation='subprocess'; got isolation={self.isolation!r} with {recycle}")


@dataclass
class CallInfo:
    """What happened in one call (merged into the env's per-call record, which also times the call)."""

    backend: str
    cache_hit: bool = False


class ToolCache:
    """Results on disk keyed by (tool, version, backend, options, arguments, inputs); replays are byte-identical.

    A result is stored as ``<dir>/<key[:2]>/<key>.npz`` holding the text and each image array.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(tool: Tool, backend: str, arguments: Mapping[str, Any], ctx: ToolContext) -> str:
        """SHA-256 over everything a result may depend on: the tool (name, version), backend, options, arguments,
        every episode image and ground-truth array (shape, dtype, bytes), the scene metadata and the video's bytes."""
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
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npz")  # unique across Ray workers too
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

    An episode's images stay the same objects across its steps, so a 4K image (25 MB) is hashed once per episode,
    not once per call. Arrays must not be mutated in place after they were hashed (the env never does).
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
    """The body of a shared Ray actor serving one (tool, backend, options): loads the resource once, then runs calls."""

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
        """``{"pid", "calls", "loaded"}``: this process, calls served, resources loaded (tests check sharing)."""
        import os

        return {"pid": os.getpid(), "calls": self.calls, "loaded": len(RESOURCES._items)}


def tool_server_name(tool: Tool, backend: str, options: Mapping[str, Any]) -> str:
    """The Ray actor name of the server of ``tool``'s ``backend`` with ``options``."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"vgym-tool-{tool.name}-{backend}-{digest}"


def _call_tool_server(tool: Tool, backend: str, ctx: ToolContext, arguments: dict[str, Any],
                      timeout: float | None) -> ToolResult:
    """Run a call on the shared actor (created on first use by whichever env asks first)."""
    import ray

    if not ray.is_initialized():
        raise InvalidConfigError("tool isolation 'ray' needs a running Ray (ray.init(...) or rollout(parallel='ray'))")
    server = ray.remote(ToolServer).options(name=tool_server_name(tool, backend, ctx.options), get_if_exists=True,
                                            lifetime="detached", max_concurrency=1).remote()
    remote_ctx = ToolContext(list(ctx.images), dict(ctx.metadata), ctx.rng, ctx.max_pixels, ctx.video,
                             dict(ctx.arrays), None, dict(ctx.options))
    ref = server.call.remote(tool, backend, remote_ctx, arguments)
    try:
        result, error = ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref)
        raise ToolError(f"{tool.name} timed out after {timeout} s; try a smaller input or another call.") from None
    except ray.exceptions.RayActorError:  # the server died; the next call starts a fresh one under the same name
        raise ToolError(f"{tool.name} crashed its tool server (backend {backend!r}); the call was lost.") from None
    if error is not None:
        raise ToolError(error)
    return result  # type: ignore[return-value]


class ToolRuntime:
    """Runs tool calls for one env with caching, a timeout and optional process isolation.

    Calls with a timeout, and every call under "subprocess" isolation, run on a
    :class:`~vgym.tool_workers.ToolWorker`, which reads ``config`` at each call (replacing ``config`` between calls
    takes effect at the next one).

    Attributes:
        counters: ``{"worker_starts", "timeouts", "crashes", "recycled"}``: workers started (thread or process),
            calls that timed out, workers that died during a call, and "subprocess" workers retired by
            ``max_calls_per_worker`` / ``max_worker_rss_mb`` (diagnostics for soak runs).
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
            ToolError: for invalid arguments, a backend error, a timeout, a worker that could not be readied in
                ``start_timeout_s`` or a dead worker process.
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
            except OSError as exc:  # the cache is an optimisation: a full disk must not fail a call that worked
                logger.warning("tool cache %s: could not store a %s result: %s", self.config.cache_dir, tool.name, exc)
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
        """The worker's executor (None when no worker is running); tests watch it to see an idle worker die."""
        return self._worker.executor

    def close(self) -> None:
        """Shut the worker down (idempotent)."""
        self._worker.abandon()
