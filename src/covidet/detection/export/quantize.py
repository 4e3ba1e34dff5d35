"""int8 post-training quantisation of the exported graphs (NNCF for OpenVINO, ONNX Runtime's static
quantiser), calibrated on what each graph receives from train-split images."""

from __future__ import annotations

import contextlib
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from covidet.detection.accelerated import GRAPHS
from covidet.detection.data import ImageRecord
from covidet.detection.export.errors import ExportError

__all__ = [
    "CalibrationInputs",
    "calibration_inputs",
    "pick_calibration_records",
    "quantize_onnxruntime",
    "quantize_openvino",
]

CalibrationInputs = dict[str, list[list[np.ndarray]]]


def calibration_inputs(model: FasterRCNN, images: Sequence[torch.Tensor]) -> CalibrationInputs:
    """Run the torch model on ``images`` (one at a time) and record what each compiled part receives:
    ``backbone``: ``[images]``, ``rpn_head``: the FPN levels, ``box_head``: the RoIAlign output."""
    captured: CalibrationInputs = {name: [] for name in GRAPHS}
    modules = {"backbone": model.backbone, "rpn_head": model.rpn.head, "box_head": model.roi_heads.box_head}

    def hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def record(_module: nn.Module, args: tuple) -> None:
            first = args[0]
            tensors = list(first) if isinstance(first, list | tuple) else [first]
            captured[name].append([t.detach().float().contiguous().numpy().copy() for t in tensors])

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            model.eval()
            for image in images:
                model([image])
    finally:
        for handle in handles:
            handle.remove()
    return captured


def pick_calibration_records(records: Sequence[ImageRecord], count: int, seed: int = 0) -> list[ImageRecord]:
    """``count`` records spread over the labels (round robin over shuffled per-label lists)."""
    rng = random.Random(seed)
    by_label: dict[str, list[ImageRecord]] = {}
    for record in records:
        by_label.setdefault(record.label.value, []).append(record)
    for group in by_label.values():
        rng.shuffle(group)
    picked: list[ImageRecord] = []
    while len(picked) < min(count, len(records)):
        for group in by_label.values():
            if group and len(picked) < count:
                picked.append(group.pop())
    return picked


def quantize_openvino(onnx_path: Path, samples: list[list[np.ndarray]], out_xml: Path) -> Path:
    """NNCF post-training int8 quantisation of an fp32 ONNX graph for OpenVINO; writes IR ``out_xml``.

    Activations are calibrated on ``samples`` (each a list of the graph's inputs); NNCF's default
    preset (symmetric, per-channel weights) with fast bias correction.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as error:
        raise ExportError("int8 for OpenVINO needs nncf and openvino (pip install nncf openvino)") from error
    model = ov.Core().read_model(str(onnx_path))
    # NNCF draws progress bars on standard output; `covidet export` prints its JSON there.
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml


def quantize_onnxruntime(onnx_path: Path, samples: list[list[np.ndarray]], out_path: Path) -> Path:
    """ONNX Runtime static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations,
    min-max calibration on ``samples``); writes ``out_path``."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise ExportError("int8 for ONNX Runtime needs onnxruntime (pip install onnxruntime)") from error
    names = [
        i.name for i in ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([dict(zip(names, sample, strict=True)) for sample in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return out_path
