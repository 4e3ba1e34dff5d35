"""Accelerated variants of a model bundle: what the model card records, which can run here, loading one.

A :class:`Variant` is one entry of the card's ``accelerated.variants`` (runtime, files, precisions,
hashes, parity figures). :func:`select_variant` picks the variant for the ``backend`` setting,
:func:`load_graphs` opens its artefacts after checking their SHA-256 against the card, and
:func:`load_variant` returns the bundle's model with those graphs substituted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from torchvision.models.detection import FasterRCNN

from covidet.detection.accelerated.modules import accelerate
from covidet.detection.accelerated.onnx_runtime import OnnxRuntimeGraph
from covidet.detection.accelerated.openvino_runtime import OpenVINOGraph
from covidet.detection.accelerated.runtime import BACKENDS, GRAPHS, Graph, runtime_available
from covidet.detection.card import ModelCard, VariantEntry

__all__ = [
    "ACCELERATED_DIR",
    "MANIFEST_FILE",
    "Variant",
    "available_variants",
    "file_sha256",
    "load_graphs",
    "load_variant",
    "select_variant",
]

logger = logging.getLogger(__name__)

#: Folder of the artefacts inside a model bundle, and the manifest of one variant inside it.
ACCELERATED_DIR = "accelerated"
MANIFEST_FILE = "manifest.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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

    def to_json(self) -> VariantEntry:
        """The card's entry for this variant (without ``parity``, which the export adds)."""
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
    def from_json(cls, entry: VariantEntry) -> Variant:
        """The variant a card entry describes; an entry of an older card without ``graph_precisions``
        gets its ``precision`` for every graph."""
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


def available_variants(bundle: str | os.PathLike, card: ModelCard) -> list[Variant]:
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


def select_variant(bundle: str | os.PathLike, card: ModelCard, backend: str = "auto") -> Variant | None:
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
