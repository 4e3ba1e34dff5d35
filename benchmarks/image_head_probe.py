"""Would an image-level head help? A linear probe on the shipped detector's own features.

    python benchmarks/image_head_probe.py --out benchmarks/results/image_head_probe.json
    python benchmarks/image_head_probe.py --write-bundle runs/probe-head --image-weight 0.5
    python benchmarks/image_head_probe.py --pool lungs --write-bundle runs/probe-lungs-head \
        --out benchmarks/results/image_head_probe_lungs.json

The decision rule reads boxes. This asks, before any multi-task training, whether the image as a whole
carries more usable evidence: each image's FPN levels of the shipped detector (frozen) are averaged over
space and concatenated (one vector per image), and a class-balanced logistic regression maps them to
covid19 / pneumonia / normal. Its regularisation ``C`` is chosen by 5-fold cross-validation on the
**train** split grouped by patient (macro F1), never on val; then it is fitted on all of train and
scored once on val, with per-source accuracy and label stability under down-sampling to 224 px and back
(as ``covidet evaluate``). The val figures of every ``C`` are recorded too, marked as such, to show how
much they move: choosing among them on val would be tuning on val.

With ``--write-bundle OUT`` the fitted probe becomes the :class:`~covidet.detection.model.ImageHead` of a
copy of the detector (its scaler folded into the linear layer, so the head computes exactly the probe's
probabilities), written as a bundle whose decision rule is ``max-score-v2`` with ``--image-weight``
(0.5, the value fixed before the jointly trained run) and whose card holds its val metrics under that
rule. The detector's weights are unchanged; only the head is new. ``covidet evaluate --model OUT``
then gives every figure of the issue for it.

Caveat: the detector was trained on these train images, so its features fit them better than unseen
ones; the probe's train-CV figures are optimistic, its val figures are not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from _report import model_benchmark_args, write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.bundle import default_bundle_path, load_bundle, save_bundle
from covidet.detection.data import ImageRecord, load_records
from covidet.detection.decision import rule_name
from covidet.detection.engine import evaluate_detections
from covidet.detection.evaluate import infer_records
from covidet.detection.model import AssessmentRCNN, ImageHead, build_detector
from covidet.detection.transforms import DownsampleRoundTrip, resize_image
from covidet.domain import model_id_from_label
from covidet.imaging import read_image

#: --pool value -> the ImageHead pooling that computes the same features.
_HEAD_POOL = {"image": "image", "lungs": "boxes"}
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def probe_images(records: list[ImageRecord], size: int, degrade: int | None) -> Iterator[torch.Tensor]:
    """Each record's X-ray as the detector sees it: float ``[3, H, W]`` in ``[0, 1]``, longer side
    ``size``; first down-sampled to ``degrade`` px and back when given (the stability check). With a
    progress bar."""
    degrader = DownsampleRoundTrip(degrade) if degrade else None
    for record in tqdm(
        records, desc=f"features{' at ' + str(degrade) + ' px' if degrade else ''}", unit="image"
    ):
        pixels = torch.from_numpy(np.ascontiguousarray(read_image(record.path).pixels, np.float32))[None]
        if degrader is not None:
            pixels, _ = degrader(pixels, {"boxes": torch.zeros((0, 4))})
        yield resize_image(pixels, size).expand(3, -1, -1)


@torch.inference_mode()
def pooled_features(
    model: torch.nn.Module,
    records: list[ImageRecord],
    size: int,
    degrade: int | None,
    pool: str = "image",
    min_box_score: float = AssessmentRCNN.POOL_MIN_SCORE,
) -> np.ndarray:
    """``[N, levels*256]``: each FPN level of ``model`` averaged over the image (``pool="image"``, the
    image head's pooling) or over the cells inside the detector's own boxes scoring >= ``min_box_score``,
    any class (``pool="lungs"``; the whole image when there is none), per image."""
    rows = []
    for image in probe_images(records, size, degrade):
        batch, _ = model.transform([image])
        levels = model.backbone(batch.tensors)
        padded = (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1]))
        boxes = torch.zeros((0, 4))
        if pool == "lungs":
            (detections,) = model([image])
            boxes = detections["boxes"][detections["scores"] >= min_box_score]
        # The image head's own pooling, so a written head reproduces these features.
        rows.append(ImageHead.pool_in_boxes(levels, [boxes], batch.image_sizes, padded)[0].numpy())
    return np.stack(rows)


def _probe(c: float) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced"))


def _scores(truth: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(1)
    return {
        "accuracy": accuracy_score(truth, predicted),
        "macro_f1": f1_score(truth, predicted, average="macro"),
        "macro_auc": roc_auc_score(truth, probabilities, multi_class="ovr"),
        "covid19_sensitivity": float((predicted[truth == 0] == 0).mean()),
        "covid19_specificity": float((predicted[truth != 0] != 0).mean()),
        "pneumonia_sensitivity": float((predicted[truth == 1] == 1).mean()),
        "normal_sensitivity": float((predicted[truth == 2] == 2).mean()),
    }


@dataclass(frozen=True)
class FittedProbe:
    """:func:`fit_probe`'s result: the probe fitted on all of train, its val probabilities ``[N, 3]``
    and the report entries (``train_cv_macro_f1_by_C``, ``chosen_C_by_train_cv``, ``val``)."""

    probe: Any
    probabilities: np.ndarray
    report: dict[str, Any]


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_low: np.ndarray,
    val: list[ImageRecord],
) -> FittedProbe:
    """The probe protocol: ``C`` chosen by 5-fold cross-validation on train grouped by patient
    (``groups``; macro F1), fitted on all of train, scored once on val (``x_val``), with per-source
    accuracy and label stability against ``x_low`` (the val features after down-sampling to 224 px)."""
    train_cv = {}
    for c in C_GRID:
        predicted = cross_val_predict(_probe(c), x_train, y_train, groups=groups, cv=GroupKFold(5))
        train_cv[str(c)] = f1_score(y_train, predicted, average="macro")
    chosen = float(max(train_cv, key=train_cv.get))
    probe = _probe(chosen).fit(x_train, y_train)
    probabilities = probe.predict_proba(x_val)
    predicted = probabilities.argmax(1)
    per_source: dict[str, dict[str, int]] = {}
    for record, label, truth in zip(val, predicted, y_val, strict=True):
        entry = per_source.setdefault(record.source or "unknown", {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(label == truth)
    report = {
        "train_cv_macro_f1_by_C": train_cv,
        "chosen_C_by_train_cv": chosen,
        "val": _scores(y_val, probabilities)
        | {"stability_224": float((probe.predict(x_low) == predicted).mean()), "per_source": per_source},
    }
    return FittedProbe(probe, probabilities, report)


def with_probe_head(model: torch.nn.Module, card: dict, probe: object, pool: str) -> AssessmentRCNN:
    """A copy of ``model`` (a plain Faster R-CNN) with an image head computing ``probe``'s probabilities.

    ``probe`` is the fitted ``StandardScaler`` + multinomial ``LogisticRegression`` pipeline; its
    standardisation ``(x - mean) / scale`` is folded into the linear layer:
    ``W' = W / scale``, ``b' = b - W' @ mean``.
    """
    scaler, regression = probe.named_steps["standardscaler"], probe.named_steps["logisticregression"]
    weight = regression.coef_ / scaler.scale_[None, :]
    bias = regression.intercept_ - weight @ scaler.mean_
    architecture = {k: v for k, v in card["architecture"].items() if k != "detector"}
    architecture["anchor_aspect_ratios"] = tuple(architecture["anchor_aspect_ratios"])
    combined = build_detector(**architecture, image_head=True, image_head_pool=_HEAD_POOL[pool])
    missing, unexpected = combined.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("image_head.") for key in missing), (missing, unexpected)
    with torch.no_grad():
        combined.image_head.classifier.weight.copy_(torch.from_numpy(weight).float())
        combined.image_head.classifier.bias.copy_(torch.from_numpy(bias).float())
    return combined.eval()


def write_probe_bundle(
    model: torch.nn.Module,
    card: dict,
    probe: object,
    out: Path,
    *,
    image_weight: float,
    data: Path,
    chosen_c: float,
    expected_val_probabilities: np.ndarray,
    pool: str,
) -> dict:
    """Write the detector plus the probe's head as a bundle; returns its val report (rule v2)."""
    combined = with_probe_head(model, card, probe, pool)
    size = int(card["architecture"]["max_size"])
    records = load_records(data, split="val")
    predictions, ground_truth, labels, _ = infer_records(combined, records, size=size, desc="val, rule v2")
    got = np.stack([p.image_probs for p in predictions])
    gap = float(np.abs(got - expected_val_probabilities).max())
    if gap > 1e-3:  # the folded head must compute the probe, or the bundle's figures are not the probe's
        raise SystemExit(f"the written head differs from the probe by {gap} in probability")
    threshold = float(card["decision"]["threshold"])
    report = evaluate_detections(
        predictions, ground_truth, labels, threshold=threshold, image_weight=image_weight
    ).report
    architecture = {k: v for k, v in card["architecture"].items() if k != "detector"}
    save_bundle(
        combined,
        out,
        architecture=architecture | {"image_head": True, "image_head_pool": _HEAD_POOL[pool]},
        decision={
            "rule": rule_name(image_weight),
            "threshold": threshold,
            "image_weight": image_weight,
            "description": "see covidet.detection.decision",
        },
        training=card["training"]
        | {
            "image_head": {
                "method": "linear probe on the frozen detector's pooled FPN features: StandardScaler + "
                "class-balanced multinomial logistic regression fitted on the train split, folded into "
                "the ImageHead",
                "C": chosen_c,
                "C_selected_by": "5-fold patient-grouped cross-validation on train (macro F1)",
                "command": " ".join(["python", *sys.argv]),
            }
        },
        metrics={"val": report},
        name=card.get("name", "covidet-detector"),
        version=card.get("version", "0.1.0"),
    )
    return report


def main() -> None:
    args, data = model_benchmark_args(
        __doc__,
        "benchmarks/results/image_head_probe.json",
        extra=[
            ("--write-bundle", {"type": Path, "default": None, "help": "also write detector + head here"}),
            ("--image-weight", {"type": float, "default": 0.5, "help": "decision weight of the head"}),
            (
                "--pool",
                {"choices": ["image", "lungs"], "default": "image", "help": "where features are averaged"},
            ),
        ],
    )
    model, card = load_bundle(args.model or default_bundle_path())
    model.eval()
    size = int(card["architecture"]["max_size"])
    train, val = load_records(data, split="train"), load_records(data, split="val")
    y_train = np.array([model_id_from_label(r.label) - 1 for r in train])
    y_val = np.array([model_id_from_label(r.label) - 1 for r in val])
    x_train = pooled_features(model, train, size, None, args.pool)
    x_val = pooled_features(model, val, size, None, args.pool)
    x_low = pooled_features(model, val, size, 224, args.pool)
    found = fit_probe(x_train, y_train, np.array([r.patient_id for r in train]), x_val, y_val, x_low, val)
    probe, probabilities = found.probe, found.probabilities
    val_by_c = {str(c): _scores(y_val, _probe(c).fit(x_train, y_train).predict_proba(x_val)) for c in C_GRID}
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "model": {"name": card.get("name"), "version": card.get("version")},
        "features": f"{x_train.shape[1]} (FPN levels averaged over "
        + ("the image" if args.pool == "image" else "the detector's own boxes scoring >= 0.3")
        + ")",
        "pool": args.pool,
        **found.report,
        "val_by_C_not_for_selection": val_by_c,
    }
    if args.write_bundle is not None:
        combined = write_probe_bundle(
            model,
            card,
            probe,
            args.write_bundle,
            image_weight=args.image_weight,
            data=data,
            chosen_c=found.report["chosen_C_by_train_cv"],
            expected_val_probabilities=probabilities,
            pool=args.pool,
        )
        report["bundle"] = {
            "path": str(args.write_bundle),
            "image_weight": args.image_weight,
            "pool": args.pool,
            "val_rule_v2": {
                "accuracy": combined["image"]["accuracy"],
                "macro_f1": combined["image"]["macro_f1"],
                "macro_auc": combined["image"]["macro_auc"],
                "covid19_sensitivity": combined["image"]["per_class"]["covid19"]["sensitivity"],
                "covid19_specificity": combined["image"]["per_class"]["covid19"]["specificity"],
            },
        }
    for key, value in report["val"].items():
        print(f"{key}: {value}")
    if "bundle" in report:
        print("bundle:", report["bundle"])
    write_report(report, args.out)


if __name__ == "__main__":
    main()
