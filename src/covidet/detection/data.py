"""Datasets over covidet's manifest format and over COCO JSON, with patient-level splits.

Manifest format (``manifest.csv`` + ``boxes.csv`` in one folder, see ``../shared/data/cxr/README.md``):

* ``manifest.csv``: one row per image; required columns ``image`` (path relative to the folder),
  ``label`` (covid19 / pneumonia / normal) and ``patient_id``; optional ``split`` (train / val / test),
  ``source``, ``tier_tiny`` (1 marks the small subset for fast tests).
* ``boxes.csv``: one row per box: ``image``, ``label``, ``x1, y1, x2, y2`` (pixels of the stored image),
  optional ``part`` and ``box_source``. Images without rows have an image label only: they are kept, as
  images whose lungs are unannotated (their targets carry no boxes).

COCO JSON: ``images`` (``id``, ``file_name``, ``width``, ``height``, optional ``label``, ``patient_id``,
``split``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``), ``categories``
whose names are covid19 / pneumonia / normal. An image's label is its ``label`` field or, failing that,
the most frequent category among its boxes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from covidet.domain import Label, model_id_from_label
from covidet.imaging import read_image

__all__ = [
    "DATA_ENV_VAR",
    "DatasetError",
    "DetectionDataset",
    "ImageRecord",
    "add_extra_boxes",
    "collate_detection",
    "dataset_hash",
    "load_coco",
    "load_manifest",
    "load_records",
    "patient_split",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "COVIDET_DATA"


class DatasetError(ValueError):
    """A dataset folder or file is missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset with its image-level label and its (possibly empty) boxes.

    ``boxes`` is float32 ``[N, 4]`` ``[x1, y1, x2, y2]`` in pixels of the stored image;
    ``box_labels`` has N labels. ``index`` is a stable integer id within the dataset (COCO image id).
    """

    index: int
    image: str
    path: Path
    label: Label
    patient_id: str
    split: str | None = None
    source: str = ""
    tier_tiny: bool = False
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_labels: tuple[Label, ...] = ()
    box_sources: tuple[str, ...] = ()


def resolve_data_dir(data: str | os.PathLike | None) -> Path:
    """The dataset folder from an explicit option, else ``$COVIDET_DATA``; never a built-in path."""
    chosen = data if data is not None else os.environ.get(DATA_ENV_VAR)
    if not chosen:
        raise DatasetError(f"no dataset given: pass --data DIR or set {DATA_ENV_VAR}")
    path = Path(chosen).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path does not exist: {path}")
    return path


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"missing dataset file: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(required) - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return list(reader)


def _label(value: str, where: str) -> Label:
    try:
        return Label(value.strip().lower())
    except ValueError:
        allowed = ", ".join(label.value for label in Label)
        raise DatasetError(f"{where}: unknown label {value!r} (expected one of {allowed})") from None


def load_manifest(root: str | os.PathLike) -> list[ImageRecord]:
    """Read ``manifest.csv`` and ``boxes.csv`` under ``root`` into records (manifest order)."""
    root = Path(root)
    rows = _read_csv(root / "manifest.csv", ("image", "label", "patient_id"))
    boxes_path = root / "boxes.csv"
    boxes_by_image: dict[str, list[dict[str, str]]] = defaultdict(list)
    if boxes_path.exists():
        for row in _read_csv(boxes_path, ("image", "label", "x1", "y1", "x2", "y2")):
            boxes_by_image[row["image"]].append(row)
    records = []
    for index, row in enumerate(rows, start=1):
        where = f"{root / 'manifest.csv'} row {index + 1}"
        box_rows = boxes_by_image.get(row["image"], [])
        try:
            boxes = np.array(
                [[float(b[k]) for k in ("x1", "y1", "x2", "y2")] for b in box_rows], np.float32
            ).reshape(-1, 4)
        except ValueError as error:
            raise DatasetError(f"{root / 'boxes.csv'}: bad coordinate for {row['image']}: {error}") from None
        records.append(
            ImageRecord(
                index=index,
                image=row["image"],
                path=root / row["image"],
                label=_label(row["label"], where),
                patient_id=row["patient_id"],
                split=row.get("split") or None,
                source=row.get("source", ""),
                tier_tiny=row.get("tier_tiny", "0").strip() == "1",
                boxes=boxes,
                box_labels=tuple(_label(b["label"], f"{root / 'boxes.csv'}") for b in box_rows),
                box_sources=tuple(b.get("box_source", "") for b in box_rows),
            )
        )
    return records


def load_coco(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[ImageRecord]:
    """Read a COCO detection JSON into records; image paths are relative to ``image_root``
    (default: the JSON file's folder)."""
    annotation_file = Path(annotation_file)
    root = Path(image_root) if image_root is not None else annotation_file.parent
    try:
        coco = json.loads(annotation_file.read_text(encoding="utf-8"))
        categories = {c["id"]: _label(c["name"], f"{annotation_file} category") for c in coco["categories"]}
        images = coco["images"]
        annotations = coco.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DatasetError(f"{annotation_file}: not a readable COCO JSON ({error})") from None
    by_image: dict[int, list[dict]] = defaultdict(list)
    for annotation in annotations:
        by_image[annotation["image_id"]].append(annotation)
    records = []
    for image in images:
        anns = by_image.get(image["id"], [])
        box_labels = tuple(categories[a["category_id"]] for a in anns)
        if "label" in image:
            label = _label(image["label"], f"{annotation_file} image {image['id']}")
        elif box_labels:
            label = Counter(box_labels).most_common(1)[0][0]
        else:
            raise DatasetError(f"{annotation_file}: image {image['id']} has no boxes and no 'label' field")
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        records.append(
            ImageRecord(
                index=int(image["id"]),
                image=image["file_name"],
                path=root / image["file_name"],
                label=label,
                patient_id=str(image.get("patient_id", image["file_name"])),
                split=image.get("split"),
                source=str(image.get("source", "")),
                boxes=boxes,
                box_labels=box_labels,
                box_sources=tuple(str(a.get("box_source", "")) for a in anns),
            )
        )
    return records


def patient_split(
    records: Sequence[ImageRecord], *, val_fraction: float = 0.15, seed: int = 0
) -> dict[str, str]:
    """Assign each patient to ``train`` or ``val`` deterministically (hash of seed and patient id), so
    that no patient has images on both sides. Returns ``{patient_id: split}``."""
    split = {}
    for patient in sorted({r.patient_id for r in records}):
        digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
        split[patient] = "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"
    return split


def load_records(
    data: str | os.PathLike | None,
    *,
    split: str | None = None,
    tier: str | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> list[ImageRecord]:
    """Load a dataset folder (manifest) or COCO JSON file and select a split.

    Args:
        data: folder with ``manifest.csv`` or a ``.json`` COCO file; ``None`` reads ``$COVIDET_DATA``.
        split: ``train``, ``val``, ``test`` or ``None`` for all. Records without a ``split`` column get a
            patient-level split from :func:`patient_split`.
        tier: ``tiny`` keeps only ``tier_tiny`` rows; ``None`` keeps all.
    """
    path = resolve_data_dir(data)
    records = load_coco(path) if path.suffix.lower() == ".json" else load_manifest(path)
    if any(r.split is None for r in records):
        assignment = patient_split(records, val_fraction=val_fraction, seed=seed)
        records = [r if r.split else _with_split(r, assignment[r.patient_id]) for r in records]
    _check_patient_leakage(records)
    if tier == "tiny":
        records = [r for r in records if r.tier_tiny]
    elif tier not in (None, "", "all"):
        raise DatasetError(f"unknown tier {tier!r}: use 'tiny' or leave it out")
    if split is not None:
        records = [r for r in records if r.split == split]
    if not records:
        raise DatasetError(f"no images in {path} for split={split!r} tier={tier!r}")
    return records


def add_extra_boxes(
    records: Sequence[ImageRecord], boxes_csv: str | os.PathLike, *, min_score: float = 0.0
) -> list[ImageRecord]:
    """Give box-less records the boxes of ``boxes_csv`` (e.g. ``covidet propose-boxes`` output).

    ``boxes_csv`` has the columns of ``boxes.csv`` (``image``, ``x1, y1, x2, y2``; optional ``label``,
    ``box_source``, ``score``). Only records that have **no** boxes receive rows: a human or
    mask-derived box is never replaced. Each added box takes its image's label (the image label is the
    ground truth; a proposal only says where the lungs are) and keeps its ``box_source`` (default
    ``model_proposed``). Rows scoring below ``min_score`` are ignored.
    """
    path = Path(boxes_csv)
    rows_by_image: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in _read_csv(path, ("image", "x1", "y1", "x2", "y2")):
        try:
            if float(row.get("score") or 1.0) >= min_score:
                rows_by_image[row["image"]].append(row)
        except ValueError:
            raise DatasetError(f"{path}: bad score {row.get('score')!r} for {row['image']}") from None
    updated = []
    for record in records:
        rows = rows_by_image.get(record.image, [])
        if len(record.boxes) or not rows:
            updated.append(record)
            continue
        try:
            boxes = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows], np.float32)
        except ValueError as error:
            raise DatasetError(f"{path}: bad coordinate for {record.image}: {error}") from None
        if not np.all((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])):
            raise DatasetError(f"{path}: a box of {record.image} has x2 <= x1 or y2 <= y1")
        updated.append(
            replace(
                record,
                boxes=boxes,
                box_labels=(record.label,) * len(rows),
                box_sources=tuple(r.get("box_source") or "model_proposed" for r in rows),
            )
        )
    return updated


