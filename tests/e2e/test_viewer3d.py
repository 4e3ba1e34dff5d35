"""The diagnostic viewer (Cornerstone3D over covidet's DICOMweb) in Debian's Chromium, driven by
Playwright, against a real deployment: covidet's runtime with its DICOM receiver and the shipped
detector, the web app on uvicorn. The X-ray is pydicom-data's RG1_UNCR.dcm (a real 16-bit MONOCHROME1
chest radiograph, 15 bits stored) sent by dcmtk's storescu, with an earlier study of the same patient
(the same pixels under new UIDs) as its prior.

What is checked is what a radiologist sees: the canvas's grey level at a fixed point follows the
window as PS3.3's linear VOI LUT says for the stored value there (native bit depth, not an 8-bit
rendition), invert flips it, the AI findings from the AI SR are drawn and toggle, a length can be
measured, the tag panel shows the Patient ID, a drawn rectangle is saved as an ``add`` action of the
radiologist's draft review, and a prior opens beside the image.

The bundle is built by ``make viewer``; without it these tests fail (they do not skip) and say so.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# The test extras install Playwright: a missing one fails the import, it is not skipped.
import playwright.sync_api as playwright_api
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid
from sqlalchemy import func, select

from covidet.api import create_app
from covidet.config import Settings
from covidet.demo import DemoAccounts, register_demo
from covidet.runner import start_services
from covidet.store.db import Database
from covidet.store.models import AuditEvent, DicomObject, Image
from covidet.web.viewer_page import BUNDLE_DIR
from tests.e2e import test_web
from tests.e2e.test_web import screenshot, serve, wait_until
from tests.ingest.conftest import dcmtk, dcmtk_env
from tests.servers import free_port

browser = test_web.browser  # the module's Chromium (a pytest fixture)
PASSWORDS = {"admin": "admin-viewer-password", "rad": "radiologist-viewer-pw"}
EXPECTED_PATIENT_ID = "9RG1"  # RG1_UNCR.dcm's PatientID


@dataclass
class ViewerDeployment:
    base_url: str
    db: Database
    accounts: DemoAccounts
    study_uid: str
    prior_study_uid: str
    image_id: int
    stored: np.ndarray  # the X-ray's stored values (rows, columns)
    eight_bit_study_uid: str  # another patient's 8-bit X-ray


def require_bundle() -> None:
    if not (BUNDLE_DIR / "viewer3d.js").is_file():
        pytest.fail(f"the viewer bundle {BUNDLE_DIR}/viewer3d.js is missing: run `make viewer`")


def storescu(port: int, aet: str, *files: Path, options: tuple[str, ...] = ()) -> None:
    """Send ``files`` with dcmtk's storescu in one association (``options``: e.g. the transfer syntax
    to propose)."""
    done = subprocess.run(
        [dcmtk("storescu"), *options, "-aet", aet, "-aec", "COVIDET", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def viewer_deployment(
    tmp_path_factory: pytest.TempPathFactory, rg1_dicom: Path
) -> Iterator[ViewerDeployment]:
    require_bundle()
    tmp = tmp_path_factory.mktemp("viewer3d")
    url = f"sqlite:///{tmp / 'covidet.db'}"
    setup_db = Database(url)
    accounts = register_demo(
        setup_db,
        admin="admin",
        radiologist="rad",
        admin_password=PASSWORDS["admin"],
        radiologist_password=PASSWORDS["rad"],
    )
    setup_db.dispose()
    current = pydicom.dcmread(rg1_dicom)
    # The prior: the same patient's earlier study (same pixels, new study, series and instance UIDs).
    prior = pydicom.dcmread(rg1_dicom)
    prior.StudyInstanceUID = generate_uid()
    prior.SeriesInstanceUID = generate_uid()
    prior.SOPInstanceUID = prior.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    prior.StudyDate = "20030101"
    # Stored JPEG 2000 (lossless): WADO-RS serves its frames as stored to Cornerstone's Accept
    # (transfer-syntax=*), so the browser decodes them with the bundle's OpenJPEG WebAssembly codec.
    prior.compress(JPEG2000Lossless)
    prior_path = tmp / "prior.dcm"
    prior.save_as(prior_path)
    # Another patient's 8-bit X-ray (RG1's values scaled to 0..255, MONOCHROME2): the presets' 8-bit case.
    eight = pydicom.dcmread(rg1_dicom)
    scaled = (eight.pixel_array.astype(np.float64) * 255 / int(eight.pixel_array.max())).round()
    eight.PixelData = (255 - scaled).astype(np.uint8).tobytes()  # MONOCHROME1 -> MONOCHROME2
    eight.BitsAllocated, eight.BitsStored, eight.HighBit = 8, 8, 7
    eight.PhotometricInterpretation = "MONOCHROME2"
    eight.WindowCenter, eight.WindowWidth = 128, 256
    eight.PatientID = "EIGHT-BIT-1"
    eight.StudyInstanceUID, eight.SeriesInstanceUID = generate_uid(), generate_uid()
    eight.SOPInstanceUID = eight.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    eight_path = tmp / "eight.dcm"
    eight.save_as(eight_path)

    settings = Settings(home=tmp / "home", database_url=url)
    dicom_port = free_port()
    services = start_services(settings, dicom_port=dicom_port)
    try:
        app = create_app(settings, db=services.runtime.db, ingest=services.runtime.ingest)
        app.state.runtime = services.runtime
        db = services.runtime.db
        with serve(app) as (base_url, _server):
            storescu(dicom_port, accounts.modality_ae, prior_path, options=("-xv",))  # JPEG 2000 lossless
            storescu(dicom_port, accounts.modality_ae, rg1_dicom, eight_path)

            def analysed_with_sr() -> bool:
                with db.session() as session:
                    done = session.scalar(
                        select(func.count()).select_from(Image).where(Image.status == "analysed")
                    )
                    srs = session.scalar(
                        select(func.count()).select_from(DicomObject).where(DicomObject.kind == "ai-sr")
                    )
                return done == 3 and srs == 3

            wait_until(analysed_with_sr, 300, "the three X-rays were not analysed with their AI SRs")
            with db.session() as session:
                image_id = session.scalar(
                    select(Image.id).where(Image.sop_instance_uid == current.SOPInstanceUID)
                )
            assert image_id is not None
            yield ViewerDeployment(
                base_url,
                db,
                accounts,
                current.StudyInstanceUID,
                prior.StudyInstanceUID,
                image_id,
                current.pixel_array,
                eight.StudyInstanceUID,
            )
    finally:
        services.stop()


@pytest.fixture(scope="module")
def viewer(viewer_deployment: ViewerDeployment, browser: Any) -> Iterator[Any]:
    """The viewer of the RG1 study, signed in as the radiologist, its image drawn."""
    context = browser.new_context(
        viewport={"width": 1440, "height": 1000}, base_url=viewer_deployment.base_url
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    target = f"/viewer/studies/{viewer_deployment.study_uid}"
    page.goto(target)
    assert "/login" in page.url
    page.get_by_label("Username").fill("rad")
    page.get_by_label("Password").fill(PASSWORDS["rad"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: url.endswith(target))
    playwright_api.expect(page.locator("#viewer-status")).to_have_attribute(
        "data-state", "ready", timeout=60_000
    )
    yield page
    context.close()


# ------------------------------------------------------------------------------------------ helpers


def centre_grey(page: Any, viewport: str = "#vp-main") -> float:
    """The grey level (0-255) at the centre of a viewport's canvas, a 3x3 mean, after the next
    rendered frame."""
    page.wait_for_timeout(50)  # the render is requested on an animation frame
    return page.evaluate(
        """(selector) => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => {
            const canvas = document.querySelector(selector + ' canvas');
            const ctx = canvas.getContext('2d', { willReadFrequently: true });
            const x = Math.floor(canvas.width / 2) - 1, y = Math.floor(canvas.height / 2) - 1;
            const data = ctx.getImageData(x, y, 3, 3).data;
            let sum = 0;
            for (let i = 0; i < data.length; i += 4) sum += data[i];
            resolve(sum / 9);
        })))""",
        viewport,
    )


def set_window(page: Any, width: float, level: float) -> None:
    page.fill("#ww", str(width))
    page.fill("#wc", str(level))
    page.click("#window-apply")


def monochrome1_grey(value: float, width: float, level: float) -> float:
    """PS3.3 C.11.2.1.2.1 linear VOI LUT to 0-255, then MONOCHROME1's inversion (low values bright)."""
    if value <= level - 0.5 - (width - 1) / 2:
        y = 0.0
    elif value > level - 0.5 + (width - 1) / 2:
        y = 255.0
    else:
        y = ((value - (level - 0.5)) / (width - 1) + 0.5) * 255
    return 255 - y


def drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag with the left button across the main viewport, in fractions of its size."""
    box = page.locator("#vp-main").bounding_box()
    page.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    page.mouse.down()
    for step in range(1, 11):
        f = step / 10
        page.mouse.move(
            box["x"] + box["width"] * (start[0] + (end[0] - start[0]) * f),
            box["y"] + box["height"] * (start[1] + (end[1] - start[1]) * f),
        )
    page.mouse.up()


# -------------------------------------------------------------------------------------------- tests


def centre_value(deployment: ViewerDeployment) -> float:
    """The stored value at the centre of the X-ray (median of the central 6x6 pixels)."""
    rows, columns = deployment.stored.shape
    patch = deployment.stored[rows // 2 - 3 : rows // 2 + 3, columns // 2 - 3 : columns // 2 + 3]
    return float(np.median(patch))


def test_native_bit_depth_windowing_follows_the_voi_lut(
    viewer: Any, viewer_deployment: ViewerDeployment
) -> None:
    """The centre of the fitted image is the centre of the X-ray: its stored value there, through the
    linear VOI LUT and MONOCHROME1's inversion, is what the canvas shows, for three windows of the
    15-bit values (an 8-bit rendition could not follow a 1000-wide window around a value of ~3400)."""
    value = centre_value(viewer_deployment)
    width = 1000.0
    greys = {}
    for offset in (-300.0, 0.0, 300.0):
        set_window(viewer, width, value + offset)
        greys[offset] = centre_grey(viewer)
        expected = monochrome1_grey(value, width, value + offset)
        assert abs(greys[offset] - expected) <= 25, (offset, greys[offset], expected)
    # A higher level puts the value lower in the window: darker before, brighter after MONOCHROME1's
    # inversion, step by step.
    assert greys[-300.0] + 60 < greys[0.0] < greys[300.0] - 60, greys
    # Invert flips the displayed grey; inverting again restores it.
    viewer.click("#invert")
    playwright_api.expect(viewer.locator("#invert")).to_have_attribute("aria-pressed", "true")
    inverted = centre_grey(viewer)
    assert abs(inverted - (255 - greys[300.0])) <= 25, (inverted, greys[300.0])
    viewer.focus("#vp-main")
    viewer.keyboard.press("i")  # the same from the keyboard, on the focused image
    playwright_api.expect(viewer.locator("#invert")).to_have_attribute("aria-pressed", "false")
    assert abs(centre_grey(viewer) - greys[300.0]) <= 3
    assert not viewer.errors, viewer.errors


def test_page_access_headers_and_audit(viewer: Any, viewer_deployment: ViewerDeployment) -> None:
    """Strangers are sent to the sign-in form; an unknown or malformed study is a 404 page; the page's
    policy allows WebAssembly and this origin's scripts only; opening it is audited as read.study."""
    path = f"/viewer/studies/{viewer_deployment.study_uid}"
    stranger = httpx.get(viewer_deployment.base_url + path)
    assert stranger.status_code == 303
    assert stranger.headers["location"].startswith("/login?next=%2Fviewer%2Fstudies%2F")
    assert viewer.request.get("/viewer/studies/1.2.3.4").status == 404
    assert viewer.request.get("/viewer/studies/..%2F..%2Fetc").status == 404
    page = viewer.request.get(path)
    assert page.status == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"

    def read_study_events() -> list[AuditEvent]:
        with viewer_deployment.db.session() as session:  # audit events are group-committed: wait
            return list(
                session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.action == "read.study", AuditEvent.actor_username == "rad"
                    )
                )
            )

    events = wait_until(read_study_events, 15, "no read.study audit event")
    assert events[-1].details["via"] == "web-viewer"
    assert viewer_deployment.image_id in events[-1].details["image_ids"]


