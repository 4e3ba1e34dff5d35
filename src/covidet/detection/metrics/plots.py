"""PNG figures of an image-level metrics report: confusion matrix, ROC curves, reliability diagram.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidet.detection.metrics.classification import ImageLevelMetrics
from covidet.detection.metrics.detections import DEFAULT_CLASS_NAMES

__all__ = ["save_metric_plots"]


def save_metric_plots(
    report: ImageLevelMetrics,
    out_dir: Path,
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    y_true: Sequence[int] | None = None,
    probabilities: np.ndarray | None = None,
) -> list[Path]:
    """Write PNG figures of an :func:`image_level_metrics` report into ``out_dir`` (created if missing).

    * ``confusion_matrix.png``: counts, annotated (rows true, columns predicted);
    * ``roc.png``: one-vs-rest ROC curve per class labelled with its AUC, only when ``y_true`` and
      ``probabilities`` are given; classes with only positives or only negatives are skipped;
    * ``reliability.png``: accuracy and mean confidence per bin against the diagonal, ECE in the title.

    Figures are drawn on the Agg canvas through :class:`matplotlib.figure.Figure` (no pyplot, so the
    global backend and any interactive session are left untouched) and released after saving.
    Returns the paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(name) for name in class_names]
    written: list[Path] = []

    def save(fig: Figure, filename: str) -> None:
        FigureCanvasAgg(fig)
        path = out_dir / filename
        fig.savefig(path, dpi=120, bbox_inches="tight")
        fig.clear()
        written.append(path)

    # Confusion matrix.
    cm = np.asarray(report["confusion_matrix"], dtype=np.int64)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(names)), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    save(fig, "confusion_matrix.png")

    # ROC curves, one-vs-rest.
    if y_true is not None and probabilities is not None:
        truth = np.asarray(y_true).reshape(-1)
        probs = np.asarray(probabilities, dtype=np.float64)
        fig = Figure(figsize=(4.5, 4))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        for k, name in enumerate(names):
            positives = truth == k
            if not 0 < int(positives.sum()) < truth.size:
                continue
            fpr, tpr, _ = roc_curve(positives.astype(int), probs[:, k])
            entry = (report.get("per_class") or {}).get(name)
            auc = entry.get("auc") if entry else None
            label = f"{name} (AUC {auc:.3f})" if auc is not None else name
            ax.plot(fpr, tpr, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title("ROC (one-vs-rest)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
        save(fig, "roc.png")

    # Reliability diagram.
    reliability = report["reliability"]
    accuracy = reliability["bin_accuracy"]
    confidence = reliability["bin_confidence"]
    n_bins = len(accuracy)
    edges = reliability.get("bin_edges") or list(np.linspace(0.0, 1.0, n_bins + 1))
    lefts = np.asarray(edges[:-1], dtype=np.float64)
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    acc_values = np.asarray([math.nan if a is None else a for a in accuracy], dtype=np.float64)
    conf_values = np.asarray([math.nan if c is None else c for c in confidence], dtype=np.float64)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    ax.bar(lefts, np.nan_to_num(acc_values), width=widths, align="edge", edgecolor="black", label="accuracy")
    filled = ~np.isnan(conf_values)
    ax.plot(conf_values[filled], acc_values[filled], "o", color="tab:red", label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {float(report['ece']):.3f})")
    ax.legend(loc="upper left")
    save(fig, "reliability.png")
    return written
