"""Shortcut guards: the figures that tell whether a model reads the lungs or the data's provenance.

Chest X-ray collections mix sources whose image size, aspect ratio, border and projection differ with
the label (see the data set's README). A model, or a trivial classifier, can score well by reading
those. :func:`covidet.detection.evaluate.evaluate_bundle` reports, beside its usual metrics:

* ``v1_rows``: the image metrics on the rows of the project's data set version 1 alone (every source
  except :data:`DATA_V2_SOURCES`), comparable with figures measured before version 2;
* ``within_source``: for every source holding two or more classes, the two-class accuracy and AUC
  between its two most frequent classes (:func:`within_source_metrics`): no source shortcut helps there;
* ``stability_probes``: the share of labels unchanged when the image is down-sampled and back, padded to
  a square, or cropped at the border (the probes are transforms in :mod:`covidet.detection.transforms`);
* ``geometry_baseline``: a random forest on width, height and aspect ratio alone, fitted on another
  split and scored on the evaluated one (:func:`geometry_baseline`): what image geometry alone buys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from PIL import Image

from covidet.detection.data import ImageRecord
from covidet.domain import CLASS_NAMES, Assessment, Label

if TYPE_CHECKING:  # evaluate imports this module: the report type is for annotations only
    from covidet.detection.evaluate import BundleEvaluation

__all__ = [
    "DATA_V2_SOURCES",
    "GeometryBaseline",
    "LabelSummary",
    "WithinSource",
    "format_shortcut_guards",
    "geometry_baseline",
    "label_summary",
    "v1_rows_metrics",
    "within_source_metrics",
]

#: Sources that version 2 of the project's data set (``../shared/data/cxr``, 2026-12) added; every other
#: row is unchanged from version 1.
DATA_V2_SOURCES = frozenset({"nih_cxr8", "mhh_hannover"})


class LabelSummary(TypedDict):
    """:func:`label_summary`: figures of decided labels; an undefined ratio is ``None``."""

    n: int
    accuracy: float | None
    macro_f1: float | None
    covid19_sensitivity: float | None
    covid19_specificity: float | None
    support: dict[str, int]


class GeometryBaseline(LabelSummary, total=False):
    """:func:`geometry_baseline`: its :class:`LabelSummary`, accuracy per source, the number of images
    it was fitted on, and (added by the evaluation) the split it was fitted on."""

    per_source: dict[str, float | None]
    n_train: int
    fitted_on: str


class WithinSource(TypedDict):
    """One source of :func:`within_source_metrics`: its two most frequent classes, compared."""

    classes: list[str]
    n: int
    support: dict[str, int]
    accuracy: float
    auc: float
    majority: float
    accuracy_3class: float


_COVID = Label.COVID19.value


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def label_summary(y_true: Sequence[str], y_pred: Sequence[str]) -> LabelSummary:
    """Accuracy, macro F1 (over the classes present in ``y_true``) and Covid-19 sensitivity/specificity
    of decided labels (strings from ``CLASS_NAMES``). Undefined ratios are ``None``."""
    from sklearn.metrics import f1_score

    n = len(y_true)
    present = [name for name in CLASS_NAMES if name in set(y_true)]
    covid_true = [t == _COVID for t in y_true]
    covid_pred = [p == _COVID for p in y_pred]
    return {
        "n": n,
        "accuracy": _ratio(sum(t == p for t, p in zip(y_true, y_pred, strict=True)), n),
        "macro_f1": (
            float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)) if n else None
        ),
        "covid19_sensitivity": _ratio(
            sum(t and p for t, p in zip(covid_true, covid_pred, strict=True)), sum(covid_true)
        ),
        "covid19_specificity": _ratio(
            sum(not t and not p for t, p in zip(covid_true, covid_pred, strict=True)), n - sum(covid_true)
        ),
        "support": dict(Counter(y_true)),
    }


def v1_rows_metrics(records: Sequence[ImageRecord], decided: Sequence[str]) -> LabelSummary | None:
    """:func:`label_summary` on the records not from :data:`DATA_V2_SOURCES`; ``None`` when the split
    holds no such record or only such records (then the figure would repeat the overall one)."""
    keep = [i for i, r in enumerate(records) if r.source not in DATA_V2_SOURCES]
    if not keep or len(keep) == len(records):
        return None
    return label_summary([records[i].label.value for i in keep], [decided[i] for i in keep])


def within_source_metrics(
    records: Sequence[ImageRecord], assessments: Sequence[Assessment]
) -> dict[str, WithinSource]:
    """Per source with two or more classes: how well the model separates its two most frequent classes.

    For the images of those two classes (``a``, ``b``; images of a third class left out), the two-class
    decision is the class with the higher probability of the two; ``auc`` ranks ``p(a) / (p(a) + p(b))``
    with ``a`` positive (``None`` when undefined); ``majority`` is the share of the larger class, the
    accuracy of always answering it; ``accuracy_3class`` is the model's own decision on the same images.
    Ties in frequency go to ``CLASS_NAMES`` order.
    """
    from sklearn.metrics import roc_auc_score

    by_source: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_source.setdefault(record.source or "unknown", []).append(index)
    result: dict[str, WithinSource] = {}
    for source, indices in sorted(by_source.items()):
        counts = Counter(records[i].label.value for i in indices)
        if len(counts) < 2:
            continue
        a, b = sorted(counts, key=lambda name: (-counts[name], CLASS_NAMES.index(name)))[:2]
        pair = [i for i in indices if records[i].label.value in (a, b)]
        truth = np.array([records[i].label.value == a for i in pair])
        p_a = np.array([assessments[i].probabilities[a] for i in pair])
        p_b = np.array([assessments[i].probabilities[b] for i in pair])
        share_a = p_a / np.maximum(p_a + p_b, 1e-12)
        two_class_a = p_a >= p_b
        result[source] = {
            "classes": [a, b],
            "n": len(pair),
            "support": {a: counts[a], b: counts[b]},
            "accuracy": float(np.mean(two_class_a == truth)),
            "auc": float(roc_auc_score(truth, share_a)),
            "majority": max(counts[a], counts[b]) / len(pair),
            "accuracy_3class": float(np.mean([assessments[i].label == records[i].label.value for i in pair])),
        }
    return result


def _geometry(records: Sequence[ImageRecord]) -> np.ndarray:
    """``[N, 3]``: width, height (pixels of the stored image, read from the header only) and width/height."""
    rows = []
    for record in records:
        with Image.open(record.path) as image:
            width, height = image.size
        rows.append((width, height, width / height))
    return np.asarray(rows, np.float64)


def geometry_baseline(
    train_records: Sequence[ImageRecord], eval_records: Sequence[ImageRecord], *, seed: int = 0
) -> GeometryBaseline:
    """A random forest (200 trees, scikit-learn defaults otherwise) on width, height and aspect ratio of
    ``train_records``, scored with :func:`label_summary` on ``eval_records``: the accuracy that image
    geometry alone buys on this split. A model should beat it on every source."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=200, random_state=seed)
    forest.fit(_geometry(train_records), [r.label.value for r in train_records])
    predicted = [str(label) for label in forest.predict(_geometry(eval_records))]
    per_source = {
        source: _ratio(
            sum(
                p == r.label.value for r, p in zip(eval_records, predicted, strict=True) if r.source == source
            ),
            sum(r.source == source for r in eval_records),
        )
        for source in sorted({r.source for r in eval_records})
    }
    summary: GeometryBaseline = {
        **label_summary([r.label.value for r in eval_records], predicted),
        "per_source": per_source,
        "n_train": len(train_records),
    }
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_shortcut_guards(report: BundleEvaluation) -> str:
    """A few lines a reader checks first: the model beside the geometry baseline, per source, on the
    version-1 rows, within each source and under the stability probes (from an evaluation report)."""
    image = report["image"]
    covid = image["per_class"]["covid19"]
    lines = [
        f"shortcut guards ({report['split']}, {report['n_images']} images; not for clinical use)",
        f"  model: accuracy {_pct(image['accuracy'])}, macro F1 {image['macro_f1']:.3f}, "
        f"Covid-19 sensitivity {_pct(covid['sensitivity'])} / specificity {_pct(covid['specificity'])}",
    ]
    baseline = report.get("geometry_baseline")
    if baseline:
        lines.append(
            f"  width/height/aspect forest (fitted on {baseline.get('fitted_on')}): accuracy "
            f"{_pct(baseline['accuracy'])}, macro F1 {baseline['macro_f1']:.3f}, Covid-19 sensitivity "
            f"{_pct(baseline['covid19_sensitivity'])} / specificity {_pct(baseline['covid19_specificity'])}"
        )
    v1 = report.get("v1_rows")
    if v1:
        lines.append(
            f"  version-1 rows ({v1['n']}): accuracy {_pct(v1['accuracy'])}, macro F1 {v1['macro_f1']:.3f}"
        )
    for source, entry in sorted(report.get("per_source", {}).items()):
        against = ""
        if baseline and source in baseline.get("per_source", {}):
            against = f" (geometry baseline {_pct(baseline['per_source'][source])})"
        lines.append(
            f"  source {source}: {entry['correct']}/{entry['n']} = {_pct(entry['accuracy'])}{against}"
        )
    for source, pair in report.get("within_source", {}).items():
        a, b = pair["classes"]
        lines.append(
            f"  within {source}, {a} vs {b} ({pair['n']}): accuracy {_pct(pair['accuracy'])}, "
            f"AUC {pair['auc']:.3f} (majority {_pct(pair['majority'])})"
        )
    for name, probe in report.get("stability_probes", {}).items():
        lines.append(f"  labels unchanged under {name}: {_pct(probe['unchanged'])}")
    return "\n".join(lines)
