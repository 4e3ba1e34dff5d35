"""The model page: ``GET /model`` (the detector's model card, its evaluation plots, the models that
analysed images here) and ``GET /model/plots/{name}`` (one plot).

Contract: the card is read from the bundle the worker uses (:func:`model_card_path`) without
importing torch; a missing or unreadable card is said on the page, not raised. A plot name from the
URL is matched against a strict pattern and looked up in the plot folder's listing: no path from the
URL reaches the file system.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

import covidet
from covidet.store import study_queries as sq
from covidet.store.db import Database
from covidet.web.access import database, guard, not_found
from covidet.web.rendering import render

if TYPE_CHECKING:
    from covidet.config import Settings

__all__ = ["model_card_path", "model_page", "model_plot", "model_plots_dir"]

_PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png$")
#: Captions of the evaluation plots that ``covidet evaluate`` writes.
_PLOT_CAPTIONS = {
    "confusion_matrix.png": "Confusion matrix of the image-level decision",
    "roc.png": "ROC curves, one class against the others",
    "reliability.png": "Reliability diagram: predicted score against observed frequency (calibration)",
}


def model_card_path(settings: Settings) -> Path | None:
    """The model card of the bundle the worker uses: ``settings.model`` (``COVIDET_MODEL``), else the
    shipped bundle (inside the installed package, or ``models/`` of a source checkout). Looked up here
    rather than with :mod:`covidet.detection.bundle`, which would import torch into the web app."""
    package_dir = Path(covidet.__file__).resolve().parent
    candidates = []
    if settings.model:
        candidates.append(Path(settings.model).expanduser())
    candidates += [
        package_dir / "_models" / "covidet-detector",
        package_dir.parents[1] / "models" / "covidet-detector",
    ]
    for candidate in candidates:
        if (candidate / "model_card.json").is_file():
            return candidate / "model_card.json"
    return None


def model_plots_dir(card_path: Path | None) -> Path | None:
    """Where the model's evaluation plots are: ``plots/`` in the bundle, else ``docs/model-val`` of a
    source checkout (written by ``covidet evaluate --split val --out docs/model-val``)."""
    package_dir = Path(covidet.__file__).resolve().parent
    candidates = []
    if card_path is not None:
        candidates.append(card_path.parent / "plots")
    candidates.append(package_dir.parents[1] / "docs" / "model-val")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.png")):
            return candidate
    return None


def _models_in_use(db: Database) -> list[sq.ModelUsage]:
    with db.session() as session:
        return sq.models_in_use(session)


def _section(value: object) -> dict[str, object]:
    """A JSON object of the card, or an empty one where the card has none (or something else)."""
    return value if isinstance(value, dict) else {}


def _card_sections(card: Mapping[str, object]) -> dict[str, object]:
    """The model card's fields arranged for the page."""
    metrics = _section(card.get("metrics"))
    split_name, split_value = next(iter(metrics.items()), (None, {}))
    split = _section(split_value)
    image = _section(split.get("image"))
    detection = _section(split.get("detection"))
    training = _section(card.get("training"))
    return {
        "split_name": split_name,
        "split": split,
        "image": image,
        "per_class": _section(image.get("per_class")),
        "detection": detection,
        "detection_per_class": _section(detection.get("per_class")),
        "training": training,
        "config": _section(training.get("config")),
    }


def _read_json(path: Path) -> object:
    """The JSON document at ``path``; raises ``OSError`` or ``ValueError``."""
    return json.loads(path.read_text(encoding="utf-8"))


async def model_page(request: Request) -> Response:
    """The model card of the detector and its evaluation plots."""
    allowed = await guard(request)
    if isinstance(allowed, Response):
        return allowed
    card_path = model_card_path(request.app.state.settings)
    card: dict[str, object] | None = None
    error = None
    if card_path is None:
        error = "No model card found: set COVIDET_MODEL to a model bundle folder."
    else:
        try:
            loaded = _read_json(card_path)
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            card = loaded
        except (OSError, ValueError) as exc:
            error = f"The model card {card_path} cannot be read: {exc}"
    plots_dir = model_plots_dir(card_path)
    plots = (
        [
            {"name": p.name, "caption": _PLOT_CAPTIONS.get(p.name, p.stem.replace("_", " ").capitalize())}
            for p in sorted(plots_dir.glob("*.png"))
            if _PLOT_NAME.match(p.name)
        ]
        if plots_dir is not None
        else []
    )
    report = None
    if plots_dir is not None and (plots_dir / "report.json").is_file():
        try:
            report = _read_json(plots_dir / "report.json")
        except (OSError, ValueError):
            report = None
    in_use = await run_in_threadpool(_models_in_use, database(request))
    return render(
        request,
        "model.html",
        {
            "card": card,
            "card_path": card_path,
            "error": error,
            "sections": _card_sections(card) if card else None,
            "plots": plots,
            "report": report,
            "in_use": in_use,
        },
        user=allowed,
    )


async def model_plot(request: Request) -> Response:
    """One evaluation plot (PNG) of the model page."""
    allowed = await guard(request)
    if isinstance(allowed, Response):
        return allowed
    name = request.path_params["name"]
    plots_dir = model_plots_dir(model_card_path(request.app.state.settings))
    # The name is matched against a strict pattern and then looked up in the folder's listing: no
    # path from the URL ever reaches the file system.
    if plots_dir is None or not _PLOT_NAME.match(name):
        return not_found(request, allowed, "No such plot.")
    files = {p.name: p for p in plots_dir.glob("*.png")}
    if name not in files:
        return not_found(request, allowed, "No such plot.")
    return FileResponse(
        files[name],
        media_type="image/png",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
    )
