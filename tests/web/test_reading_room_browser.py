"""The reading room in a real browser (Playwright driving Debian's Chromium, as tests/e2e/test_web.py):
the worklist by study at 1440x900 and on a 390 px phone, claims and "next case", one score per
finding, the review's keyboard shortcuts and boxes drawn from the keyboard, addenda and a signed
confirmation that stays, keyboard-only use, WCAG AA contrast, and the API docs offline.

The deployment is the real app on uvicorn over a fresh database, with real dataset X-rays accepted
through the upload path and AI results written as the worker writes them (tests/web/seed.py): no
detector runs, so these tests are quick.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

# The test extras install Playwright: a missing one fails the import, it is not skipped.
import playwright.sync_api as playwright_api
import pytest

from covidet.worker.events import InProcessEvents
from tests.api.conftest import PASSWORDS, ApiEnv, serve
from tests.web.browser import CHROMIUM_ARGS, chromium_path, screenshot
from tests.web.seed import Room, many_alerts, seed_room

expect = playwright_api.expect
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

#: The contrast check run in the page (tests/web/contrast.js).
_SOURCE = (Path(__file__).parent / "contrast.js").read_text(encoding="utf-8")
CONTRAST = _SOURCE[_SOURCE.index("(selector) =>") :]  # the function alone, without its comment


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def room(sqlite_env: ApiEnv, data_root: Path) -> Iterator[tuple[str, ApiEnv, Room]]:
    seeded = seed_room(sqlite_env, data_root)
    # The embedded deployment's event channel, so that open worklists update live.
    sqlite_env.app.state.runtime = SimpleNamespace(events=InProcessEvents(), settings=sqlite_env.settings)
    with serve(sqlite_env.app) as base_url:
        yield base_url, sqlite_env, seeded


def sign_in(
    browser: Any, base_url: str, username: str, target: str = "/worklist", viewport: Any = None
) -> Any:
    context = browser.new_context(viewport=viewport or DESKTOP, base_url=base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(target)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORDS[username])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: url.endswith(target))
    return page


def rows(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#worklist tbody tr[data-study-id]",
        "rows => rows.map(r => ({study: r.dataset.studyId, images: r.dataset.images, "
        "claimedBy: r.dataset.claimedBy, classes: r.className, priority: r.dataset.priority}))",
    )


def token(base_url: str, username: str) -> dict[str, str]:
    answer = httpx.post(
        f"{base_url}/api/v1/auth/token", data={"username": username, "password": PASSWORDS[username]}
    )
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


# ------------------------------------------------------------------------------------------ worklist


def test_worklist_by_study_fits_1440x900_with_many_alerts(
    room: tuple[str, ApiEnv, Room], browser: Any
) -> None:
    base, env, seeded = room
    many_alerts(env, seeded.a_images[0], 24)  # a busy night: 25 alerts waiting
    page = sign_in(browser, base, "rad")
    # One row per study (P-A's two images in one row, with their thumbnails), most urgent first.
    assert [(r["study"], r["images"]) for r in rows(page)] == [
        (str(seeded.a), "2"),
        (str(seeded.b), "1"),
        (str(seeded.c), "1"),
    ]
    first = page.locator("#worklist tbody tr").first
    expect(first.locator("td.study")).to_contain_text("ACC-1001")
    expect(first.locator("td.study")).to_contain_text("CHEST PA+LAT")
    expect(first.locator("td.reasons .first-reason")).to_contain_text("partial NEWS2 8")
    expect(first.locator("td.waiting .waited")).to_contain_text("2 h")
    thumbs = first.locator("ul.thumbs img")
    expect(thumbs).to_have_count(2)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#worklist tbody tr:first-child ul.thumbs img'))"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    # The urgent highlight comes from the server: there on a fresh load, and again after a reload.
    expect(first).to_have_class(re.compile(r"\bis-alert\b"))
    page.reload()
    expect(page.locator("#worklist tbody tr").first).to_have_class(re.compile(r"\bis-alert\b"))
    screenshot(page, "worklist-desktop")  # 1440x900, the alerts strip closed
    # The alerts are one compact strip: the first study stays above the fold, strip closed or open.
    strip = page.locator("#alerts")
    expect(strip.locator("summary")).to_contain_text("25 urgent alerts")
    for _state in ("closed", "open"):
        bottom = page.evaluate("document.querySelector('#worklist tbody tr').getBoundingClientRect().bottom")
        assert bottom <= DESKTOP["height"], (_state, bottom)
        strip.locator("summary").click()
    # Sortable: by waiting time (longest first), then the other way.
    page.get_by_role("link", name="Waiting").click()
    page.wait_for_url(lambda url: "sort=waiting" in url)
    assert [r["study"] for r in rows(page)] == [str(seeded.c), str(seeded.b), str(seeded.a)]
    expect(page.locator('th[aria-sort="ascending"]')).to_contain_text("Waiting")
    page.get_by_role("link", name="Waiting").click()
    page.wait_for_url(lambda url: "order=desc" in url)
    assert [r["study"] for r in rows(page)] == [str(seeded.a), str(seeded.b), str(seeded.c)]
    # Filterable by accession or description.
    page.get_by_role("searchbox", name="Study").fill("portable")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(lambda url: "q=portable" in url)
    assert [r["study"] for r in rows(page)] == [str(seeded.c)]
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    page.context.close()


def test_claim_being_read_by_and_next_case(room: tuple[str, ApiEnv, Room], browser: Any) -> None:
    base, _env, seeded = room
    rad = sign_in(browser, base, "rad")
    rad2 = sign_in(browser, base, "rad2")
    expect(rad2.locator("#live-status")).to_have_attribute("data-state", "connected", timeout=15_000)
    rad2.evaluate("window.__stillTheSamePage = true")
    rad.locator(f'tr[data-study-id="{seeded.b}"]').get_by_role("button", name="Claim study of P-B").click()
    expect(rad.locator(f'tr[data-study-id="{seeded.b}"] .claimed.mine')).to_have_text("you are reading this")
    # rad2's open worklist shows it without a reload.
    row_b = rad2.locator(f'tr[data-study-id="{seeded.b}"]')
    expect(row_b.locator(".claimed.other")).to_have_text("being read by rad")
    assert rad2.evaluate("window.__stillTheSamePage === true")
    expect(row_b.get_by_role("button", name="Claim study of P-B")).to_have_count(0)
    # "Next case" (the key n) claims and opens the most urgent study nobody reads: P-A's urgent image.
    rad2.keyboard.press("n")
    rad2.wait_for_url(f"**/images/{seeded.a_images[0]}")
    expect(rad2.locator("#claim-state")).to_contain_text("You are reading this study")
    # rad sees it taken; trying to claim it anyway says by whom.
    rad.reload()
    expect(rad.locator(f'tr[data-study-id="{seeded.a}"] .claimed.other')).to_have_text("being read by rad2")
    rad.goto(f"/images/{seeded.a_images[0]}")
    expect(rad.locator("#claim-state")).to_contain_text("Being read by rad2")
    # Next for rad: P-A and P-B are taken (P-B by rad himself: that one), so P-B's image opens.
    rad.goto("/worklist")
    rad.get_by_role("button", name="Next case").click()
    rad.wait_for_url(f"**/images/{seeded.b_image}")
    # Released explicitly from the worklist.
    rad.goto("/worklist")
    rad.locator(f'tr[data-study-id="{seeded.b}"]').get_by_role("button", name="Release study of P-B").click()
    expect(rad.locator(f'tr[data-study-id="{seeded.b}"]')).to_have_attribute("data-claimed-by", "")
    assert not rad.errors and not rad2.errors  # type: ignore[attr-defined]
    rad.context.close()
    rad2.context.close()


def test_one_score_per_finding_named_and_explained(room: tuple[str, ApiEnv, Room], browser: Any) -> None:
    base, _env, seeded = room
    page = sign_in(browser, base, "rad")
    # The image's AI score (0.80, the score of its decided class), not its top box score (0.93).
    score = page.locator(f'tr[data-study-id="{seeded.a}"] .ai-score')
    expect(score).to_have_text("AI score 0.80")
    assert "not a calibrated probability" in (score.get_attribute("title") or "")
    page.goto(f"/images/{seeded.a_images[0]}")
    viewer_score = page.locator("#ai-score")
    expect(viewer_score).to_have_text("AI score 0.80")
    assert "not a calibrated probability" in (viewer_score.get_attribute("title") or "")
    expect(page.locator("#ai-score-help")).to_contain_text("not a calibrated probability")
    # The triage reason names the same number; a box's own score is called a box score.
    expect(page.locator("#triage-reasons")).to_contain_text("covid19 0.80")
    expect(page.locator("#finding-list .box-score").first).to_have_text("box score 0.93")
    page.context.close()


# -------------------------------------------------------------------------------------------- review


def test_review_from_the_keyboard_signed_confirmation_stays_and_addendum(
    room: tuple[str, ApiEnv, Room], browser: Any
) -> None:
    base, _env, seeded = room
    image_id = seeded.a_images[0]
    page = sign_in(browser, base, "rad", f"/images/{image_id}")
    expect(page.locator("canvas#xray")).to_have_attribute("data-loaded", "true", timeout=30_000)
    width = int(page.locator("canvas#xray").get_attribute("width"))
    height = int(page.locator("canvas#xray").get_attribute("height"))
    page.locator("#viewport").focus()
    # Choose finding 1 and confirm it, finding 2 and reject it: keys only.
    page.keyboard.press("1")
    page.keyboard.press("c")
    page.keyboard.press("2")
    page.keyboard.press("x")
    first_action = page.locator("select.finding-action").first
    expect(first_action).to_have_value("confirm")
    expect(page.locator("select.finding-action").nth(1)).to_have_value("reject")
    # Draw a box from the keyboard: b, move right 5 steps and down 3, grow 2 steps right, Enter.
    page.keyboard.press("b")
    expect(page.locator("#overlay rect.keyboard-box")).to_have_count(1)
    for key, times in (("ArrowRight", 5), ("ArrowDown", 3), ("Shift+ArrowRight", 2)):
        for _ in range(times):
            page.keyboard.press(key)
    page.keyboard.press("Enter")
    expect(page.locator("#added-list li")).to_have_count(1)
    step = max(1, round(width / 100))
    w0, h0 = round(width * 0.2), round(height * 0.2)
    x0, y0 = round((width - w0) / 2), round((height - h0) / 2)
    expected = [x0 + 5 * step, y0 + 3 * step, x0 + 5 * step + w0 + 2 * step, y0 + 3 * step + h0]
    drawn = [float(page.locator("rect.review-box").get_attribute(n)) for n in ("x", "y", "width", "height")]
    assert drawn == [expected[0], expected[1], expected[2] - expected[0], expected[3] - expected[1]], drawn
    page.get_by_label("Conclusion (whole image)").select_option("covid19")
    page.keyboard.press("s")
    expect(page.locator("#review-message")).to_have_text("Draft saved.")
    page.locator("#viewport").focus()
    page.keyboard.press("Control+Enter")
    # The confirmation stays (the page does not reload into an empty form) until dismissed.
    confirmation = page.locator("#signed-confirmation")
    expect(confirmation).to_be_visible(timeout=15_000)
    expect(confirmation).to_contain_text("signed")
    page.wait_for_timeout(1500)
    expect(confirmation).to_be_visible()
    headers = token(base, "rad")
    reviews = httpx.get(f"{base}/api/v1/reviews", headers=headers, params={"image_id": image_id}).json()[
        "items"
    ]
    assert len(reviews) == 1 and reviews[0]["status"] == "signed"
    actions = sorted((f["action"], f["label"]) for f in reviews[0]["findings"])
    assert [a for a, _ in actions] == ["add", "confirm", "reject"]
    page.get_by_role("button", name="Dismiss").click()
    expect(confirmation).to_be_hidden()
    # Signing again is an addendum to the report, and says so.
    expect(page.locator("#h-review")).to_have_text(f"Addendum to your report {reviews[0]['id']}")
    page.get_by_label("Conclusion (whole image)").select_option("pneumonia")
    page.get_by_role("button", name="Sign addendum").click()
    expect(page.locator("#signed-confirmation")).to_contain_text(
        f"addendum to your report {reviews[0]['id']}"
    )
    expect(page.locator("#signed-reviews li .addendum")).to_have_text(
        f"Addendum to review {reviews[0]['id']}:"
    )
    second = httpx.get(
        f"{base}/api/v1/reviews", headers=headers, params={"image_id": image_id, "status": "signed"}
    ).json()["items"][0]
    assert second["amends_review_id"] == reviews[0]["id"]
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    page.context.close()


# -------------------------------------------------------------------------- keyboard, phone, contrast


def test_keyboard_only_worklist(room: tuple[str, ApiEnv, Room], browser: Any) -> None:
    base, env, seeded = room
    many_alerts(env, seeded.a_images[0], 10)
    page = sign_in(browser, base, "rad")
    # From the top of the page, the first study's link is reached without one Tab per alert (the
    # alerts are one closed strip), and in a few Tabs through the skip link.
    target = page.locator("#worklist tbody tr a.open").first

    def tabs_to_first_row(limit: int = 60) -> int:
        presses = 0
        while presses < limit and not target.evaluate("el => el === document.activeElement"):
            page.keyboard.press("Tab")
            presses += 1
        return presses

    page.locator("body").focus()
    assert tabs_to_first_row() <= 24
    page.reload()
    page.locator("body").focus()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the worklist table"
    page.keyboard.press("Enter")
    assert tabs_to_first_row() <= 6
    # Acknowledging an alert with Enter keeps the focus in the alerts, on the next alert.
    page.locator("#alerts > summary").focus()
    page.keyboard.press("Enter")  # opens the strip
    first_ack = page.locator("#alerts button.ack").first
    first_id = first_ack.get_attribute("data-alert-id")
    first_ack.focus()
    page.keyboard.press("Enter")
    expect(page.locator(f'#alerts li[data-alert-id="{first_id}"]')).to_have_count(0)
    focused = page.evaluate(
        "document.activeElement.matches('#alerts button.ack') ? 'ack' : document.activeElement.tagName"
    )
    assert focused == "ack", focused
    expect(page.locator("#alerts summary")).to_contain_text("10 urgent alerts")
    page.context.close()


def test_phone_layout_390px(room: tuple[str, ApiEnv, Room], browser: Any) -> None:
    base, _env, seeded = room
    page = sign_in(browser, base, "rad", viewport=PHONE)
    for path in ("/worklist", f"/images/{seeded.a_images[0]}"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= PHONE["width"], (path, overflow)
        sign_out = page.get_by_role("button", name="Sign out")
        expect(sign_out).to_be_visible()
        box = sign_out.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (path, box)
    page.goto("/worklist")
    table = page.locator("#worklist").bounding_box()
    assert table is not None and table["width"] <= PHONE["width"], table
    expect(page.locator("#worklist tbody tr").first.locator("a.open")).to_be_in_viewport()
    screenshot(page, "worklist-phone", full_page=True)
    page.context.close()


def test_text_contrast_meets_wcag_aa(room: tuple[str, ApiEnv, Room], browser: Any) -> None:
    base, _env, seeded = room
    page = sign_in(browser, base, "rad")
    checked: list[dict[str, Any]] = []
    for path in ("/worklist", f"/images/{seeded.a_images[0]}", f"/images/{seeded.b_image}"):
        page.goto(path)
        page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
        results = page.evaluate(CONTRAST, "body *")
        checked += results
        failing = [r for r in results if r["ratio"] < r["need"]]
        assert not failing, (path, failing)
    labels = [r for r in checked if "ai-label" in r["cls"]]
    assert {r["text"] for r in labels} >= {"covid19", "pneumonia", "normal"}, labels
    page.context.close()


def test_api_docs_render_offline(room: tuple[str, ApiEnv, Room], browser: Any) -> None:
    base, _env, _seeded = room
    context = browser.new_context(base_url=base)
    page = context.new_page()
    elsewhere: list[str] = []

    def only_here(route: Any) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    page.goto("/docs")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=15_000)
    expect(page.locator(".swagger-ui")).to_contain_text("/api/v1/worklist/studies")
    assert elsewhere == []
    context.close()


def test_claim_forms_work_without_javascript_and_say_who_reads(
    room: tuple[str, ApiEnv, Room], browser: Any
) -> None:
    base, _env, seeded = room
    context = browser.new_context(viewport=DESKTOP, base_url=base, java_script_enabled=False)
    page = context.new_page()
    page.goto("/worklist")
    page.get_by_label("Username").fill("rad")
    page.get_by_label("Password").fill(PASSWORDS["rad"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: url.endswith("/worklist"))
    # Meanwhile rad2 takes study C (this page, without scripts, does not hear of it).
    taken = httpx.post(f"{base}/api/v1/worklist/studies/{seeded.c}/claim", headers=token(base, "rad2"))
    assert taken.status_code == 200, taken.text
    page.locator(f'tr[data-study-id="{seeded.c}"]').get_by_role("button", name="Claim study of P-C").click()
    expect(page.locator("#notice")).to_contain_text(f"study {seeded.c} is being read by rad2")
    expect(page.locator(f'tr[data-study-id="{seeded.c}"] .claimed.other')).to_have_text("being read by rad2")
    page.reload()
    expect(page.locator("#notice")).to_have_count(0)  # said once
    # The Next case form, still without scripts, opens the most urgent unclaimed study.
    page.get_by_role("button", name="Next case").click()
    page.wait_for_url(f"**/images/{seeded.a_images[0]}")
    context.close()
