"""ONNX Runtime as a runtime of the compiled graphs (CPU execution provider, fp32 or QDQ int8 files)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from covidet.detection.accelerated.runtime import RuntimeUnavailableError, default_threads

__all__ = ["OnnxRuntimeGraph"]


class OnnxRuntimeGraph:
    """An ONNX file run by ONNX Runtime's CPU execution provider (fp32 or QDQ int8 models).

    ONNX Runtime handles the dynamic batch and spatial axes without recompiling, and ``run`` is
    thread-safe, so one session serves every worker thread.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise RuntimeUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from error
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Sequence[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))
