"""The reading room's API (issue 22): the worklist by study, claims and the next case, one AI score per
finding, and addenda instead of a second contradicting report. Real uvicorn, real httpx, a real
database on both backends; AI results seeded as the worker writes them (tests/web/seed.py)."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import ApiEnv
from tests.web.seed import URGENT_REASON, seed_room

API = "/api/v1"
#: The keys of a row of GET /api/v1/worklist that scripts rely on (its shape must not change).
IMAGE_ROW_KEYS = {
    "image_id",
    "study_id",
    "patient",
    "received_at",
    "status",
    "priority",
    "priority_updated_at",
    "reasons",
    "ai",
    "disclaimer",
    "vitals",
    "vitals_abnormal",
    "review",
}


def test_worklist_by_study_one_row_per_study_sortable_and_filterable(
    api_env: ApiEnv, data_root: Path
) -> None:
    room = seed_room(api_env, data_root)
    with api_env.client() as client:
        rad = api_env.token(client, "rad")
        answer = client.get(f"{API}/worklist/studies", headers=rad)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items = body["items"]
        # One row per study, most urgent first: the two-image study of P-A is urgent by its first image.
        assert [i["study_id"] for i in items] == [room.a, room.b, room.c]
        assert body["total"] == 3
        first = items[0]
        assert [i["image_id"] for i in first["images"]] == room.a_images
        assert first["priority"] == "urgent" and first["deciding_image_id"] == room.a_images[0]
        assert first["reason"] == URGENT_REASON
        assert first["accession_number"] == "ACC-1001" and first["description"] == "CHEST PA+LAT"
        assert first["patient"]["patient_key"] == "P-A"
        assert first["urgent_alert"] is True and items[1]["urgent_alert"] is False
        assert first["images"][0]["alert_ids"] == [room.alert_id]
        assert first["waiting_seconds"] >= 2 * 3600 - 60
        assert first["images"][0]["thumbnail_url"].endswith(
            f"/images/{room.a_images[0]}/pixels.png?max_size=96"
        )
        thumb = client.get(first["images"][0]["thumbnail_url"], headers=rad)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        # One score per finding: the image-level score of the decided class, not the top box score.
        ai = first["ai"]
        assert ai["label"] == "covid19" and ai["score"] == 0.8 and ai["top_score"] == 0.93

        def order(**params: object) -> list[int]:
            got = client.get(f"{API}/worklist/studies", headers=rad, params=params)
            assert got.status_code == 200, got.text
            return [i["study_id"] for i in got.json()["items"]]

        assert order(sort="waiting") == [room.c, room.b, room.a]
        assert order(sort="waiting", order="desc") == [room.a, room.b, room.c]
        assert order(sort="patient", order="desc") == [room.c, room.b, room.a]
        assert order(sort="accession") == [room.a, room.b, room.c]
        assert order(priority="high") == [room.b]
        assert order(priority=["urgent", "routine"]) == [room.a, room.c]
        assert order(q="portable") == [room.c]
        assert order(q="acc-2002") == [room.b]
        assert order(patient="p-a") == [room.a]
        assert order(reviewed="true") == []
        assert order(limit=1, offset=1) == [room.b]
        assert client.get(f"{API}/worklist/studies", headers=rad, params={"sort": "nope"}).status_code == 422

        # The image worklist keeps its shape (scripts rely on it): four rows, the same keys.
        images = client.get(f"{API}/worklist", headers=rad).json()["items"]
        assert len(images) == 4
        assert all(set(item) == IMAGE_ROW_KEYS for item in images)
        assert images[0]["ai"]["score"] == 0.8  # the same score there, named the same


def test_claim_release_and_next_case(api_env: ApiEnv, data_root: Path) -> None:
    room = seed_room(api_env, data_root)
    with api_env.client() as client:
        rad, rad2, admin = (api_env.token(client, name) for name in ("rad", "rad2", "admin"))
        claimed = client.post(f"{API}/worklist/studies/{room.a}/claim", headers=rad)
        assert claimed.status_code == 200 and claimed.json()["username"] == "rad"
        assert client.post(f"{API}/worklist/studies/{room.a}/claim", headers=rad).status_code == 200
        # Others see who reads it, and cannot take it or release it.
        row = client.get(f"{API}/worklist/studies", headers=rad2).json()["items"][0]
        assert row["study_id"] == room.a and row["claim"]["username"] == "rad"
        taken = client.post(f"{API}/worklist/studies/{room.a}/claim", headers=rad2)
        assert taken.status_code == 409 and "being read by rad" in taken.json()["detail"]
        assert client.delete(f"{API}/worklist/studies/{room.a}/claim", headers=rad2).status_code == 403
        assert client.post(f"{API}/worklist/studies/999999/claim", headers=rad).status_code == 404

        # "Next case" for rad2 skips the study rad reads: the high one comes next, claimed for rad2.
        nxt = client.post(f"{API}/worklist/next", headers=rad2)
        assert nxt.status_code == 200, nxt.text
        assert nxt.json()["study"]["study_id"] == room.b and nxt.json()["image_id"] == room.b_image
        assert nxt.json()["study"]["claim"]["username"] == "rad2"
        # For rad, the study rad holds is still the most urgent.
        assert client.post(f"{API}/worklist/next", headers=rad).json()["study"]["study_id"] == room.a

        # An admin may release anyone's claim; then rad2's next case is the urgent study.
        assert client.delete(f"{API}/worklist/studies/{room.a}/claim", headers=admin).status_code == 204
        assert client.post(f"{API}/worklist/next", headers=rad2).json()["study"]["study_id"] == room.a

        # Signing every image of the study releases the claim by itself.
        for image_id in room.a_images:
            draft = client.post(
                f"{API}/reviews", headers=rad2, json={"image_id": image_id, "label": "normal"}
            )
            assert draft.status_code == 201, draft.text
            assert client.post(f"{API}/reviews/{draft.json()['id']}/sign", headers=rad2).status_code == 200
            claim = client.get(f"{API}/worklist/studies", headers=rad2, params={"patient": "P-A"}).json()
            held = claim["items"][0]["claim"]
            assert (held is None) == (image_id == room.a_images[-1])
        audit = client.get(f"{API}/audit", headers=admin, params={"action": "study."}).json()["items"]
        assert {e["action"] for e in audit} == {"study.claim", "study.release"}


def test_a_second_signature_is_an_addendum_to_the_first(api_env: ApiEnv, data_root: Path) -> None:
    room = seed_room(api_env, data_root)
    image_id = room.b_image
    with api_env.client() as client:
        rad, rad2, admin = (api_env.token(client, name) for name in ("rad", "rad2", "admin"))

        def sign(headers: dict[str, str], label: str) -> dict[str, object]:
            draft = client.post(
                f"{API}/reviews", headers=headers, json={"image_id": image_id, "label": label}
            )
            assert draft.status_code == 201, draft.text
            signed = client.post(f"{API}/reviews/{draft.json()['id']}/sign", headers=headers)
            assert signed.status_code == 200, signed.text
            return signed.json()

        report = sign(rad, "pneumonia")
        assert report["amends_review_id"] is None
        addendum = sign(rad, "covid19")  # the same radiologist signs again: an addendum, linked
        assert addendum["amends_review_id"] == report["id"]
        again = sign(rad, "pneumonia")
        assert again["amends_review_id"] == report["id"]  # every addendum names the report
        other = sign(rad2, "pneumonia")  # another radiologist's own report
        assert other["amends_review_id"] is None
        assert (
            client.get(f"{API}/reviews/{addendum['id']}", headers=rad).json()["amends_review_id"]
            == report["id"]
        )

        row = client.get(f"{API}/worklist/studies", headers=rad, params={"patient": "P-B"}).json()["items"][0]
        review = row["images"][0]["review"]
        assert review["state"] == "signed" and review["addenda"] == 2
        assert [(r["review_id"], r["reviewer"]) for r in review["reports"]] == [
            (report["id"], "rad"),
            (other["id"], "rad2"),
        ]

        events = client.get(f"{API}/audit", headers=admin, params={"action": "review.sign"}).json()["items"]
        kinds = {
            int(e["object_id"]): (e["details"]["kind"], e["details"]["amends_review_id"]) for e in events
        }
        assert kinds[addendum["id"]] == ("addendum", report["id"])
        assert kinds[report["id"]] == ("report", None)


def test_sex_and_age_come_from_the_dicom_header_where_known(
    sqlite_env: ApiEnv, data_root: Path, rg1_dicom: Path
) -> None:
    """pydicom-data's RG1_UNCR.dcm says PatientSex F, born 1940-03-05, studied 2004-08-26: 64 years.
    A JPEG upload says nothing: its row leaves both empty."""
    accepted = sqlite_env.ingest.accept(
        rg1_dicom.read_bytes(), channel="upload", device_id=None, source="test"
    )
    seed_room(sqlite_env, data_root)
    with sqlite_env.client() as client:
        rad = sqlite_env.token(client, "rad")
        items = client.get(f"{API}/worklist/studies", headers=rad).json()["items"]
        by_study = {item["study_id"]: item for item in items}
        dicom = by_study[accepted.study_id]
        assert (dicom["patient_sex"], dicom["patient_age"]) == ("F", "64 y")
        others = [item for item in items if item["study_id"] != accepted.study_id]
        assert others and all(i["patient_sex"] is None and i["patient_age"] is None for i in others)
        page = client.get("/worklist", headers=rad)  # the page, as a script with a token reads it
        assert (
            page.status_code == 200
            and '<span class="demographics" title="from the DICOM header">F, 64 y' in page.text
        )
