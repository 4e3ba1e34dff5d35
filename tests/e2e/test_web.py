"""The radiologists' web app in a real browser (Playwright driving Debian's Chromium), against a real
deployment: covidet's runtime with the DICOM receiver, the MQTT subscriber on a private Mosquitto and the
in-process detector, the web app on uvicorn, and the device simulator sending real chest X-rays of the
dataset over DICOM and vital signs over MQTT.

Also here: the server-sent-events stream on its own (in-process and over Redis, and that it lets the
server stop), and ``covidet demo`` as a user runs it (subprocess, then Ctrl-C).

Screenshots of the worklist and the viewer are saved in ``tests/artifacts/`` (git-ignored); with
``COVIDET_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

# The test extras install Playwright: a missing one fails the import, it is not skipped.
import playwright.sync_api as playwright_api
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select

from covidet.api.routes.events import close_event_streams
from covidet.app.runner import Services, start_services
from covidet.app.server import create_app
from covidet.assessment.triage import news2_score
from covidet.config import Settings
from covidet.demo import DemoAccounts, Mosquitto, register_demo, start_mosquitto
from covidet.ingest.mqtt import write_mosquitto_files
from covidet.simulate.modality import ModalitySimulator, load_cases
from covidet.simulate.runner import SimulationConfig, SimulationReport, run_simulation
from covidet.simulate.sensors import SensorSimulator, SimulatedPatient, vital_series
from covidet.store.db import Database
from covidet.store.models import Image
from covidet.worker.events import InProcessEvents, RedisEvents
from tests.servers import free_port
from tests.web.browser import CHROMIUM_ARGS, chromium_path, screenshot

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"admin": "admin-web-password", "rad": "radiologist-web-pw"}
INGEST_USER, INGEST_PASSWORD = "covidet-ingest", "ingest-password-for-web-tests"
#: Images the simulator sends before the browser opens; one more is pushed while it is open.
INITIAL_IMAGES = 8
PAYLOAD_TO_VITAL = {
    "spo2": "spo2_percent",
    "respiratory_rate": "respiratory_rate_per_min",
    "temperature": "temperature_c",
    "heart_rate": "heart_rate_per_min",
    "systolic_bp": "systolic_bp_mmhg",
}
PRIORITY_RANK = {"urgent": 0, "high": 1, "routine": 2, "none": 3}


# ---------------------------------------------------------------------------------------- servers


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server]]:
    """``app`` on uvicorn in a thread on a free loopback port. On exit the event streams are closed
    first (a server in a thread has no signal handler for them to watch), then the server."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-web-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        close_event_streams(app)
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop"


