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

import re
from typing import Any

import httpx
import playwright.sync_api as playwright_api
from sqlalchemy import select

from covidet.store.models import AuditEvent
from tests.e2e import viewer3d_support as support
from tests.e2e.test_web import CHROMIUM_ARGS, chromium_path, screenshot, wait_until
from tests.e2e.viewer3d_support import (
    EXPECTED_PATIENT_ID,
    ViewerDeployment,
    api_token,
    centre_grey,
    centre_value,
    drag,
    monochrome1_grey,
    set_window,
    sign_in_viewer,
)

# The fixtures (pytest finds them by name in this module).
browser = support.browser
viewer_deployment = support.viewer_deployment
viewer = support.viewer


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
        headers=api_token(viewer_deployment),
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
        f"{viewer_deployment.base_url}/api/v1/reviews/{review_id}", headers=api_token(viewer_deployment)
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


def test_cpu_rendering_without_webgl(browser: Any, viewer_deployment: ViewerDeployment) -> None:
    """In a browser without WebGL Cornerstone falls back to its CPU path; the page says so, and the
    displayed grey still follows the VOI LUT of the stored values; zoom, lengths and the JPEG 2000
    prior work there too."""
    cpu_only = browser.browser_type.launch(
        executable_path=chromium_path(), args=[*CHROMIUM_ARGS, "--disable-webgl", "--disable-3d-apis"]
    )
    try:
        page = sign_in_viewer(cpu_only, viewer_deployment)
        playwright_api.expect(page.locator("#render-mode")).to_contain_text("CPU rendering")
        value = centre_value(viewer_deployment)
        for offset in (-300.0, 300.0):
            set_window(page, 1000, value + offset)
            grey, expected = centre_grey(page), monochrome1_grey(value, 1000, value + offset)
            assert abs(grey - expected) <= 25, (offset, grey, expected)
        page.click("#zoom-in")
        playwright_api.expect(page.locator("#vp-main")).to_have_attribute("data-zoom", re.compile(r"\d"))
        page.check('input[name="tool"][value="Length"]')
        drag(page, (0.35, 0.4), (0.6, 0.6))
        playwright_api.expect(page.locator('#measurements li[data-tool="Length"]')).to_contain_text("px")
        page.click("#priors .prior-button")
        playwright_api.expect(page.locator("#prior-pane")).to_have_attribute(
            "data-state", "ready", timeout=60_000
        )
        assert not page.errors, page.errors
    finally:
        cpu_only.close()
