"""The JSON API's resources on both database backends, through a real uvicorn server.

The first test is the whole clinical path: a real DICOM chest radiograph accepted by the ingest
service, analysed by the shipped detector in-process, then read, reviewed, signed and exported by a
radiologist, with the audit log checked by an admin. The others seed AI results directly (as the
worker writes them) where the detector is not the subject.
"""

from __future__ import annotations

import io
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from covidet import DISCLAIMER
from covidet.api import create_app
from covidet.config import Settings
from covidet.store import queries
from covidet.store.models import Alert, FindingRecord, Image, TriageRecord
from tests.api.conftest import PASSWORDS, ApiEnv, add_user, dataset_jpegs, hours_ago, seed_image

API = "/api/v1"


@pytest.fixture(scope="module")
def predictor():
    from covidet.detection.predictor import Predictor

    return Predictor.from_bundle()


def _wait_analysed(db, image_id: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as session:
            status = session.get(Image, image_id).status
        if status != "queued":
            assert status == "analysed", status
            return
        time.sleep(0.1)
    raise AssertionError("image not analysed in time")


def test_detector_result_read_reviewed_signed_exported_and_audited(
    database_url: str, tmp_path: Path, rg1_dicom: Path, predictor
) -> None:
    from covidet.detection.data import load_records
    from covidet.worker.runtime import build_runtime

    settings = Settings(home=tmp_path / "home", database_url=database_url)
    runtime = build_runtime(settings, predictor=predictor)
    try:
        accepted = runtime.ingest.accept(rg1_dicom.read_bytes(), channel="dicom", device_id=None)
        with runtime.db.session(write=True) as session:
            # Low SpO2 and fever five minutes ago: flagged on the worklist, used by triage.
            queries.add_vital_signs(
                session,
                [
                    {
                        "patient_id": accepted.patient_id,
                        "measured_at": datetime.now(UTC) - timedelta(minutes=5),
                        "spo2_percent": 89.0,
                        "temperature_c": 38.6,
                        "heart_rate_per_min": 80.0,
                    }
                ],
            )
        _wait_analysed(runtime.db, accepted.image_id)
        add_user(runtime.db, "admin", "admin", PASSWORDS["admin"])
        add_user(runtime.db, "rad", "radiologist", PASSWORDS["rad"])
        app = create_app(settings, db=runtime.db, ingest=runtime.ingest)
        env = ApiEnv(app, settings, runtime.db, runtime.store, runtime.ingest, {})
        image_id, study_id, patient_id = accepted.image_id, accepted.study_id, accepted.patient_id

        with env.client() as client:
            rad = env.token(client, "rad")
            worklist = client.get(f"{API}/worklist", headers=rad)
            assert worklist.status_code == 200, worklist.text
            page = worklist.json()
            assert page["total"] == 1 and page["limit"] == 50 and page["offset"] == 0
            row = page["items"][0]
            assert row["image_id"] == image_id and row["study_id"] == study_id
            assert row["status"] == "analysed" and row["priority"] in {"urgent", "high", "routine"}
            assert row["reasons"] and row["disclaimer"] == DISCLAIMER
            assert (
                row["ai"]["model_name"] == predictor.name and row["ai"]["model_version"] == predictor.version
            )
            assert row["ai"]["label"] in {"covid19", "pneumonia", "normal"}
            spo2 = row["vitals"]["spo2_percent"]
            assert spo2["value"] == 89.0 and spo2["news2"] == 3 and spo2["abnormal"] and spo2["unit"] == "%"
            assert row["vitals"]["heart_rate_per_min"]["abnormal"] is False and row["vitals_abnormal"]
            assert row["review"] == {
                "state": "none",
                "review_id": None,
                "reviewer": None,
                "label": None,
                "signed_at": None,
            }

            study = client.get(f"{API}/studies/{study_id}", headers=rad).json()
            assert [i["id"] for i in study["images"]] == [image_id] and study["patient"]["id"] == patient_id
            assert client.get(f"{API}/studies", headers=rad).json()["items"][0]["image_count"] == 1

            image = client.get(f"{API}/images/{image_id}", headers=rad).json()
            assert (image["columns"], image["rows"]) == (1841, 1955) and image[
                "media_type"
            ] == "application/dicom"
            assert image["ai"]["inference_id"] and image["triage"]["priority"] == row["priority"]
            assert image["inferences"][0]["status"] == "succeeded"

            findings = client.get(f"{API}/images/{image_id}/findings", headers=rad).json()
            assert findings["model_version"] == predictor.version and findings["disclaimer"] == DISCLAIMER
            for finding in findings["findings"]:
                x1, y1, x2, y2 = finding["box"]
                assert 0 <= x1 < x2 <= 1841 and 0 <= y1 < y2 <= 1955

            png = client.get(f"{API}/images/{image_id}/pixels.png", headers=rad)
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert "no-store" in png.headers["cache-control"]
            picture = PILImage.open(io.BytesIO(png.content))
            assert picture.size == (1841, 1955) and picture.mode == "L"
            small = client.get(
                f"{API}/images/{image_id}/pixels.png",
                params={"max_size": 256, "window_center": 100, "window_width": 80},
                headers=rad,
            )
            assert max(PILImage.open(io.BytesIO(small.content)).size) == 256

            fhir = client.get(f"{API}/images/{image_id}/report", params={"format": "fhir"}, headers=rad)
            assert fhir.status_code == 200 and fhir.headers["content-type"].startswith(
                "application/fhir+json"
            )
            assert fhir.json()["resourceType"] == "DiagnosticReport"
            dicom = client.get(f"{API}/images/{image_id}/report", params={"format": "dicom"}, headers=rad)
            assert dicom.status_code == 200 and dicom.content[128:132] == b"DICM"

            vitals = client.get(f"{API}/patients/{patient_id}/vitals", headers=rad).json()
            assert vitals["total"] == 1 and vitals["items"][0]["spo2_percent"] == 89.0
            assert vitals["latest"]["temperature_c"]["abnormal"] is True

            # Review: confirm the AI's best finding (if any), reject the next, draw a missed one.
            actions = []
            if findings["findings"]:
                actions.append({"action": "confirm", "source_finding_id": findings["findings"][0]["id"]})
            if len(findings["findings"]) > 1:
                actions.append({"action": "reject", "source_finding_id": findings["findings"][1]["id"]})
            actions.append({"action": "add", "label": "pneumonia", "box": [100, 200, 700, 1200]})
            draft = client.post(
                f"{API}/reviews", json={"image_id": image_id, "findings": actions}, headers=rad
            )
            assert draft.status_code == 201, draft.text
            review_id = draft.json()["id"]
            assert (
                draft.json()["status"] == "draft"
                and draft.json()["inference_id"] == image["ai"]["inference_id"]
            )
            updated = client.patch(
                f"{API}/reviews/{review_id}",
                json={"label": "pneumonia", "comment": "RLL opacity"},
                headers=rad,
            )
            assert updated.status_code == 200 and len(updated.json()["findings"]) == len(actions)
            signed = client.post(f"{API}/reviews/{review_id}/sign", headers=rad)
            assert (
                signed.status_code == 200
                and signed.json()["status"] == "signed"
                and signed.json()["signed_at"]
            )
            assert (
                client.patch(f"{API}/reviews/{review_id}", json={"comment": "x"}, headers=rad).status_code
                == 409
            )
            assert client.post(f"{API}/reviews/{review_id}/sign", headers=rad).status_code == 409

            state = client.get(f"{API}/worklist", headers=rad).json()["items"][0]["review"]
            assert state["state"] == "signed" and state["reviewer"] == "rad" and state["label"] == "pneumonia"
            assert client.get(f"{API}/worklist?reviewed=true", headers=rad).json()["total"] == 1
            assert client.get(f"{API}/worklist?reviewed=false", headers=rad).json()["total"] == 0

            export = client.get(f"{API}/exports/training-manifest", headers=rad)
            assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
            folder = tmp_path / "export"
            zipfile.ZipFile(io.BytesIO(export.content)).extractall(folder)
            records = load_records(folder)
            assert len(records) == 1 and records[0].label.value == "pneumonia"
            expected_boxes = 2 if findings["findings"] else 1  # confirmed + added; the rejected one is not
            assert records[0].boxes.shape == (expected_boxes, 4)
            assert records[0].patient_id.startswith("p") and "RG1" not in records[0].patient_id
            exported = PILImage.open(records[0].path)
            assert exported.size == (1841, 1955) and exported.mode.startswith("I")  # 16-bit kept

            # The admin sees who read the study and who signed, from where.
            admin = env.token(client, "admin")
            reads = client.get(f"{API}/audit", params={"action": "read.study"}, headers=admin).json()
            assert reads["total"] == 1
            event = reads["items"][0]
            assert event["actor_username"] == "rad" and event["object_id"] == str(study_id)
            assert event["object_type"] == "study" and event["ip"] == "127.0.0.1"
            signs = client.get(f"{API}/audit", params={"action": "review.sign"}, headers=admin).json()
            assert signs["total"] == 1 and signs["items"][0]["object_id"] == str(review_id)
            every_read = client.get(f"{API}/audit", params={"action": "read.", "actor": "rad"}, headers=admin)
            actions_seen = {e["action"] for e in every_read.json()["items"]}
            assert {
                "read.worklist",
                "read.image",
                "read.findings",
                "read.pixels",
                "read.report",
                "read.vitals",
                "read.studies",
            } <= actions_seen
            assert client.get(f"{API}/audit", headers=rad).status_code == 403
    finally:
        runtime.close()


def test_worklist_order_filters_and_pagination(api_env: ApiEnv, data_root: Path) -> None:
    jpegs = [p.read_bytes() for p in dataset_jpegs(data_root, 5)]
    seeded = {
        "routine-old": seed_image(
            api_env, jpegs[0], patient_key="P-001", priority="routine", received_at=hours_ago(9)
        ),
        "urgent-new": seed_image(
            api_env, jpegs[1], patient_key="P-002", priority="urgent", received_at=hours_ago(1)
        ),
        "high-old": seed_image(
            api_env, jpegs[2], patient_key="P-003", priority="high", received_at=hours_ago(8)
        ),
        "urgent-old": seed_image(
            api_env, jpegs[3], patient_key="Q-100", priority="urgent", received_at=hours_ago(5)
        ),
        "queued": seed_image(api_env, jpegs[4], patient_key="P-004", label=None, received_at=hours_ago(10)),
    }
    with api_env.db.session(write=True) as session:
        queries.add_vital_signs(
            session,
            [
                {
                    "patient_id": seeded["urgent-new"].patient_id,
                    "measured_at": hours_ago(0.1),
                    "spo2_percent": 98.0,
                }
            ],
        )
    order = ["urgent-old", "urgent-new", "high-old", "routine-old", "queued"]
    with api_env.client() as client:
        rad = api_env.token(client, "rad")

        def ids(query: str = "") -> tuple[list[int], int]:
            answer = client.get(f"{API}/worklist{query}", headers=rad)
            assert answer.status_code == 200, answer.text
            return [item["image_id"] for item in answer.json()["items"]], answer.json()["total"]

        assert ids() == ([seeded[k].image_id for k in order], 5)
        assert ids("?priority=urgent&priority=high") == ([seeded[k].image_id for k in order[:3]], 3)
        assert ids("?priority=none") == ([seeded["queued"].image_id], 1)
        assert ids("?status=queued") == ([seeded["queued"].image_id], 1)
        assert ids("?status=analysed&priority=routine") == ([seeded["routine-old"].image_id], 1)
        assert ids("?patient=q-1") == ([seeded["urgent-old"].image_id], 1)
        assert ids("?patient=%25") == ([], 0)  # '%' is a literal, not a wildcard
        assert ids("?reviewed=true") == ([], 0)
        assert ids("?limit=2&offset=1") == ([seeded[k].image_id for k in order[1:3]], 5)
        assert ids("?offset=10") == ([], 5)
        item = client.get(f"{API}/worklist?priority=urgent", headers=rad).json()["items"][1]
        assert item["vitals"]["spo2_percent"]["abnormal"] is False and item["vitals_abnormal"] is False
        assert item["ai"]["top_score"] is None and item["ai"]["label"] == "covid19"
        queued = client.get(f"{API}/worklist?priority=none", headers=rad).json()["items"][0]
        assert queued["ai"] is None and queued["priority"] is None and queued["vitals"] == {}
        for bad in ("limit=0", "limit=500", "offset=-3", "status=done", "priority=urgent&priority=bad"):
            answer = client.get(f"{API}/worklist?{bad}", headers=rad)
            assert answer.status_code == 422 and answer.json()["detail"], bad


def test_review_actions_are_validated_kept_beside_the_ai_and_exported(
    api_env: ApiEnv, data_root: Path, tmp_path: Path
) -> None:
    from covidet.detection.data import load_records

    jpegs = [p.read_bytes() for p in dataset_jpegs(data_root, 3)]
    first = seed_image(
        api_env,
        jpegs[0],
        patient_key="R-1",
        priority="high",
        findings=[
            ("covid19", 0.9, (10.0, 20.0, 200.0, 300.0)),
            ("covid19", 0.7, (300.0, 20.0, 500.0, 300.0)),
            ("pneumonia", 0.3, (50.0, 50.0, 90.0, 90.0)),
        ],
    )
    queued = seed_image(api_env, jpegs[1], patient_key="R-2", label=None)
    seed_image(api_env, jpegs[2], patient_key="R-3", priority="routine")  # never reviewed: not exported
    f1, f2, f3 = first.finding_ids
    with api_env.client() as client:
        rad = api_env.token(client, "rad")

        def create(body: dict) -> tuple[int, dict]:
            answer = client.post(f"{API}/reviews", json=body, headers=rad)
            return answer.status_code, answer.json()

        image = first.image_id

        def add(box: list[float] | None = None, **extra: object) -> dict:
            return {"action": "add", "label": "covid19", **({"box": box} if box else {}), **extra}

        def on(*actions: dict) -> dict:
            return {"image_id": image, "findings": list(actions)}

        refusals = [
            (on({"action": "confirm", "source_finding_id": 999999}), 422, "not a finding"),
            (on({"action": "confirm", "source_finding_id": f1, "label": "normal"}), 422, "relabel"),
            (on(add()), 422, "label and a box"),
            (on(add([0, 0, 99999, 10])), 422, "outside"),
            (on(add([50, 0, 10, 10])), 422, "x1 < x2"),
            (on({"action": "relabel", "source_finding_id": f1}), 422, "new label"),
            (
                on(
                    {"action": "reject", "source_finding_id": f1},
                    {"action": "delete", "source_finding_id": f1},
                ),
                422,
                "more than one",
            ),
            (on(add([1, 1, 5, 5], source_finding_id=f1)), 422, "no source_finding_id"),
            (on({"action": "zoom"}), 422, "action"),
            ({"image_id": image, "label": "flu"}, 422, "label"),
            ({"image_id": image, "comment": "a\x00b"}, 422, "NUL"),
            ({"image_id": 2147483647}, 404, "no image"),
        ]
        for body, code, words in refusals:
            status, answer = create(body)
            assert status == code and words in answer["detail"], (body, status, answer)

        status, review = create(
            {
                "image_id": image,
                "findings": [
                    {"action": "confirm", "source_finding_id": f1},
                    {
                        "action": "relabel",
                        "source_finding_id": f2,
                        "label": "pneumonia",
                        "box": [310, 30, 480, 290],
                    },
                    {"action": "reject", "source_finding_id": f3},
                    {"action": "add", "label": "covid19", "box": [20.5, 400, 220, 600]},
                ],
            }
        )
        assert status == 201, review
        assert [f["action"] for f in review["findings"]] == ["confirm", "relabel", "reject", "add"]
        assert review["findings"][0]["label"] == "covid19" and review["findings"][0]["box"] == [
            10,
            20,
            200,
            300,
        ]
        assert review["findings"][1]["box"] == [310, 30, 480, 290]
        assert create({"image_id": image})[0] == 409  # one draft per image and reviewer
        signless = client.post(f"{API}/reviews/{review['id']}/sign", headers=rad)
        assert signless.status_code == 422 and "label" in signless.json()["detail"]
        client.patch(f"{API}/reviews/{review['id']}", json={"label": "covid19"}, headers=rad)
        assert client.post(f"{API}/reviews/{review['id']}/sign", headers=rad).status_code == 200

        # The AI output is untouched beside the review.
        ai = client.get(f"{API}/images/{image}/findings", headers=rad).json()
        assert [(f["id"], f["label"]) for f in ai["findings"]] == [
            (f1, "covid19"),
            (f2, "covid19"),
            (f3, "pneumonia"),
        ]
        assert client.get(f"{API}/images/{image}", headers=rad).json()["reviews"][0]["status"] == "signed"

        # An unanalysed image can be read by a radiologist alone: only added boxes.
        status, manual = create(
            {
                "image_id": queued.image_id,
                "label": "normal",
                "findings": [{"action": "add", "label": "normal", "box": [1, 1, 100, 100]}],
            }
        )
        assert status == 201 and manual["inference_id"] is None
        assert client.post(f"{API}/reviews/{manual['id']}/sign", headers=rad).status_code == 200
        listed = client.get(f"{API}/reviews", params={"status": "signed"}, headers=rad).json()
        assert listed["total"] == 2 and {r["image_id"] for r in listed["items"]} == {image, queued.image_id}
        assert client.get(f"{API}/reviews", params={"image_id": image}, headers=rad).json()["total"] == 1

        export = client.get(f"{API}/exports/training-manifest", headers=rad)
        assert export.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(export.content))
    assert {"manifest.csv", "boxes.csv", "README.txt"} <= set(archive.namelist())
    archive.extractall(tmp_path / "export")
    records = {r.image: r for r in load_records(tmp_path / "export")}
    assert set(records) == {f"images/{image}.png", f"images/{queued.image_id}.png"}
    reviewed = records[f"images/{image}.png"]
    assert reviewed.label.value == "covid19"
    assert [b.value for b in reviewed.box_labels] == [
        "covid19",
        "pneumonia",
        "covid19",
    ]  # confirm, relabel, add
    assert reviewed.boxes.tolist() == [[10, 20, 200, 300], [310, 30, 480, 290], [20.5, 400, 220, 600]]
    assert reviewed.box_sources == ("review-confirm", "review-relabel", "review-add")
    assert PILImage.open(reviewed.path).mode == "L"  # an 8-bit JPEG stays 8-bit
    # Pseudonyms are stable per patient and keyed by the server's secret.
    from covidet.api.routes.exports import patient_pseudonym

    assert reviewed.patient_id == patient_pseudonym(api_env.app.state.secret_key, "R-1")