def token_headers(base_url: str, username: str) -> dict[str, str]:
    answer = httpx.post(
        f"{base_url}/api/v1/auth/token", data={"username": username, "password": PASSWORDS[username]}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@dataclass
class Deployment:
    base_url: str
    app: FastAPI
    db: Database
    services: Services
    broker: Mosquitto
    accounts: DemoAccounts
    dicom_port: int
    report: SimulationReport
    data_root: Path


def emergency_series(patient_key: str) -> list[dict[str, Any]]:
    """The simulator's series of a covid19 patient with the first seed whose last reading alone is a
    NEWS2 emergency (partial NEWS2 >= 7: rule U1, urgent whatever the image)."""
    for seed in range(300):
        series = vital_series(SimulatedPatient(patient_key, "covid19"), count=6, seed=seed, interval_s=30)
        last = series[-1]
        if sum(news2_score(attribute, last[name]) for name, attribute in PAYLOAD_TO_VITAL.items()) >= 7:
            return series
    raise AssertionError("no simulator seed gives an emergency NEWS2")


def wait_until(condition: Any, timeout: float, message: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} (after {timeout} s)")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Deployment]:
    """A whole embedded deployment, fed by the simulator with the first val images of the dataset."""
    tmp = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{tmp / 'covidet.db'}"
    setup_db = Database(url)
    accounts = register_demo(
        setup_db,
        admin="admin",
        radiologist="rad",
        admin_password=PASSWORDS["admin"],
        radiologist_password=PASSWORDS["rad"],
    )

    def write_files(directory: Path) -> None:
        with setup_db.session() as session:
            write_mosquitto_files(
                session, directory, ingest_username=INGEST_USER, ingest_password=INGEST_PASSWORD
            )

    broker = start_mosquitto(write_files)
    setup_db.dispose()
    settings = Settings(
        home=tmp / "home",
        database_url=url,
        mqtt_broker_host="127.0.0.1",
        mqtt_broker_port=broker.port,
        mqtt_username=INGEST_USER,
        mqtt_password=INGEST_PASSWORD,
        mqtt_client_id=f"covidet-web-{tmp.name}",
    )
    dicom_port = free_port()
    services = start_services(settings, dicom_port=dicom_port, mqtt=True)
    try:
        app = create_app(settings, db=services.runtime.db, ingest=services.runtime.ingest)
        app.state.runtime = services.runtime
        with serve(app) as (base_url, _server):
            assert services.mqtt.wait_ready(15)
            report = run_simulation(
                SimulationConfig(
                    source=data_root,
                    split="val",
                    limit=INITIAL_IMAGES,
                    dicom_port=dicom_port,
                    calling_ae=accounts.modality_ae,
                    broker_port=broker.port,
                    mqtt_username=accounts.sensor_username,
                    mqtt_password=accounts.sensor_password,
                    sensor_device_id=accounts.sensor_device_id,
                    vitals_count=6,
                    vitals_rate=None,
                )
            )
            assert report.ok, report.to_json()
            db = services.runtime.db

            def all_assessed() -> bool:
                with db.session() as session:
                    done = session.scalar(
                        select(func.count()).select_from(Image).where(Image.priority.is_not(None))
                    )
                return done == INITIAL_IMAGES

            wait_until(all_assessed, 180, "the simulator's images were not all analysed and triaged")
            yield Deployment(base_url, app, db, services, broker, accounts, dicom_port, report, data_root)
    finally:
        services.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sign_in(browser: Any, base_url: str, username: str, target: str = "/worklist") -> Any:
    """A new browser page signed in as ``username`` through the sign-in form, on ``target``."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(target)
    assert "/login" in page.url  # not signed in: the page sends the browser to the form
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORDS[username])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: url.endswith(target))
    return page


def worklist_rows(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#worklist tbody tr[data-image-id]",
        "rows => rows.map(r => ({id: r.dataset.imageId, priority: r.dataset.priority, "
        "received: r.dataset.received, patient: r.dataset.patient, classes: r.className}))",
    )


# ------------------------------------------------------------------------------------- browser tests


def test_sign_in_and_the_live_worklist(deployment: Deployment, browser: Any) -> None:
    base = deployment.base_url
    # The API still answers 401 to a client without credentials; pages redirect.
    assert httpx.get(f"{base}/api/v1/worklist").status_code == 401
    assert httpx.get(f"{base}/worklist").status_code == 303

    # The sign-in form refuses a wrong password, and a post without the form's token (login CSRF).
    expect = playwright_api.expect
    context = browser.new_context(base_url=base)
    wrong = context.new_page()
    wrong.goto("/login")
    wrong.get_by_label("Username").fill("rad")
    wrong.get_by_label("Password").fill("not-the-password")
    wrong.get_by_role("button", name="Sign in").click()
    expect(wrong.locator("#login-error")).to_have_text("Incorrect username or password.")
    context.close()
    forged = httpx.post(f"{base}/login", data={"username": "rad", "password": PASSWORDS["rad"]})
    assert forged.status_code == 400 and "covidet_session" not in forged.cookies

    page = sign_in(browser, base, "rad")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected", timeout=15_000)

    # Every simulated patient is listed, one row per study, most urgent first, then longest waiting.
    rows = worklist_rows(page)
    studies = httpx.get(f"{base}/api/v1/worklist/studies", headers=token_headers(base, "rad")).json()
    assert len(rows) == studies["total"] and sum(len(s["images"]) for s in studies["items"]) == INITIAL_IMAGES
    assert {r["patient"] for r in rows} == {p["patient_id"] for p in deployment.report.patients}
    keys = [(PRIORITY_RANK[r["priority"]], datetime.fromisoformat(r["received"])) for r in rows]
    assert keys == sorted(keys), rows
    assert [r["id"] for r in rows] == [str(item["deciding_image_id"]) for item in studies["items"]]
    expect(page.locator("#worklist tbody tr").first.locator(".model")).to_contain_text("not for clinical use")

    # A new patient's X-ray arrives while the page is open: its row appears without a reload...
    page.evaluate("window.__stillTheSamePage = true")
    listed = {r["patient"] for r in rows}
    case = next(c for c in load_cases(deployment.data_root, split="val") if c.patient_key not in listed)
    sent = ModalitySimulator(
        "127.0.0.1", deployment.dicom_port, called_ae="COVIDET", calling_ae=deployment.accounts.modality_ae
    ).send([case])
    assert sent.acknowledged == 1, sent.to_json()
    new_row = page.locator(f'#worklist tr[data-patient="{case.patient_key}"]')
    expect(new_row).to_have_count(1, timeout=60_000)
    expect(new_row).to_have_attribute("data-status", "analysed", timeout=60_000)
    expect(new_row).not_to_have_attribute("data-priority", "none", timeout=30_000)
    expect(new_row).not_to_have_attribute("data-priority", "urgent")

    # ...then the bedside monitor reports an emergency: the row turns urgent, moves up, is highlighted,
    # and the alert is announced, all on the same page.
    sensor = SensorSimulator(
        "127.0.0.1",
        deployment.broker.port,
        device_id=deployment.accounts.sensor_device_id,
        username=deployment.accounts.sensor_username,
        password=deployment.accounts.sensor_password,
    )
    published = sensor.publish(emergency_series(case.patient_key))
    assert published.acknowledged == published.published == 6, published.to_json()
    expect(new_row).to_have_attribute("data-priority", "urgent", timeout=60_000)
    expect(new_row).to_have_class(re.compile(r"\bis-alert\b"))
    toast = page.locator("#alert-toast")
    expect(toast).to_be_visible()
    expect(toast).to_contain_text("Urgent")
    expect(
        page.locator(f'#alerts li[data-image-id="{new_row.get_attribute("data-image-id")}"]')
    ).to_have_count(1)
    assert page.evaluate("window.__stillTheSamePage === true"), "the page was reloaded"
    rows = worklist_rows(page)
    keys = [(PRIORITY_RANK[r["priority"]], datetime.fromisoformat(r["received"])) for r in rows]
    assert keys == sorted(keys)
    assert rows[[r["patient"] for r in rows].index(case.patient_key)]["priority"] == "urgent"
    screenshot(page, "worklist", full_page=True)

    # Acknowledging the alert (a POST with the session's CSRF token) takes it off the list (the
    # alerts are one closed strip until opened).
    page.locator("#alerts > summary").click()
    alert_item = page.locator(f'#alerts li[data-image-id="{new_row.get_attribute("data-image-id")}"]')
    alert_item.get_by_role("button", name="Acknowledge").click()
    expect(alert_item).to_have_count(0)
    alerts = httpx.get(f"{base}/api/v1/alerts", headers=token_headers(base, "rad")).json()["items"]
    assert [a["acknowledged_by"] for a in alerts if a["patient"]["patient_key"] == case.patient_key] == [
        "rad"
    ]

    # Filters: only urgent rows.
    page.get_by_label("urgent", exact=True).check()
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(lambda url: "priority=urgent" in url)
    assert {r["priority"] for r in worklist_rows(page)} == {"urgent"}
    assert not page.errors, page.errors  # type: ignore[attr-defined]

    # Signing out (a form post with the session's CSRF token) ends the session.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(lambda url: url.endswith("/login"))
    page.goto("/worklist")
    assert "/login?next=" in page.url
    page.context.close()


DRAWN_BOXES = """() => {
  const canvas = document.getElementById('xray');
  const c = canvas.getBoundingClientRect();
  const out = {};
  document.querySelectorAll('rect.ai-box').forEach(rect => {
    const b = rect.getBoundingClientRect();
    out[rect.dataset.findingId] = [
      (b.left - c.left) * canvas.width / c.width, (b.top - c.top) * canvas.height / c.height,
      (b.right - c.left) * canvas.width / c.width, (b.bottom - c.top) * canvas.height / c.height];
  });
  return out;
}"""


def assert_boxes_where_the_api_says(page: Any, findings: list[dict[str, Any]]) -> None:
    """The boxes drawn on screen, mapped back through the displayed canvas to image pixels, are the
    API's boxes (to a pixel, at any zoom)."""
    drawn = page.evaluate(DRAWN_BOXES)
    assert set(drawn) == {str(f["id"]) for f in findings}
    scale = page.evaluate("document.getElementById('xray').getBoundingClientRect().width") / page.evaluate(
        "document.getElementById('xray').width"
    )
    tolerance = max(1.0, 1.0 / scale)  # one screen pixel, in image pixels
    for finding in findings:
        for got, want in zip(drawn[str(finding["id"])], finding["box"], strict=True):
            assert abs(got - want) <= tolerance, (finding, drawn[str(finding["id"])], scale)


def test_viewer_boxes_review_and_audit(deployment: Deployment, browser: Any) -> None:
    base = deployment.base_url
    expect = playwright_api.expect
    rad = token_headers(base, "rad")
    # The study to read: the first analysed image with at least two boxes.
    items = httpx.get(f"{base}/api/v1/worklist", headers=rad, params={"status": "analysed"}).json()["items"]
    chosen = None
    for item in items:
        answer = httpx.get(f"{base}/api/v1/images/{item['image_id']}/findings", headers=rad).json()
        if len(answer["findings"]) >= 2:
            chosen = answer
            break
    assert chosen is not None, "no analysed image with two boxes"
    image_id, findings = chosen["image_id"], chosen["findings"]

    page = sign_in(browser, base, "rad")
    page.locator(f'#worklist tr[data-image-id="{image_id}"] a.open').click()
    page.wait_for_url(f"**/images/{image_id}")
    expect(page.locator("canvas#xray")).to_have_attribute("data-loaded", "true", timeout=30_000)
    expect(page.locator("#ai-model")).to_contain_text(f"{chosen['model_name']} {chosen['model_version']}")
    expect(page.locator("#ai-model")).to_contain_text("not for clinical use")
    expect(page.locator("#triage-reasons li").first).to_be_visible()
    expect(page.locator("li.chart svg.spark").first).to_be_visible()  # the vitals trend

    # Boxes: where the API says, with label and score; still there after zoom and pan; toggled off/on.
    assert_boxes_where_the_api_says(page, findings)
    for finding in findings:
        label = page.locator(f'#overlay g.ai-finding[data-finding-id="{finding["id"]}"] text')
        expect(label).to_contain_text(f"{finding['label']} {finding['score']:.2f}")
    page.get_by_role("button", name="Zoom in").click()
    page.get_by_role("button", name="Zoom in").click()
    viewport = page.locator("#viewport").bounding_box()
    page.mouse.move(viewport["x"] + 300, viewport["y"] + 300)
    page.mouse.down()
    page.mouse.move(viewport["x"] + 220, viewport["y"] + 260, steps=5)
    page.mouse.up()
    assert float(page.locator("#stage").get_attribute("data-scale")) > 0.5
    assert_boxes_where_the_api_says(page, findings)
    page.get_by_role("button", name="Fit").click()
    page.get_by_label("AI boxes").uncheck()
    expect(page.locator("rect.ai-box").first).to_be_hidden()
    page.get_by_label("AI boxes").check()
    expect(page.locator("rect.ai-box").first).to_be_visible()

    # Windowing changes the grey levels drawn.
    checksum = (
        "(() => { const c = document.getElementById('xray'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let s = 0;"
        " for (let i = 0; i < d.length; i += 97) s += d[i]; return s; })()"
    )
    before = page.evaluate(checksum)
    page.get_by_role("button", name="Lung window").click()
    expect(page.locator("canvas#xray")).to_have_attribute("data-window", "100/120")
    assert page.evaluate(checksum) != before
    page.get_by_role("button", name="Reset window").click()

    # Review: confirm one finding, relabel another, draw a box (and delete one), conclude, comment.
    first, second = findings[0], findings[1]
    page.locator(f'select.finding-action[data-finding-id="{first["id"]}"]').select_option("confirm")
    page.locator(f'select.finding-action[data-finding-id="{second["id"]}"]').select_option("relabel")
    new_label = next(label for label in ("covid19", "pneumonia", "normal") if label != second["label"])
    page.locator(f'select.finding-label[data-finding-id="{second["id"]}"]').select_option(new_label)
    expect(page.locator(f'#overlay g.ai-finding[data-finding-id="{second["id"]}"] text')).to_contain_text(
        new_label
    )
    page.get_by_label("Draw box").check()
    canvas = page.locator("canvas#xray").bounding_box()
    width = int(page.locator("canvas#xray").get_attribute("width"))
    tolerance = 2 * width / canvas["width"]  # two screen pixels, in image pixels

    def drag(fx0: float, fy0: float, fx1: float, fy1: float) -> None:
        # The side panel's controls scroll the page: find the canvas where it is now.
        page.locator("#viewport").scroll_into_view_if_needed()
        canvas = page.locator("canvas#xray").bounding_box()
        page.mouse.move(canvas["x"] + canvas["width"] * fx0, canvas["y"] + canvas["height"] * fy0)
        page.mouse.down()
        page.mouse.move(canvas["x"] + canvas["width"] * fx1, canvas["y"] + canvas["height"] * fy1, steps=6)
        page.mouse.up()

    drag(0.1, 0.1, 0.2, 0.2)
    expect(page.locator("#added-list li")).to_have_count(1)
    page.get_by_role("button", name="Delete drawn box 1").click()
    expect(page.locator("#added-list li")).to_have_count(0)
    expect(page.locator("rect.review-box")).to_have_count(0)
    page.get_by_label("Label of new boxes").select_option("pneumonia")
    drag(0.4, 0.45, 0.6, 0.7)
    expect(page.locator("rect.review-box")).to_have_count(1)
    drawn = [float(page.locator("rect.review-box").get_attribute(name)) for name in ("x", "width")]
    assert abs(drawn[0] - 0.4 * width) <= tolerance and abs(drawn[1] - 0.2 * width) <= tolerance, drawn
    page.get_by_label("Conclusion (whole image)").select_option(new_label)
    page.get_by_label("Comment").fill("Confirmed one box, relabelled the other; one more box drawn.")
    page.get_by_role("button", name="Save draft").click()
    expect(page.locator("#review-message")).to_have_text("Draft saved.")
    page.locator("#h-review").scroll_into_view_if_needed()  # the image stays in view beside it
    screenshot(page, "viewer")
    page.get_by_role("button", name="Sign review").click()
    expect(page.locator("#signed-reviews li")).to_have_count(1, timeout=15_000)
    expect(page.locator("#signed-reviews li")).to_contain_text(new_label)
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    page.context.close()

    # Stored beside the AI output: the signed review holds the three actions; the findings are unchanged.
    reviews = httpx.get(f"{base}/api/v1/reviews", headers=rad, params={"image_id": image_id}).json()["items"]
    assert len(reviews) == 1 and reviews[0]["status"] == "signed" and reviews[0]["label"] == new_label
    actions = {(f["action"], f["source_finding_id"], f["label"]) for f in reviews[0]["findings"]}
    assert ("confirm", first["id"], first["label"]) in actions
    assert ("relabel", second["id"], new_label) in actions
    assert ("add", None, "pneumonia") in actions
    again = httpx.get(f"{base}/api/v1/images/{image_id}/findings", headers=rad).json()
    assert again["findings"] == findings

    # The audit log (admins only) shows the review with both actions.
    admin = sign_in(browser, base, "admin", "/admin/audit?action=review.")
    signed = admin.locator('#audit tr[data-action="review.sign"]')
    expect(signed).to_have_count(1)
    expect(signed).to_contain_text("rad")
    expect(signed).to_contain_text("confirm")
    expect(signed).to_contain_text("relabel")
    expect(admin.locator('#audit tr[data-action="review.create"]')).to_have_count(1)
    admin.goto("/admin/audit?action=read.image")
    expect(admin.locator('#audit tr[data-action="read.image"]').first).to_contain_text('"via": "web"')
    admin.goto("/model")
    expect(admin.locator("h2#h-card")).to_contain_text("covidet-detector")
    expect(admin.locator(".plots img").first).to_be_visible()
    admin.context.close()
    radiologist = sign_in(browser, base, "rad")
    assert radiologist.goto("/admin/audit").status == 403
    radiologist.context.close()


# ------------------------------------------------------------------------------ server-sent events


def _sse_reader(response: httpx.Response, lines: queue.Queue[str | None]) -> None:
    try:
        for line in response.iter_lines():
            lines.put(line)
    except httpx.HTTPError:
        pass
    lines.put(None)


def _next_event(lines: queue.Queue[str | None], timeout: float) -> dict[str, Any]:
    """The next SSE message's fields (comments skipped)."""
    fields: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is None:
            raise AssertionError("the stream ended")
        if line == "" and "data" in fields:
            return fields
        if line.startswith(":") or not line:
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    raise AssertionError("no event")


def _wait_for_comment(lines: queue.Queue[str | None], text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is None:
            raise AssertionError("the stream ended")
        if line == f": {text}":
            return
    raise AssertionError(f"no ': {text}' comment")


@contextlib.contextmanager
def event_stream(base_url: str, headers: dict[str, str]) -> Iterator[queue.Queue[str | None]]:
    """An open ``GET /api/v1/events``, its lines fed to a queue by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()
    with (
        httpx.Client(timeout=httpx.Timeout(5, read=60)) as client,
        client.stream("GET", f"{base_url}/api/v1/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = threading.Thread(target=_sse_reader, args=(response, lines), daemon=True)
        reader.start()
        _wait_for_comment(lines, "connected")
        try:
            yield lines
        finally:
            # Leave as a browser does. Closing the response alone would not send the FIN while the
            # reader thread still blocks in recv() on the socket: shut the socket down first.
            sock = response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):  # already closed by the server
                sock.shutdown(socket.SHUT_RDWR)
            reader.join(5)


def _app_with_users(tmp_path: Path, **overrides: Any) -> tuple[FastAPI, Database]:
    from covidet.api.auth import hash_password
    from covidet.store import review_queries as rq

    settings = Settings(
        home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'covidet.db'}", **overrides
    )
    db = Database(settings.resolved_database_url)
    with db.session(write=True) as session:
        for name, role in (("admin", "admin"), ("rad", "radiologist")):
            rq.create_user(session, name, password_hash=hash_password(PASSWORDS[name]), role=role)
    return create_app(settings, db=db), db


def test_event_stream_in_process(tmp_path: Path) -> None:
    app, db = _app_with_users(tmp_path)
    events = InProcessEvents()
    app.state.runtime = SimpleNamespace(events=events, settings=app.state.settings)
    started = None
    with serve(app) as (base, _server):
        unauthenticated = httpx.get(f"{base}/api/v1/events")
        assert unauthenticated.status_code == 401 and "www-authenticate" in unauthenticated.headers
        headers = token_headers(base, "rad")
        alert = {"type": "alert", "alert_id": 7, "image_id": 3, "patient_id": 2, "reasons": ["SpO2 90%"]}
        with event_stream(base, headers) as lines:
            # Published on another thread, as the analysis and MQTT threads do.
            publisher = threading.Thread(target=events.publish, args=(alert,))
            publisher.start()
            publisher.join()
            message = _next_event(lines, 10)
            assert message["event"] == "alert" and json.loads(message["data"]) == alert
            events.publish({"type": "analysed", "image_id": 4, "label": "covid19"})
            assert _next_event(lines, 10)["event"] == "analysed"
        # The client left: the stream ended and unsubscribed.
        wait_until(lambda: not events._subscribers, 5, "the stream did not unsubscribe")
        # A stream still open does not hold the server's shutdown.
        stream = event_stream(base, headers)
        lines = stream.__enter__()
        started = time.monotonic()
    assert time.monotonic() - started < 5, "the open stream delayed the shutdown"
    assert wait_until(lambda: _drained(lines), 5, "the stream did not end at shutdown")
    with contextlib.suppress(Exception):
        stream.__exit__(None, None, None)
    assert not events._subscribers
    db.dispose()


def _drained(lines: queue.Queue[str | None]) -> bool:
    with contextlib.suppress(queue.Empty):
        while True:
            if lines.get_nowait() is None:
                return True
    return False


def test_event_stream_over_redis(tmp_path: Path) -> None:
    from tests.servers import start_redis

    redis = start_redis()
    try:
        app, db = _app_with_users(tmp_path, queue="celery", redis_url=redis.url)
        app.state.runtime = SimpleNamespace(events=RedisEvents(redis.url), settings=app.state.settings)
        with serve(app) as (base, _server), event_stream(base, token_headers(base, "admin")) as lines:
            event = {"type": "priority", "image_id": 5, "patient_id": 1, "priority": "high"}
            RedisEvents(redis.url).publish(event)  # what a Celery worker does
            message = _next_event(lines, 10)
            assert message["event"] == "priority" and json.loads(message["data"]) == event
        db.dispose()
    finally:
        redis.stop()


# -------------------------------------------------------------------------------------- covidet demo


def test_covidet_demo_assesses_patients_and_stops_on_ctrl_c(tmp_path: Path, data_root: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COVIDET_")},
        "COVIDET_DATA": str(data_root),
        "PYTHONUNBUFFERED": "1",
    }
    stderr = (tmp_path / "demo.err").open("wb")
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "covidet.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        start_new_session=True,
    )
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        text = lambda: "\n".join(output)  # noqa: E731
        wait_until(lambda: "Radiologist:" in text(), 120, f"no credentials printed: {text()}")
        assert f"Web app:      http://127.0.0.1:{port}/" in text()
        user, password = re.search(r"Radiologist:\s+(\S+) / (\S+)", text()).groups()
        home = Path(re.search(r"Data:\s+(\S+)", text()).group(1))
        assert home.is_dir()
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/api/v1/auth/token", data={"username": user, "password": password})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

        def assessed() -> list[dict[str, Any]]:
            items = httpx.get(f"{base}/api/v1/worklist", headers=headers).json()["items"]
            return [i for i in items if i["status"] == "analysed" and i["ai"] and i["priority"]]

        done = wait_until(
            assessed, max(1.0, 120 - (time.monotonic() - began)), "no assessed patient in 2 min"
        )
        assert done[0]["ai"]["model_name"] == "covidet-detector" and done[0]["patient"]["patient_key"]
        # The vitals came through the private Mosquitto.
        assert "Mosquitto on 127.0.0.1:" in text() and any(i["vitals"] for i in done)
        # Ctrl-C with a browser's event stream open: everything stops, the temporary folder goes.
        with event_stream(base, headers):
            stopping = time.monotonic()
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 0, (tmp_path / "demo.err").read_text()
            assert time.monotonic() - stopping < 15, "the open event stream delayed the shutdown"
        reader.join(5)
        assert output[-1] == "covidet demo stopped."
        assert not home.exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stderr.close()
