"""The deployment, browser page and pixel helpers of tests/e2e/test_viewer3d.py (the diagnostic viewer):
covidet with its DICOM receiver and the shipped detector, fed by dcmtk's storescu with pydicom-data's
RG1_UNCR.dcm, its prior (the same pixels as JPEG 2000 lossless) and another patient's 8-bit copy; the
viewer of the RG1 study open in Debian's Chromium, signed in as the radiologist.
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

from covidet.app.runner import start_services
from covidet.app.server import create_app
from covidet.config import Settings
from covidet.demo import DemoAccounts, register_demo
from covidet.store.db import Database
from covidet.store.models import DicomObject, Image
from covidet.web.viewer_page import BUNDLE_DIR
from tests.e2e import test_web
from tests.e2e.test_web import serve, wait_until
from tests.ingest.conftest import dcmtk, dcmtk_env
from tests.servers import free_port

browser = test_web.browser  # the Chromium of the web tests (a pytest fixture)
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


def sign_in_viewer(browser: Any, deployment: ViewerDeployment) -> Any:
    """A new page of ``browser`` on the viewer of the RG1 study, signed in as the radiologist through
    the sign-in form, its image drawn; ``page.errors`` collects page errors and console errors."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=deployment.base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    target = f"/viewer/studies/{deployment.study_uid}"
    page.goto(target)
    assert "/login" in page.url
    page.get_by_label("Username").fill("rad")
    page.get_by_label("Password").fill(PASSWORDS["rad"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: url.endswith(target))
    playwright_api.expect(page.locator("#viewer-status")).to_have_attribute(
        "data-state", "ready", timeout=60_000
    )
    return page


@pytest.fixture(scope="module")
def viewer(viewer_deployment: ViewerDeployment, browser: Any) -> Iterator[Any]:
    """The viewer of the RG1 study in the web tests' Chromium (see :func:`sign_in_viewer`)."""
    page = sign_in_viewer(browser, viewer_deployment)
    yield page
    page.context.close()


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


def centre_value(deployment: ViewerDeployment) -> float:
    """The stored value at the centre of the X-ray (median of the central 6x6 pixels)."""
    rows, columns = deployment.stored.shape
    patch = deployment.stored[rows // 2 - 3 : rows // 2 + 3, columns // 2 - 3 : columns // 2 + 3]
    return float(np.median(patch))


def api_token(deployment: ViewerDeployment) -> dict[str, str]:
    answer = httpx.post(
        f"{deployment.base_url}/api/v1/auth/token", data={"username": "rad", "password": PASSWORDS["rad"]}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}