def test_alerts_vitals_devices_and_studies(sqlite_env: ApiEnv, data_root: Path) -> None:
    seeded = seed_image(
        sqlite_env, dataset_jpegs(data_root, 1)[0].read_bytes(), patient_key="A-1", priority="urgent"
    )
    with sqlite_env.db.session(write=True) as session:
        triage = session.scalar(select(TriageRecord).where(TriageRecord.image_id == seeded.image_id))
        session.add(
            Alert(
                image_id=seeded.image_id,
                patient_id=seeded.patient_id,
                triage_id=triage.id,
                priority="urgent",
                reasons=["SpO2 88%"],
            )
        )
        queries.add_vital_signs(
            session,
            [
                {"patient_id": seeded.patient_id, "measured_at": hours_ago(h), "spo2_percent": 90.0 + h}
                for h in (1, 2, 3, 30)
            ],
        )
        assert session.scalars(select(FindingRecord)).all() == []
    with sqlite_env.client() as client:
        rad, admin = sqlite_env.token(client, "rad"), sqlite_env.token(client, "admin")
        waiting = client.get(f"{API}/alerts", params={"acknowledged": "false"}, headers=rad).json()
        assert waiting["total"] == 1 and waiting["items"][0]["patient"]["patient_key"] == "A-1"
        alert_id = waiting["items"][0]["id"]
        ack = client.post(f"{API}/alerts/{alert_id}/acknowledge", headers=rad).json()
        assert ack["acknowledged_by"] == "rad" and ack["acknowledged_at"]
        again = client.post(f"{API}/alerts/{alert_id}/acknowledge", headers=admin).json()
        assert again["acknowledged_by"] == "rad"  # the first acknowledgement stays
        assert client.get(f"{API}/alerts?acknowledged=false", headers=rad).json()["total"] == 0
        assert client.post(f"{API}/alerts/424242/acknowledge", headers=rad).status_code == 404

        # Vitals: a time range (naive times are UTC), newest kept when limited, oldest first.
        since = (datetime.now(UTC) - timedelta(hours=4)).replace(tzinfo=None).isoformat()
        trend = client.get(
            f"{API}/patients/{seeded.patient_id}/vitals", params={"since": since}, headers=rad
        ).json()
        assert trend["total"] == 3 and [v["spo2_percent"] for v in trend["items"]] == [93.0, 92.0, 91.0]
        limited = client.get(f"{API}/patients/{seeded.patient_id}/vitals?limit=1", headers=rad).json()
        assert limited["total"] == 4 and limited["items"][0]["spo2_percent"] == 91.0
        backwards = client.get(
            f"{API}/patients/{seeded.patient_id}/vitals",
            params={"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
            headers=rad,
        )
        assert backwards.status_code == 422
        assert client.get(f"{API}/patients/999/vitals", headers=rad).status_code == 404
        extreme = client.get(
            f"{API}/patients/{seeded.patient_id}/vitals?since=0001-01-01T00:00:00%2B05:00", headers=rad
        )
        assert extreme.status_code == 422

        # The report of the seeded analysis; studies list and filter by patient.
        assert client.get(f"{API}/images/{seeded.image_id}/report", headers=rad).status_code == 200
        studies = client.get(f"{API}/studies", params={"patient": "a-1"}, headers=rad).json()
        assert studies["total"] == 1 and studies["items"][0]["patient"]["patient_key"] == "A-1"
        assert client.get(f"{API}/studies/999", headers=rad).status_code == 404

        # Devices (admin): registered once, secrets shown once, names unique.
        made = client.post(f"{API}/devices", json={"name": "ward-3-phone", "kind": "uploader"}, headers=admin)
        assert made.status_code == 201 and made.json()["api_key"].startswith("cvd_")
        sensor = client.post(f"{API}/devices", json={"name": "bed-4", "kind": "sensor"}, headers=admin).json()
        assert sensor["mqtt_password"] and sensor["vitals_topic"].endswith("/vitals")
        assert (
            client.post(
                f"{API}/devices", json={"name": "ward-3-phone", "kind": "uploader"}, headers=admin
            ).status_code
            == 409
        )
        assert (
            client.post(f"{API}/devices", json={"name": "x", "kind": "toaster"}, headers=admin).status_code
            == 422
        )
        listed = client.get(f"{API}/devices", headers=admin).json()
        assert [d["name"] for d in listed] == ["ward-3-phone", "bed-4"] and "api_key" not in listed[0]
        # The new key uploads, and reads nothing.
        key = {"X-API-Key": made.json()["api_key"]}
        jpeg = dataset_jpegs(data_root, 2)[1].read_bytes()
        upload = client.post(
            f"{API}/images", headers=key, files={"file": ("x.jpg", jpeg)}, data={"patient_id": "A-2"}
        )
        assert upload.status_code == 201, upload.text
        assert client.get(f"{API}/images/{upload.json()['image_id']}", headers=key).status_code == 401
