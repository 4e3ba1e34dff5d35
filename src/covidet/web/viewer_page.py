"""The diagnostic viewer page: ``GET /viewer/studies/{study_uid}`` (optionally ``?image={id}``).

The page is a shell for the Cornerstone3D bundle built from ``web/viewer_src`` into
``static/viewer/`` (``make viewer``). The server embeds, as JSON, what the archive holds for the study
(:mod:`covidet.store.archive_queries`: its X-rays with their series and SOP Instance UIDs, and the AI SR
of each) and the patient's other studies (priors, same query, newest first); the browser then fetches
metadata, pixels and the AI SR over covidet's DICOMweb (WADO-RS under ``/dicom-web``) with the session
cookie, and saves the radiologist's rectangles through ``/api/v1/reviews``. See docs/web.md,
"Diagnostic viewer".

Reading the page is audited as ``read.study`` (object ``study``, ``"via": "web-viewer"``). Without the
bundle the page still answers, saying that ``make viewer`` builds it (a deployment error, not a
missing study).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypedDict
from urllib.parse import quote

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from covidet.api.auth import SESSION_COOKIE, AuthenticatedUser, get_optional_user, record_audit
from covidet.assessment.reports import LABEL_CODES
from covidet.store import archive_queries as aq
from covidet.store import review_queries as rq
from covidet.store import study_queries as sq
from covidet.store.db import Database
from covidet.store.models import Role, Study
from covidet.web.access import error_page
from covidet.web.rendering import LABELS, render

__all__ = ["BUNDLE_DIR", "VIEWER_PATH", "routes"]

logger = logging.getLogger(__name__)

#: Where ``make viewer`` writes the bundle (served as ``/static/viewer/``).
BUNDLE_DIR = Path(__file__).parent / "static" / "viewer"
#: URL of the page; ``{study_uid}`` is the Study Instance UID.
VIEWER_PATH = "/viewer/studies/{study_uid}"
#: PS3.18's root as :mod:`covidet.api.dicomweb` serves it.
DICOMWEB_ROOT = "/dicom-web"
#: At most this many prior studies are offered (newest first).
MAX_PRIORS = 10
_MAX_UID = 64
_ALLOWED_ROLES = (Role.ADMIN.value, Role.RADIOLOGIST.value)
#: The page's policy differs from every other page's (covidet.web.rendering.PAGE_HEADERS) in two words:
#: the bundle's WebAssembly codecs need 'wasm-unsafe-eval' (compiling WebAssembly, not eval of
#: strings), and Cornerstone's SVG measurement labels set style attributes ('unsafe-inline' for styles
#: only; scripts stay 'self'). Its decoding worker is a script of this origin.
_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class SrRef(TypedDict):
    """Where the viewer fetches an AI SR over WADO-RS."""

    seriesUid: str
    sopUid: str


class ViewerImage(TypedDict):
    """An X-ray of a study as the viewer's script reads it."""

    imageId: int
    seriesUid: str
    sopUid: str
    modality: str
    columns: int | None
    rows: int | None
    aiSr: SrRef | None


class PriorStudy(TypedDict):
    uid: str
    date: str
    description: str
    images: list[ViewerImage]


class PatientRef(TypedDict):
    id: int
    key: str
    name: str


class StudyInfo(TypedDict):
    uid: str
    id: int
    date: str
    description: str
    accession: str


class ViewerState(TypedDict):
    """The page's embedded state (before the page adds ``selected``, the roots and the labels);
    ``draftIds`` maps an image id (as a string: JSON keys) to this reader's draft review of it."""

    patient: PatientRef
    study: StudyInfo
    images: list[ViewerImage]
    priors: list[PriorStudy]
    draftIds: dict[str, int]


def _image_entry(record: aq.InstanceRecord, sr_by_image: dict[int, aq.InstanceRecord]) -> ViewerImage:
    sr = sr_by_image.get(record.image_id)
    return {
        "imageId": record.image_id,
        "seriesUid": record.series_instance_uid,
        "sopUid": record.sop_instance_uid,
        "modality": record.modality,
        "columns": record.columns,
        "rows": record.rows,
        "aiSr": {"seriesUid": sr.series_instance_uid, "sopUid": sr.sop_instance_uid} if sr else None,
    }


