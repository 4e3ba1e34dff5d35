"""Fast CPU inference: the heavy, static parts of Faster R-CNN in ONNX Runtime or OpenVINO.

The detector is split where its work changes nature:

* **Compiled graphs** (run by a runtime): ``backbone`` (backbone + FPN: images ``[B, 3, H, W]`` ->
  one feature map ``[B, 256, H/s, W/s]`` per level), ``rpn_head`` (feature maps -> objectness
  ``[B, A, h, w]`` and box deltas ``[B, 4A, h, w]`` per level) and ``box_head`` (the two fully connected
  layers: RoI features ``[N, 256, 7, 7]`` -> ``[N, 1024]``). They hold almost all the arithmetic and have
  no data-dependent control flow, so they export cleanly and quantise well.
* **torch** (unchanged torchvision code): resizing and normalisation, anchors, proposal decoding and NMS,
  RoIAlign, the final class/box layer, per-class NMS and the scaling of boxes back to image pixels. These
  are data-dependent (``torch.export`` fails on NMS) and cheap.

:func:`accelerate` returns a copy of a ``FasterRCNN`` whose ``backbone``, ``rpn.head`` and
``roi_heads.box_head`` submodules call the runtime instead of torch; everything else, including
torchvision's ``forward`` code, is the original, so the accelerated model sees exactly the tensors the
torch model sees (same resize, same padding to a multiple of 32, same batching) and differs only by the
runtime's arithmetic. Its contract is the torch model's: ``model(images)`` with a list of ``[3, H, W]``
float tensors in ``[0, 1]`` returns per image ``boxes`` (``[N, 4]``, ``[x1, y1, x2, y2]`` in pixels of
that image), ``labels`` and ``scores``.

The artefacts live in a model bundle under ``accelerated/`` (see :mod:`covidet.detection.export`) and
are described by the model card's ``accelerated`` section; :func:`load_variant` loads one after checking
that it was made from the bundle's weights.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

__all__ = [
    "ACCELERATED_DIR",
    "BACKENDS",
    "GRAPHS",
    "MANIFEST_FILE",
    "Backend",
    "Graph",
    "OnnxRuntimeGraph",
    "OpenVINOGraph",
    "Precision",
    "RuntimeUnavailableError",
    "Variant",
    "accelerate",
    "available_variants",
    "file_sha256",
    "load_graphs",
    "load_variant",
    "runtime_available",
    "select_variant",
]

logger = logging.getLogger(__name__)

Backend = Literal["torch", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
#: The compiled parts of the detector, in pipeline order.
GRAPHS: tuple[str, ...] = ("backbone", "rpn_head", "box_head")
#: Folder of the artefacts inside a model bundle, and the manifest of one variant inside it.
ACCELERATED_DIR = "accelerated"
MANIFEST_FILE = "manifest.json"

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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- runtimes


class Graph(Protocol):
    """A compiled graph: float32 arrays in, float32 arrays out, in the graph's input/output order."""

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def _threads() -> int:
    # Follow torch's intra-op setting (covidet's `threads` setting sets it), so a runtime never uses more
    # cores than the torch parts of the same forward pass do.
    return max(1, torch.get_num_threads())


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
        options.intra_op_num_threads = threads or _threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))


class OpenVINOGraph:
    """An OpenVINO IR (``.xml``) or ONNX file run by OpenVINO's CPU plugin.

    OpenVINO runs a network compiled for fixed shapes about 1.6x faster than the same network compiled
    with dynamic axes (measured: ResNet-101 FPN int8 at 800 px, 146 vs 234 ms), so the graph is
    compiled once per input shape and kept (``max_shapes`` most recent). The predictor resizes every image
    to a longer side of the model's input size and torchvision pads to a multiple of 32, so a deployment
    sees a few shapes only; compiling one takes a fraction of a second.

    ``precision`` is the inference precision of floating-point layers: ``fp32``, or ``bf16`` on CPUs with
    bf16 instructions (elsewhere OpenVINO falls back to fp32); an int8 IR keeps its quantised layers int8
    either way.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        max_shapes: int = 16,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise RuntimeUnavailableError("openvino is not installed (pip install openvino)") from error
        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        self._config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or _threads(),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self._max_shapes = max_shapes
        self._compiled: OrderedDict[tuple[tuple[int, ...], ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compiled_for(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        with self._lock:
            compiled = self._compiled.get(shapes)
            if compiled is not None:
                self._compiled.move_to_end(shapes)
                return compiled
            model = self._model.clone()
            model.reshape(
                {port.any_name: list(shape) for port, shape in zip(model.inputs, shapes, strict=True)}
            )
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[shapes] = compiled
            if len(self._compiled) > self._max_shapes:
                self._compiled.popitem(last=False)
            logger.debug("compiled an OpenVINO graph for input shapes %s", shapes)
            return compiled

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        shapes = tuple(tuple(int(d) for d in array.shape) for array in inputs)
        compiled = self._compiled_for(shapes)
        # One infer request per thread and compiled shape: a request owns its output buffers, so
        # requests are never shared between threads.
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None or request[0] is not compiled:
            request = requests[id(compiled)] = (compiled, compiled.create_infer_request())
        result = request[1].infer([np.ascontiguousarray(a, np.float32) for a in inputs], share_inputs=True)
        # Copied out: the next call on this request would overwrite shared output buffers while torch
        # still holds the features (RoIAlign runs after the RPN head's call).
        return [np.asarray(result[output]) for output in compiled.outputs]


# -------------------------------------------------------------------------------- torch-facing modules


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    # Runtimes read NCHW float32; channels_last torch tensors are re-laid out here.
    return tensor.detach().to(torch.float32).contiguous().cpu().numpy()


class RuntimeBackbone(nn.Module):
    """Stands in for ``model.backbone``: images ``[B, 3, H, W]`` -> ``OrderedDict`` of FPN levels."""

    def __init__(self, graph: Graph, names: Sequence[str], out_channels: int) -> None:
        super().__init__()
        self.graph, self.names, self.out_channels = graph, list(names), out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outputs = self.graph.run([_as_numpy(images)])
        return OrderedDict(
            (name, torch.from_numpy(array).to(images.device))
            for name, array in zip(self.names, outputs, strict=True)
        )


class RuntimeRPNHead(nn.Module):
    """Stands in for ``model.rpn.head``: FPN levels -> (objectness per level, box deltas per level)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outputs = [torch.from_numpy(a) for a in self.graph.run([_as_numpy(f) for f in features])]
        levels = len(features)
        return outputs[:levels], outputs[levels:]


