"""Types of what the detector keeps as JSON: the model card of a bundle, its sections, and JSON values.

These are static types only (``TypedDict`` and aliases): at run time a card is the plain ``dict`` that
:func:`json.loads` returns, nothing is validated or converted here. Every section is ``total=False``
because cards written by older versions lack keys added later (``accelerated``, ``decision.temperature``,
``architecture.image_head``...); readers use ``.get`` with the documented default where a key may be
missing. :mod:`covidet.detection.bundle` writes and reads cards; the sections' meaning is documented where
they are written (``bundle.save_bundle``, ``calibrate.calibrate_bundle``, ``export.export_bundle``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias, TypedDict, cast

if TYPE_CHECKING:  # model imports torch; this module stays import-light (decision.py uses it)
    from covidet.detection.model import Backbone, Norm

__all__ = [
    "AcceleratedSection",
    "Architecture",
    "DecisionSection",
    "DetectorArgs",
    "JSONObject",
    "ModelCard",
    "VariantEntry",
    "WeightsSection",
    "detector_args",
]

#: A JSON object whose keys are open (training details, metrics reports, machine details). Its values
#: are JSON-ready by contract; they are typed ``object`` so that the typed reports (``TypedDict``s such
#: as :class:`covidet.detection.engine.EvaluationReport`) can be stored in it as they are.
JSONObject: TypeAlias = dict[str, object]


class _SizesAndHeads(TypedDict, total=False):
    """The ``build_detector`` arguments that a card keeps with their own JSON types."""

    num_classes: int
    min_size: int
    max_size: int
    box_score_thresh: float
    box_nms_thresh: float
    box_detections_per_img: int
    rpn_post_nms_top_n_train: int
    rpn_post_nms_top_n_test: int
    box_batch_size_per_image: int
    image_head: bool
    image_loss_weight: float


class Architecture(_SizesAndHeads, total=False):
    """``architecture``: ``detector`` (``fasterrcnn_fpn``) plus the keyword arguments of
    :func:`covidet.detection.model.build_detector` that rebuild the network (a card keeps
    ``anchor_aspect_ratios`` as a JSON list)."""

    detector: str
    backbone: str
    norm: str
    anchor_aspect_ratios: list[float]
    image_head_pool: str


class DetectorArgs(_SizesAndHeads, total=False):
    """The keyword arguments of :func:`covidet.detection.model.build_detector`, as :func:`detector_args`
    makes them from a card's ``architecture``."""

    backbone: Backbone
    norm: Norm
    anchor_aspect_ratios: tuple[float, ...]
    image_head_pool: Literal["image", "boxes"]


def detector_args(architecture: Mapping[str, object]) -> DetectorArgs:
    """``architecture`` (a card's section, or what a run will write there) as ``build_detector``
    arguments: without ``detector``, and ``anchor_aspect_ratios`` as a tuple. The values are trusted to
    be what ``build_detector`` takes (the card was written from them); it validates them itself."""
    args = {key: value for key, value in architecture.items() if key != "detector"}
    if "anchor_aspect_ratios" in args:
        args["anchor_aspect_ratios"] = tuple(cast(Sequence[float], args["anchor_aspect_ratios"]))
    return cast(DetectorArgs, args)


class DecisionSection(TypedDict, total=False):
    """``decision``: the image-level rule (:mod:`covidet.detection.decision`) and its parameters;
    ``fitted`` is what ``covidet calibrate`` fitted them on."""

    rule: str
    threshold: float
    temperature: float
    image_weight: float
    description: str
    fitted: JSONObject


class WeightsSection(TypedDict):
    """``weights``: the file beside the card, its dtype on disk and its SHA-256."""

    file: str
    dtype: str
    sha256: str


class VariantEntry(TypedDict, total=False):
    """One entry of ``accelerated.variants`` (:meth:`covidet.detection.accelerated.Variant.to_json`,
    plus ``parity``: the figures of the parity check, or ``None`` when unchecked)."""

    backend: str
    precision: str
    graph_precisions: dict[str, str]
    files: dict[str, str]
    file_sha256: dict[str, str]
    weights_sha256: str
    feature_names: list[str]
    parity_ok: bool | None
    seconds_per_image: float | None
    speedup_vs_torch: float | None
    parity: JSONObject | None


class AcceleratedSection(TypedDict, total=False):
    """``accelerated``: what ``covidet export`` made and measured (:mod:`covidet.detection.export`)."""

    created: str
    input: str
    split: dict[str, str]
    calibration: JSONObject
    check: JSONObject | None
    fastest_passing: str | None
    variants: list[VariantEntry]
    machine: Mapping[str, object]
    software: dict[str, str]
    note: str


class ModelCard(TypedDict, total=False):
    """``model_card.json`` of a bundle (:func:`covidet.detection.bundle.save_bundle` writes it)."""

    name: str
    version: str
    created: str
    disclaimer: str
    purpose: str
    task: str
    classes: list[str]
    model_label_ids: dict[str, int]
    architecture: Architecture
    input: JSONObject
    decision: DecisionSection
    training: JSONObject
    metrics: JSONObject
    weights: WeightsSection
    software: dict[str, str]
    accelerated: AcceleratedSection