def test_tag_panel_shows_the_patient_id(viewer: Any) -> None:
    row = viewer.locator('#tags tr[data-tag="00100020"]')
    playwright_api.expect(row).to_contain_text(EXPECTED_PATIENT_ID)
    playwright_api.expect(row).to_contain_text("PatientID")
    viewer.fill("#tags-filter", "PatientID")
    assert viewer.locator("#tags tbody tr:not([hidden])").count() >= 1
    playwright_api.expect(viewer.locator('#tags tr[data-tag="00280004"]')).to_be_hidden()
    viewer.fill("#tags-filter", "")
    playwright_api.expect(viewer.locator('#tags tr[data-tag="00280004"]')).to_contain_text("MONOCHROME1")


def test_ai_findings_from_the_sr_toggle(viewer: Any, viewer_deployment: ViewerDeployment) -> None:
    """The overlay is read from the AI SR over WADO-RS: one outline per finding of the JSON API, each with
    its label and score; the checkbox hides and shows it."""
    playwright_api.expect(viewer.locator("#ai-source")).to_contain_text("AI SR (WADO-RS)", timeout=30_000)
    api = httpx.get(
        f"{viewer_deployment.base_url}/api/v1/images/{viewer_deployment.image_id}/findings",
        headers=_token(viewer_deployment),
    ).json()
    assert len(api["findings"]) >= 1, f"the detector drew no box on RG1, nothing to overlay: {api}"
    drawn = viewer.locator("#vp-main svg.ai-overlay g.finding")
    playwright_api.expect(drawn).to_have_count(len(api["findings"]))
    for index, finding in enumerate(api["findings"]):
        playwright_api.expect(drawn.nth(index)).to_contain_text(f"{finding['label']} {finding['score']:.2f}")
    overlay = viewer.locator("#vp-main svg.ai-overlay")
    playwright_api.expect(overlay).to_be_visible()
    viewer.uncheck("#show-ai")
    playwright_api.expect(overlay).to_be_hidden()
    viewer.check("#show-ai")
    playwright_api.expect(overlay).to_be_visible()