class RuntimeBoxHead(nn.Module):
    """Stands in for ``model.roi_heads.box_head``: RoI features ``[N, 256, 7, 7]`` -> ``[N, 1024]``."""

    def __init__(self, graph: Graph, representation_size: int) -> None:
        super().__init__()
        self.graph, self.representation_size = graph, representation_size

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        if roi_features.shape[0] == 0:  # no proposal survived: nothing to run
            return roi_features.new_zeros((0, self.representation_size))
        (output,) = self.graph.run([_as_numpy(roi_features)])
        return torch.from_numpy(output)


def accelerate(model: FasterRCNN, graphs: dict[str, Graph], feature_names: Sequence[str]) -> FasterRCNN:
    """A copy of ``model`` (eval mode) whose compiled parts run in ``graphs`` (keys from :data:`GRAPHS`;
    a missing key keeps that part in torch). ``model`` itself is not changed.

    ``feature_names`` are the backbone's output keys in order (``"0", "1", ..., "pool"``).
    """
    replacements: dict[str, nn.Module] = {}
    if "backbone" in graphs:
        replacements["backbone"] = RuntimeBackbone(
            graphs["backbone"], feature_names, int(model.backbone.out_channels)
        )
    if "rpn_head" in graphs:
        replacements["rpn_head"] = RuntimeRPNHead(graphs["rpn_head"])
    if "box_head" in graphs:
        size = int(model.roi_heads.box_head.fc7.out_features)
        replacements["box_head"] = RuntimeBoxHead(graphs["box_head"], size)
    originals = {
        "backbone": model.backbone,
        "rpn_head": model.rpn.head,
        "box_head": model.roi_heads.box_head,
    }
    # deepcopy with a pre-filled memo: the replaced submodules are substituted instead of copied (their
    # weights, most of the model, are never duplicated); every other part is a private copy.
    memo = {id(originals[key]): module for key, module in replacements.items()}
    fast = copy.deepcopy(model, memo)
    return fast.eval()


# ------------------------------------------------------------------------------------ bundle variants