def _images(records: list[aq.InstanceRecord]) -> list[ViewerImage]:
    """The X-rays of a study, each with its newest AI SR (``kind == "ai-sr"``) when the archive has one."""
    sr_by_image = {r.image_id: r for r in records if r.kind == "ai-sr"}  # creation order: newest wins
    return [_image_entry(r, sr_by_image) for r in records if r.kind == "image"]


def _date(study: Study) -> str:
    return study.study_datetime.date().isoformat() if study.study_datetime else ""


def viewer_state(db: Database, study_uid: str, user_id: int) -> ViewerState | None:
    """The page's data for the study ``study_uid``, or ``None`` when covidet holds no X-ray of it."""
    with db.session() as session:
        study = sq.get_study_by_uid(session, study_uid)
        if study is None:
            return None
        patient = study.patient
        images = _images(aq.instances(session, study_uid=study_uid))
        if not images:
            return None
        priors: list[PriorStudy] = []
        for other in sq.other_studies(session, patient.id, exclude_study_id=study.id):
            prior_images = _images(aq.instances(session, study_ids=[other.id]))
            if prior_images:
                priors.append(
                    {
                        "uid": other.study_instance_uid,
                        "date": _date(other),
                        "description": other.description or "",
                        "images": prior_images,
                    }
                )
            if len(priors) >= MAX_PRIORS:
                break
        draft_ids: dict[str, int] = {}
        for image in images:
            for review in rq.image_reviews(session, image["imageId"]):
                if review.status == "draft" and review.reviewer_id == user_id:
                    draft_ids[str(image["imageId"])] = review.id
        return {
            "patient": {"id": patient.id, "key": patient.patient_key, "name": patient.name or ""},
            "study": {
                "uid": study.study_instance_uid,
                "id": study.id,
                "date": _date(study),
                "description": study.description or "",
                "accession": study.accession_number or "",
            },
            "images": images,
            "priors": priors,
            "draftIds": draft_ids,
        }


async def viewer3d_page(request: Request) -> Response:
    """The diagnostic viewer of one study (radiologists and admins; others get 403, strangers the
    sign-in form)."""
    db: Database = request.app.state.db
    user: AuthenticatedUser | None = await get_optional_user(
        request, db, None, request.cookies.get(SESSION_COOKIE)
    )
    if user is None:
        return RedirectResponse(f"/login?next={quote(request.url.path, safe='')}", status_code=303)
    headers = {"Content-Security-Policy": _CSP}
    if user.role not in _ALLOWED_ROLES:
        logger.warning("viewer refused to %s (%s)", user.username, user.role)
        message = f"The viewer needs the role admin or radiologist; you are {user.username} ({user.role})."
        return error_page(request, user, "Not allowed", message, status_code=403, headers=headers)
    study_uid = request.path_params["study_uid"]
    state = None
    if 0 < len(study_uid) <= _MAX_UID and all(c.isdigit() or c == "." for c in study_uid):
        state = await run_in_threadpool(viewer_state, db, study_uid, user.id)
    if state is None:
        message = f"covidet holds no X-ray of the study {study_uid[:_MAX_UID]}."
        return error_page(request, user, "Not found", message, status_code=404, headers=headers)
    wanted = request.query_params.get("image", "")
    ids = [image["imageId"] for image in state["images"]]
    selected = ids.index(int(wanted)) if wanted.isdigit() and int(wanted) in ids else 0
    await run_in_threadpool(
        record_audit,
        db,
        request,
        "read.study",
        user=user,
        object_type="study",
        object_id=state["study"]["id"],
        details={"via": "web-viewer", "patient_id": state["patient"]["id"], "image_ids": ids},
    )
    page_state = {
        **state,
        "selected": selected,
        "wadoRoot": DICOMWEB_ROOT,
        "staticRoot": "/static/viewer/",
        "labels": LABELS,
        "labelsByCode": {coding["code"]: label.value for label, coding in LABEL_CODES.items()},
    }
    bundle = BUNDLE_DIR / "viewer3d.js"
    context: dict[str, object] = {"state": page_state, "bundle_ready": bundle.is_file()}
    if bundle.is_file():
        context["bundle_version"] = int(bundle.stat().st_mtime)
    else:
        logger.error("viewer bundle missing (%s): run `make viewer`", bundle)
    return render(request, "viewer3d.html", context, user=user, headers=headers)


def routes() -> list[Route]:
    """The viewer's route (HTML; not part of the OpenAPI document)."""
    return [Route(VIEWER_PATH, viewer3d_page, methods=["GET"], name="web_viewer3d", include_in_schema=False)]