def test_length_measurement(viewer: Any) -> None:
    viewer.check('input[name="tool"][value="Length"]')
    drag(viewer, (0.35, 0.4), (0.6, 0.6))
    item = viewer.locator('#measurements li[data-tool="Length"]')
    playwright_api.expect(item).to_have_count(1)
    playwright_api.expect(item).to_contain_text("Length")
    length = float(item.inner_text().split()[1])
    assert length > 50, item.inner_text()
    viewer.check('input[name="tool"][value="WindowLevel"]')


def test_rectangle_saved_as_review_add_action(viewer: Any, viewer_deployment: ViewerDeployment) -> None:
    viewer.check('input[name="tool"][value="RectangleROI"]')
    drag(viewer, (0.4, 0.3), (0.55, 0.5))
    playwright_api.expect(viewer.locator('#measurements li[data-tool="RectangleROI"]')).to_have_count(1)
    viewer.select_option("#box-label", "pneumonia")
    viewer.click("#save-boxes")
    message = viewer.locator("#review-message")
    playwright_api.expect(message).to_contain_text("Saved to your draft review")
    review_id = message.get_attribute("data-review-id")
    review = httpx.get(
        f"{viewer_deployment.base_url}/api/v1/reviews/{review_id}", headers=_token(viewer_deployment)
    ).json()
    adds = [f for f in review["findings"] if f["action"] == "add"]
    assert len(adds) == 1 and adds[0]["label"] == "pneumonia", review
    x1, y1, x2, y2 = adds[0]["box"]
    rows, columns = viewer_deployment.stored.shape
    assert 0 <= x1 < x2 <= columns and 0 <= y1 < y2 <= rows and x2 - x1 > 20 and y2 - y1 > 20, adds
    assert review["status"] == "draft" and review["reviewer"]["username"] == "rad"
    viewer.check('input[name="tool"][value="WindowLevel"]')


