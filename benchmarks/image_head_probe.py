"""Would an image-level head help? A linear probe on the shipped detector's own features.

    python benchmarks/image_head_probe.py --out benchmarks/results/image_head_probe.json

The decision rule reads boxes. This asks, before any multi-task training, whether the image as a whole
carries more usable evidence: each image's FPN levels of the shipped detector (frozen) are averaged over
space and concatenated (one vector per image), and a class-balanced logistic regression maps them to
covid19 / pneumonia / normal. Its regularisation ``C`` is chosen by 5-fold cross-validation on the
**train** split grouped by patient (macro F1), never on val; then it is fitted on all of train and
scored once on val, with per-source accuracy and label stability under down-sampling to 224 px and back
(as ``covidet evaluate``). The val figures of every ``C`` are recorded too, marked as such, to show how
much they move: choosing among them on val would be tuning on val.

Caveat: the detector was trained on these train images, so its features fit them better than unseen
ones; the probe's train-CV figures are optimistic, its val figures are not.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from _report import model_benchmark_args, write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.bundle import default_bundle_path, load_bundle
from covidet.detection.data import ImageRecord, load_records
from covidet.detection.transforms import DownsampleRoundTrip, resize_image
from covidet.domain import model_id_from_label
from covidet.imaging import read_image

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@torch.inference_mode()
def pooled_features(
    model: torch.nn.Module, records: list[ImageRecord], size: int, degrade: int | None
) -> np.ndarray:
    """``[N, levels*256]``: each FPN level of ``model`` averaged over space, per image."""
    degrader = DownsampleRoundTrip(degrade) if degrade else None
    rows = []
    for record in tqdm(
        records, desc=f"features{' at ' + str(degrade) + ' px' if degrade else ''}", unit="image"
    ):
        pixels = torch.from_numpy(np.ascontiguousarray(read_image(record.path).pixels, np.float32))[None]
        if degrader is not None:
            pixels, _ = degrader(pixels, {"boxes": torch.zeros((0, 4))})
        image = resize_image(pixels, size).expand(3, -1, -1)
        batch, _ = model.transform([image])
        levels = model.backbone(batch.tensors)
        rows.append(np.concatenate([level.mean(dim=(2, 3))[0].numpy() for level in levels.values()]))
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


def main() -> None:
    args, data = model_benchmark_args(__doc__, "benchmarks/results/image_head_probe.json")
    model, card = load_bundle(args.model or default_bundle_path())
    model.eval()
    size = int(card["architecture"]["max_size"])
    train, val = load_records(data, split="train"), load_records(data, split="val")
    y_train = np.array([model_id_from_label(r.label) - 1 for r in train])
    y_val = np.array([model_id_from_label(r.label) - 1 for r in val])
    x_train = pooled_features(model, train, size, None)
    x_val = pooled_features(model, val, size, None)
    x_low = pooled_features(model, val, size, 224)
    groups = np.array([r.patient_id for r in train])
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
    val_by_c = {str(c): _scores(y_val, _probe(c).fit(x_train, y_train).predict_proba(x_val)) for c in C_GRID}
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "model": {"name": card.get("name"), "version": card.get("version")},
        "features": f"{x_train.shape[1]} (FPN levels averaged over space)",
        "train_cv_macro_f1_by_C": train_cv,
        "chosen_C_by_train_cv": chosen,
        "val": _scores(y_val, probabilities)
        | {"stability_224": float((probe.predict(x_low) == predicted).mean()), "per_source": per_source},
        "val_by_C_not_for_selection": val_by_c,
    }
    for key, value in report["val"].items():
        print(f"{key}: {value}")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
