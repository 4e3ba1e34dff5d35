"""Signing a review over the API keeps its DICOM SR in the study; an addendum's SR names the SR of the
review it amends. Real parts: the app served by uvicorn, httpx, pydicom-data's chest X-ray accepted
through ingest, the SRs read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom.filebase import DicomBytesIO

from covidet.archive import archive_ai_sr, instance_part10
from covidet.reports import ai_sr_uids
from covidet.reports.review_sr import review_sr_uids
from covidet.store import archive_queries as aq
from covidet.store.models import DicomObject
from tests.api.conftest import ApiEnv, seed_image

API = "/api/v1"


def _sign(client, headers: dict[str, str], image_id: int, finding_id: int, comment: str) -> int:  # type: ignore[no-untyped-def]
    draft = client.post(
        f"{API}/reviews",
        json={
            "image_id": image_id,
            "label": "covid19",
            "comment": comment,
            "findings": [{"action": "confirm", "source_finding_id": finding_id}],
        },
        headers=headers,
    )
    assert draft.status_code == 201, draft.text
    signed = client.post(f"{API}/reviews/{draft.json()['id']}/sign", headers=headers)
    assert signed.status_code == 200, signed.text
    return int(signed.json()["id"])


def test_signing_keeps_the_review_sr_and_an_addendum_names_the_first(
    sqlite_env: ApiEnv, rg1_dicom: Path
) -> None:
    env = sqlite_env
    seeded = seed_image(
        env, rg1_dicom.read_bytes(), patient_key="P-SR", findings=[("covid19", 0.9, (300, 400, 900, 1200))]
    )
    assert archive_ai_sr(env.db, env.store, seeded.image_id) is not None
    with env.client() as client:
        rad = env.token(client, "rad")
        first = _sign(client, rad, seeded.image_id, seeded.finding_ids[0], "Left lower zone opacity.")
        second = _sign(client, rad, seeded.image_id, seeded.finding_ids[0], "Addendum: compare with prior.")
    with env.db.session() as session:
        kept = {o.review_id: o for o in session.query(DicomObject).filter(DicomObject.kind == "review-sr")}
        assert set(kept) == {first, second}
        records = {r.sop_instance_uid: r for r in aq.instances(session, study_ids=[seeded.study_id])}
    assert sorted(r.kind for r in records.values()) == ["ai-sr", "image", "review-sr", "review-sr"]
    addendum = hd.sr.srread(
        DicomBytesIO(instance_part10(env.db, env.store, records[kept[second].sop_instance_uid]))
    )
    assert addendum.SOPInstanceUID == review_sr_uids(second)[1]
    predecessors = {
        item.ReferencedSOPInstanceUID
        for study in addendum.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert predecessors == {ai_sr_uids(seeded.image_id, seeded.inference_id)[1], review_sr_uids(first)[1]}
    original = hd.sr.srread(
        DicomBytesIO(instance_part10(env.db, env.store, records[kept[first].sop_instance_uid]))
    )
    original_predecessors = {
        item.ReferencedSOPInstanceUID
        for study in original.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert original_predecessors == {ai_sr_uids(seeded.image_id, seeded.inference_id)[1]}
