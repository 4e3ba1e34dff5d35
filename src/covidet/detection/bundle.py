"""Model bundles: a folder with the weights (``model.pt``) and a model card (``model_card.json``).

The model card is the contract between training and everything that runs the model: it says how to
rebuild the network (``architecture``), how to turn boxes into a decision (``decision``), what data
trained it (``training``), how good it was on held-out data (``metrics``), and that it is
not for clinical use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import torch
from torchvision.models.detection import FasterRCNN

from covidet import DISCLAIMER, __version__
from covidet.detection.card import Architecture, DecisionSection, JSONObject, ModelCard, detector_args
from covidet.detection.model import build_detector
from covidet.domain import CLASS_NAMES

__all__ = [
    "BUNDLE_ENV_VAR",
    "CARD_FILE",
    "WEIGHTS_FILE",
    "BundleError",
    "default_bundle_path",
    "load_bundle",
    "load_weights_into",
    "read_model_card",
    "save_bundle",
    "write_model_card",
]

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "model.pt"
BUNDLE_ENV_VAR = "COVIDET_MODEL"
#: The shipped bundle's folder name under ``models/``.
DEFAULT_BUNDLE_NAME = "covidet-detector"


class BundleError(ValueError):
    """A model bundle is missing, incomplete or inconsistent; the message says which and why."""


def save_bundle(
    model: FasterRCNN,
    out_dir: str | os.PathLike,
    *,
    architecture: Architecture,
    decision: DecisionSection,
    training: JSONObject,
    metrics: JSONObject,
    name: str = "covidet-detector",
    version: str = __version__,
    half: bool = True,
    purpose: str = "assess",
) -> Path:
    """Write ``model.pt`` (state dict; floating tensors in fp16 when ``half``) and ``model_card.json``.

    ``architecture`` holds the keyword arguments of :func:`build_detector` that rebuild the network;
    ``decision`` the image-level rule and threshold; ``metrics`` held-out (validation) metrics only.
    ``purpose`` is ``assess`` (the system's detector) or ``lungs`` (a class-agnostic lung detector that
    only proposes boxes; :class:`~covidet.detection.predictor.Predictor` refuses it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        key: (value.half() if half and value.is_floating_point() else value)
        for key, value in model.state_dict().items()
    }
    weights_path = out / WEIGHTS_FILE
    torch.save(state, weights_path)
    card: ModelCard = {
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
        "purpose": purpose,
        "task": (
            "chest X-ray lung-region detection with covid19 / pneumonia / normal labels"
            if purpose == "assess"
            else "class-agnostic chest X-ray lung detection (model class 1 = lung): proposes lung boxes "
            "for `covidet propose-boxes`; not an assessment model"
        ),
        "classes": [c.value for c in CLASS_NAMES],
        "model_label_ids": {c.value: i + 1 for i, c in enumerate(CLASS_NAMES)} | {"background": 0},
        "architecture": {"detector": "fasterrcnn_fpn", **architecture},
        "input": {
            "channels": "grayscale, replicated to 3 channels",
            "pixel_range": [0.0, 1.0],
            "resize": f"longer side to {architecture.get('max_size')} px",
        },
        "decision": decision,
        "training": training,
        "metrics": metrics,
        "weights": {
            "file": WEIGHTS_FILE,
            "dtype": "float16" if half else "float32",
            "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        },
        "software": {"covidet": __version__, "torch": torch.__version__},
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    logger.info("wrote model bundle %s (%.1f MB)", out, weights_path.stat().st_size / 1e6)
    return out


def read_model_card(bundle: str | os.PathLike) -> ModelCard:
    """The parsed model card of a bundle folder."""
    card_path = Path(bundle) / CARD_FILE
    try:
        return json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"not a model bundle (no {CARD_FILE}): {bundle}") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{card_path}: invalid JSON ({error})") from None


def write_model_card(bundle: str | os.PathLike, card: ModelCard) -> None:
    """Replace a bundle's model card atomically (write beside it, then rename); the weights are untouched."""
    path = Path(bundle) / CARD_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def load_bundle(
    bundle: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[FasterRCNN, ModelCard]:
    """Rebuild the network from the card, load the weights (fp32), return ``(model in eval mode, card)``.

    The weights' SHA-256 is checked against the card, so a swapped or truncated file is refused.
    """
    bundle = Path(bundle)
    card = read_model_card(bundle)
    weights_path = bundle / card.get("weights", {}).get("file", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise BundleError(f"model bundle {bundle} has no weights file {weights_path.name}")
    expected = card.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(weights_path.read_bytes()).hexdigest() != expected:
        raise BundleError(f"{weights_path}: SHA-256 differs from the model card (corrupt or replaced file)")
    model = build_detector(**detector_args(card["architecture"]))
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval(), card


# Architecture keys that must agree for one network's weights to fit another; the input size may differ
# (a detector's weights do not depend on it), so a bundle trained at 384 px can start a 448 px run.
_WEIGHT_SHAPE_KEYS = (
    "backbone",
    "norm",
    "num_classes",
    "anchor_aspect_ratios",
    "image_head",
    "image_head_pool",
)


def load_weights_into(
    model: torch.nn.Module, bundle: str | os.PathLike, architecture: Architecture
) -> ModelCard:
    """Start ``model`` (built from ``architecture``) from a bundle's weights, for fine-tuning.

    Raises :class:`BundleError` with the differing keys when the bundle's network has another shape
    (backbone, norm, classes, anchors, image head). Returns the bundle's model card.
    """
    source, card = load_bundle(bundle)
    differing = [
        f"{key} {card['architecture'].get(key)!r} (this run: {architecture.get(key)!r})"
        for key in _WEIGHT_SHAPE_KEYS
        if _comparable(card["architecture"].get(key)) != _comparable(architecture.get(key))
    ]
    if differing:
        raise BundleError(f"--init-model: {bundle} is another network: " + "; ".join(differing))
    model.load_state_dict(source.state_dict())
    return card


def _comparable(value: object) -> object:
    """``value`` with a tuple as a list, so that a card's JSON list equals the run's tuple."""
    return list(value) if isinstance(value, tuple) else value


def default_bundle_path() -> Path | None:
    """The bundle to use when none is named: ``$COVIDET_MODEL``, else the shipped bundle (inside the
    installed package, or ``models/`` of a source checkout). ``None`` when there is none."""
    from_env = os.environ.get(BUNDLE_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    package_dir = Path(__file__).resolve().parents[1]
    for candidate in (
        package_dir / "_models" / DEFAULT_BUNDLE_NAME,
        package_dir.parents[1] / "models" / DEFAULT_BUNDLE_NAME,
    ):
        if (candidate / CARD_FILE).is_file():
            return candidate
    return None