@dataclass(frozen=True)
class Variant:
    """One accelerated form of a bundle, as the model card's ``accelerated.variants`` records it.

    ``files`` maps each graph name to a path relative to the bundle and ``graph_precisions`` each graph
    to ``fp32``, ``bf16`` (OpenVINO's bf16 arithmetic on the fp32 file) or ``int8`` (a quantised file).
    ``parity_ok``, ``seconds_per_image`` and ``speedup_vs_torch`` are what ``covidet export --check``
    measured.
    """

    backend: str
    files: dict[str, str]
    graph_precisions: dict[str, str]
    weights_sha256: str
    file_sha256: dict[str, str]
    feature_names: tuple[str, ...]
    parity_ok: bool | None = None
    seconds_per_image: float | None = None
    speedup_vs_torch: float | None = None

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``int8`` when all graphs share it, else e.g. ``int8[box_head]`` (int8 on
        the listed graphs, fp32 on the others)."""
        values = set(self.graph_precisions.values())
        if len(values) == 1:
            return values.pop()
        special = [g for g in GRAPHS if self.graph_precisions.get(g, "fp32") != "fp32"]
        kinds = {self.graph_precisions[g] for g in special}
        return f"{'/'.join(sorted(kinds))}[{','.join(special)}]"

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "graph_precisions": dict(self.graph_precisions),
            "files": dict(self.files),
            "file_sha256": dict(self.file_sha256),
            "weights_sha256": self.weights_sha256,
            "feature_names": list(self.feature_names),
            "parity_ok": self.parity_ok,
            "seconds_per_image": self.seconds_per_image,
            "speedup_vs_torch": self.speedup_vs_torch,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Variant:
        files = dict(entry["files"])
        precisions = entry.get("graph_precisions") or {g: str(entry.get("precision", "fp32")) for g in files}
        return cls(
            backend=str(entry["backend"]),
            files=files,
            graph_precisions=dict(precisions),
            weights_sha256=str(entry.get("weights_sha256", "")),
            file_sha256=dict(entry.get("file_sha256", {})),
            feature_names=tuple(entry.get("feature_names", ())),
            parity_ok=entry.get("parity_ok"),
            seconds_per_image=entry.get("seconds_per_image"),
            speedup_vs_torch=entry.get("speedup_vs_torch"),
        )

    def missing_files(self, bundle: Path) -> list[str]:
        """Artefacts (relative paths) that are absent from ``bundle``; an IR's ``.bin`` counts too."""
        missing = []
        for relative in self.files.values():
            path = bundle / relative
            if not path.is_file():
                missing.append(relative)
            elif path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
                missing.append(str(Path(relative).with_suffix(".bin")))
        return missing


def available_variants(bundle: str | os.PathLike, card: dict[str, Any]) -> list[Variant]:
    """The card's variants that can run here: made from the bundle's current weights, their runtime
    importable and their files present. Files' hashes are checked at load time (:func:`load_variant`)."""
    bundle = Path(bundle)
    section = card.get("accelerated") or {}
    weights_sha = card.get("weights", {}).get("sha256")
    usable, skipped = [], []
    for entry in section.get("variants", []):
        variant = Variant.from_json(entry)
        if weights_sha and variant.weights_sha256 != weights_sha:
            skipped.append(f"{variant.name}: made from other weights")
        elif not runtime_available(variant.backend):
            skipped.append(f"{variant.name}: {variant.backend} not installed")
        elif variant.missing_files(bundle):
            skipped.append(f"{variant.name}: artefacts missing")
        else:
            usable.append(variant)
    if skipped:  # one line, not one per variant: the worker loads the bundle at every start
        logger.info("accelerated variants not usable (run `covidet export`): %s", "; ".join(skipped))
    return usable


def select_variant(bundle: str | os.PathLike, card: dict[str, Any], backend: str = "auto") -> Variant | None:
    """The variant to run for the ``backend`` setting, or ``None`` for plain torch.

    ``auto``: the fastest variant that passed the parity check and can run here. ``onnxruntime`` /
    ``openvino``: the fastest parity-passing variant of that runtime (``None`` if there is none: the
    caller decides what to do). ``torch``: ``None``.
    """
    if backend == "torch":
        return None
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    candidates = [
        v
        for v in available_variants(bundle, card)
        if v.parity_ok and (backend == "auto" or v.backend == backend)
    ]
    if not candidates:
        return None
    # Speed-up rather than seconds: each was measured against torch in the same interleaved run, so the
    # ratio is robust to the machine's load at the time, the absolute time is not.
    return max(candidates, key=lambda v: v.speedup_vs_torch or 0.0)


def load_graphs(
    bundle: str | os.PathLike, variant: Variant, *, verify: bool = True, threads: int | None = None
) -> dict[str, Graph]:
    """Open ``variant``'s artefacts in its runtime. With ``verify``, each file's SHA-256 must match the
    card (a swapped or truncated artefact is refused with ``ValueError``)."""
    bundle = Path(bundle)
    graphs: dict[str, Graph] = {}
    for name, relative in variant.files.items():
        path = bundle / relative
        expected = variant.file_sha256.get(name)
        if verify and expected and file_sha256(path) != expected:
            raise ValueError(f"{path}: SHA-256 differs from the model card (stale or replaced artefact)")
        if variant.backend == "onnxruntime":
            graphs[name] = OnnxRuntimeGraph(path, threads=threads)
        elif variant.backend == "openvino":
            precision = variant.graph_precisions.get(name, "fp32")
            graphs[name] = OpenVINOGraph(path, precision=precision, threads=threads)
        else:
            raise ValueError(f"variant {variant.name}: unknown runtime {variant.backend!r}")
    return graphs


def load_variant(
    model: FasterRCNN, bundle: str | os.PathLike, variant: Variant, *, threads: int | None = None
) -> FasterRCNN:
    """``model`` (the bundle's torch model) with ``variant``'s graphs substituted (see :func:`accelerate`)."""
    graphs = load_graphs(bundle, variant, threads=threads)
    logger.info("running %s with %s (%s)", Path(bundle).name, variant.backend, variant.precision)
    return accelerate(model, graphs, variant.feature_names)
