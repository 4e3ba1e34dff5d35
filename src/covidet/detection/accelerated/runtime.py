"""What every runtime shares: backend and graph names, the :class:`Graph` protocol, availability, threads.

A runtime graph (:class:`~covidet.detection.accelerated.onnx_runtime.OnnxRuntimeGraph`,
:class:`~covidet.detection.accelerated.openvino_runtime.OpenVINOGraph`) takes float32 arrays and returns
float32 arrays in the graph's input/output order; :func:`runtime_available` says whether a backend's
Python package imports here, without importing it at module load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = [
    "BACKENDS",
    "GRAPHS",
    "Backend",
    "Graph",
    "Precision",
    "RuntimeUnavailableError",
    "default_threads",
    "runtime_available",
]

Backend = Literal["torch", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
#: The compiled parts of the detector, in pipeline order.
GRAPHS: tuple[str, ...] = ("backbone", "rpn_head", "box_head")

_RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class RuntimeUnavailableError(RuntimeError):
    """The runtime's Python package is not installed (or fails to import)."""


def runtime_available(backend: str) -> bool:
    """Whether ``backend``'s runtime can be imported here (``torch`` always can)."""
    if backend == "torch":
        return True
    module = _RUNTIME_MODULES.get(backend)
    if module is None:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    try:
        __import__(module)
    except ImportError:
        return False
    return True


class Graph(Protocol):
    """A compiled graph: float32 arrays in, float32 arrays out, in the graph's input/output order."""

    def run(self, inputs: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]: ...


def default_threads() -> int:
    """Threads a runtime uses when none is given: torch's intra-op thread count (at least 1)."""
    # Follow torch's intra-op setting (covidet's `threads` setting sets it), so a runtime never uses more
    # cores than the torch parts of the same forward pass do.
    return max(1, torch.get_num_threads())
