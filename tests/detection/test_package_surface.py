"""The old import paths of the split modules keep every public name (``covidet.detection.metrics`` and
``covidet.detection.accelerated`` became packages; the CLI, evaluation, export, benchmarks and tests
import them by the old path)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

# What the single-file modules offered before the split (their __all__, plus the stand-in modules that
# tests/detection/test_accelerated.py reads from the old module).
OLD_SURFACE = {
    "covidet.detection.metrics": [
        "AGNOSTIC_CLASS_NAME",
        "DEFAULT_CLASS_NAMES",
        "ImageDetections",
        "coco_detection_metrics",
        "disease_boxes_on_lungs",
        "expected_calibration_error",
        "image_level_metrics",
        "save_metric_plots",
    ],
    "covidet.detection.accelerated": [
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
        "RuntimeBackbone",
        "RuntimeRPNHead",
        "RuntimeBoxHead",
    ],
}


@pytest.mark.parametrize("module", sorted(OLD_SURFACE))
def test_old_import_path_keeps_every_public_name(module: str) -> None:
    package = importlib.import_module(module)
    missing = [name for name in OLD_SURFACE[module] if not hasattr(package, name)]
    assert not missing, f"{module} lost {missing}"
    # __all__ names only what the package holds, and it re-exports each submodule's public names (the
    # same objects), except runtime.default_threads, a helper of the two runtime graphs.
    assert all(hasattr(package, name) for name in package.__all__)
    submodules = [info.name for info in pkgutil.iter_modules(package.__path__)]
    assert submodules, module
    for name in submodules:
        child = importlib.import_module(f"{module}.{name}")
        assert set(child.__all__) <= set(package.__all__) | {"default_threads"}, name
        for exported in child.__all__:
            if exported in package.__all__:
                assert getattr(package, exported) is getattr(child, exported)


def test_importing_the_accelerated_package_loads_no_runtime() -> None:
    """ONNX Runtime and OpenVINO stay out of a process until a graph is opened (see tests/conftest.py)."""
    import subprocess
    import sys

    code = (
        "import sys, covidet.detection.accelerated, covidet.detection.predictor; "
        "print(sorted(m for m in ('onnxruntime', 'openvino') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
