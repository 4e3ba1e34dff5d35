"""The image viewer with review: ``GET /images/{image_id}``.

One X-ray with the detector's boxes, the triage, the vitals trend and the review form
(:mod:`covidet.web.image_view` reads it all). The page's script gets its state as embedded JSON
(``state``: image size, labels, model, boxes, this reader's draft) and saves the review through the
JSON API with the session's CSRF token. Reading the page is audited as the API's ``read.image`` with
``"via": "web"``. ``?signed={review id}`` shows a notice for a review the reader just signed.
"""

from __future__ import annotations

from datetime import datetime

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from covidet.api.auth import record_audit
from covidet.store.models import Role
from covidet.web.access import database, guard, not_found
from covidet.web.image_view import image_view
from covidet.web.rendering import LABELS, iso, render

__all__ = ["json_ready", "viewer_page"]


async def viewer_page(request: Request) -> Response:
    """One X-ray with the detector's boxes, the triage, the vitals trend and the review form."""
    allowed = await guard(request)
    if isinstance(allowed, Response):
        return allowed
    user = allowed
    image_id = int(request.path_params["image_id"])
    db = database(request)
    view = await run_in_threadpool(image_view, db, image_id, user.id) if 0 < image_id < 2**31 else None
    if view is None:
        return not_found(request, user, f"There is no image with id {image_id}.")
    ai = view["ai"]
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "read.image",
        user=user,
        object_type="image",
        object_id=image_id,
        details={
            "via": "web",
            "patient_id": view["patient"]["id"],
            "inference_id": ai["inference_id"] if ai else None,
            "vitals": view["vitals_total"],
            "reviews": [r["id"] for r in view["signed"]],
        },
    )
    signed = request.query_params.get("signed", "")
    signed_notice = next(
        (r for r in view["signed"] if str(r["id"]) == signed and r["reviewer_id"] == user.id), None
    )
    state = {
        "imageId": image_id,
        "userId": user.id,
        "width": view["image"]["columns"],
        "height": view["image"]["rows"],
        "labels": LABELS,
        "model": {"name": ai["model_name"], "version": ai["model_version"]} if ai else None,
        "aiLabel": ai["label"] if ai else None,
        "findings": view["findings"],
        "draft": json_ready(view["draft"]),
        "canReview": user.role in (Role.ADMIN.value, Role.RADIOLOGIST.value),
    }
    return render(
        request,
        "viewer.html",
        {**view, "signed_notice": signed_notice, "state": state},
        user=user,
    )


def json_ready(value: object) -> object:
    """``value`` with datetimes as ISO strings (for the page's embedded JSON)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    return value