def test_prior_side_by_side_with_linked_zoom(viewer: Any, viewer_deployment: ViewerDeployment) -> None:
    """The prior (stored as JPEG 2000, decoded by the bundle's WebAssembly codec) opens beside the
    image; zooming the image zooms the prior alike."""
    viewer.click("#reset")  # the header's window (W30000 L15000), fitted, MONOCHROME1 still inverted
    buttons = viewer.locator("#priors .prior-button")
    playwright_api.expect(buttons).to_have_count(1)
    playwright_api.expect(buttons.first).to_contain_text("2003-01-01")
    buttons.first.click()
    playwright_api.expect(viewer.locator("#prior-pane")).to_have_attribute(
        "data-state", "ready", timeout=60_000
    )
    main, prior = viewer.locator("#vp-main"), viewer.locator("#vp-prior")
    assert abs(centre_grey(viewer) - monochrome1_grey(centre_value(viewer_deployment), 30000, 15000)) <= 25
    # The prior holds the same pixels, stored as JPEG 2000 and decoded in the browser: at the same
    # (header) window and fit, its centre shows the same grey as the current image's.
    assert abs(centre_grey(viewer, "#vp-prior") - centre_grey(viewer)) <= 3
    viewer.locator(".v3-layout").scroll_into_view_if_needed()
    screenshot(viewer, "viewer3d")  # docs/screenshots/viewer3d.png with COVIDET_UPDATE_SCREENSHOTS=1
    before = float(main.get_attribute("data-zoom") or "1")
    viewer.click("#zoom-in")
    viewer.click("#zoom-in")
    playwright_api.expect(main).not_to_have_attribute("data-zoom", f"{before:.4f}")
    zoomed = float(main.get_attribute("data-zoom"))
    assert zoomed > before * 1.4
    playwright_api.expect(prior).to_have_attribute("data-zoom", f"{zoomed:.4f}")
    assert not viewer.errors, viewer.errors


def test_review_page_links_to_the_viewer(viewer: Any, viewer_deployment: ViewerDeployment) -> None:
    viewer.goto(f"/images/{viewer_deployment.image_id}")
    viewer.get_by_role("link", name="Open in the diagnostic viewer").click()
    viewer.wait_for_url(f"**/viewer/studies/{viewer_deployment.study_uid}?image={viewer_deployment.image_id}")
    playwright_api.expect(viewer.locator("#viewer-status")).to_have_attribute(
        "data-state", "ready", timeout=60_000
    )
    assert not viewer.errors, viewer.errors


def test_presets_of_an_8_bit_image_are_scaled_and_said_so(
    viewer: Any, viewer_deployment: ViewerDeployment
) -> None:
    """The CT presets mean nothing to 0..255 values: for an 8-bit image they are scaled from
    -1024..3071 onto 0..256 (lung W1500 L-600 -> W93.75 L26.5), and the page says so; for the 15-bit
    image they apply as they are."""
    viewer.click("#preset-lung")
    playwright_api.expect(viewer.locator("#ww")).to_have_value("1500")
    playwright_api.expect(viewer.locator("#wc")).to_have_value("-600")
    playwright_api.expect(viewer.locator("#preset-note")).to_contain_text("modality units")
    viewer.goto(f"/viewer/studies/{viewer_deployment.eight_bit_study_uid}")
    playwright_api.expect(viewer.locator("#viewer-status")).to_have_attribute(
        "data-state", "ready", timeout=60_000
    )
    playwright_api.expect(viewer.locator("#fact-bits")).to_have_text("8 of 8")
    playwright_api.expect(viewer.locator("#preset-note")).to_contain_text("8-bit image")
    viewer.click("#preset-lung")
    playwright_api.expect(viewer.locator("#ww")).to_have_value("94")
    playwright_api.expect(viewer.locator("#wc")).to_have_value("27")
    assert not viewer.errors, viewer.errors


def _token(deployment: ViewerDeployment) -> dict[str, str]:
    answer = httpx.post(
        f"{deployment.base_url}/api/v1/auth/token", data={"username": "rad", "password": PASSWORDS["rad"]}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}
