"""The worker extension through which a trainer in the same process loads new weights into a vLLM engine.

Contents: :data:`WORKER_EXTENSION`, :data:`LOAD_METHOD`, :class:`WeightSyncExtension`.

vLLM's documented way to run custom code in its workers: build the engine with
``LLM(..., worker_extension_cls=WORKER_EXTENSION)`` (vLLM mixes the class into its GPU worker class) and call
``LLM.collective_rpc(LOAD_METHOD, args=(pairs,))`` (vLLM runs ``getattr(worker, LOAD_METHOD)(*args)`` in every
worker and returns the results in a list). No callable crosses a process boundary, so vLLM's
``VLLM_ALLOW_INSECURE_SERIALIZATION`` is not needed. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and one GPU
(``tensor_parallel_size=1``), vLLM runs the engine core and its single worker in the calling process
(``InprocClient`` + ``UniProcExecutor``), so the arguments arrive by reference: the trainer's tensors, not
copies. Written against vLLM 0.11.0 and 0.34.0 (``vllm/entrypoints/llm.py`` ``collective_rpc``,
``vllm/v1/serial_utils.py`` ``run_method``, ``vllm/v1/executor`` ``UniProcExecutor.collective_rpc``,
``ParallelConfig.worker_extension_cls``, ``GPUModelRunner.get_model``); not run here (no GPU, no vLLM).

This module imports neither vLLM nor anything of vgym beyond torch: vLLM imports it by name in its worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["WORKER_EXTENSION", "LOAD_METHOD", "WeightSyncExtension"]

WORKER_EXTENSION = "vgym.policies.vllm_worker.WeightSyncExtension"
"""The ``worker_extension_cls`` engine argument naming :class:`WeightSyncExtension`."""

LOAD_METHOD = "vgym_load_weights"
"""The worker method :meth:`WeightSyncExtension.vgym_load_weights`, by the name ``collective_rpc`` takes
(prefixed: vLLM refuses an extension whose attribute names clash with its worker's)."""


class WeightSyncExtension:
    """Mixed into vLLM's worker class by vLLM itself; ``self`` is the worker (it has ``model_runner``)."""

    model_runner: Any
    """Set by vLLM's worker: its ``get_model()`` is the engine's ``nn.Module`` (out of any CUDA-graph
    wrapper)."""

    def vgym_load_weights(self, weights: Sequence[tuple[str, torch.Tensor]]) -> int:
        """Load Hugging Face-named tensors into the engine's model, in place.

        Args:
            weights: ``(name, tensor)`` pairs as ``named_parameters()`` of the transformers model gives them;
                the model's own ``load_weights`` maps the names (Qwen-VL models declare
                ``hf_to_vllm_mapper``), fuses shards (q/k/v, gate/up) and copies into its parameters.

        Returns:
            The number of pairs loaded.

        Raises:
            TypeError: if an item is not a ``(str, torch.Tensor)`` pair -- what a worker in another process
                receives, since vLLM's msgpack transport decodes an untyped tensor as ``[dtype, shape,
                data]``; the message says to run the engine in process.
        """
        pairs = [tuple(item) for item in weights]
        for item in pairs:
            if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], torch.Tensor):
                raise TypeError(
                    f"{LOAD_METHOD} needs (name, torch.Tensor) pairs, got {type(item[0]).__name__}, "
                    f"{type(item[-1]).__name__}: the engine runs in another process; build it with "
                    "VLLM_ENABLE_V1_MULTIPROCESSING=0 and tensor_parallel_size=1 to sync weights in place")
        self.model_runner.get_model().load_weights(weights=pairs)
        return len(pairs)