def _with_split(record: ImageRecord, split: str) -> ImageRecord:
    return replace(record, split=split)


def _check_patient_leakage(records: Sequence[ImageRecord]) -> None:
    splits_by_patient: dict[str, set[str]] = defaultdict(set)
    for record in records:
        splits_by_patient[record.patient_id].add(record.split or "")
    leaking = sorted(p for p, s in splits_by_patient.items() if len(s) > 1)
    if leaking:
        raise DatasetError(
            f"{len(leaking)} patient(s) have images in more than one split (e.g. {leaking[0]!r}): "
            "splits must be by patient"
        )


def dataset_hash(records: Sequence[ImageRecord]) -> str:
    """SHA-256 over the images' bytes, labels and boxes, in a stable order: identifies training data."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.image):
        digest.update(record.image.encode())
        digest.update(record.label.value.encode())
        digest.update(np.ascontiguousarray(record.boxes, np.float32).tobytes())
        digest.update(hashlib.sha256(record.path.read_bytes()).digest())
    return digest.hexdigest()


Transform = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class DetectionDataset(Dataset):
    """Images and targets for torchvision detection models.

    Item ``i`` is ``(image, target)``: ``image`` float32 ``[3, H, W]`` in ``[0, 1]`` (grayscale
    replicated to 3 channels) and ``target`` with ``boxes`` float ``[N, 4]`` ``[x1, y1, x2, y2]`` in
    pixels of the returned image, ``labels`` int64 ``[N]`` (model ids 1..3), ``image_id`` int64,
    ``image_label`` int64 (model id of the image's label), ``orig_size`` int64 ``[2]`` (H, W of the
    file). Images without boxes have N = 0: their lungs are unannotated, the image label still counts.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Transform | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[item]
        xray = read_image(record.path)
        image = torch.from_numpy(xray.pixels).unsqueeze(0)
        target = {
            "boxes": torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([model_id_from_label(b) for b in record.box_labels], dtype=torch.int64),
            "image_id": torch.tensor(record.index, dtype=torch.int64),
            "image_label": torch.tensor(model_id_from_label(record.label), dtype=torch.int64),
            "orig_size": torch.tensor([xray.height, xray.width], dtype=torch.int64),
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image.expand(3, -1, -1).contiguous(), target

    def image_labels(self) -> list[Label]:
        """Image-level labels in dataset order (for class-balanced sampling)."""
        return [r.label for r in self.records]


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images as a list: detection models take images of different sizes."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
