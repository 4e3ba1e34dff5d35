"""A reading room seeded without the detector: real dataset X-rays accepted through the real upload
path, AI results, triage and alerts written as the worker writes them, studies grouped as a modality
would send them (several images per study). Shared by the API and the browser tests of tests/web."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from covidet.store.models import Alert, Image, Study, TriageRecord
from tests.api.conftest import ApiEnv, dataset_jpegs, hours_ago, seed_image

#: An urgent reason as the triage writes them (the first reason decides).
URGENT_REASON = "partial NEWS2 8 (≥ 7: emergency response) over 4 of 5 parameters in the last 60 min"


@dataclass
class Room:
    """Ids of the seeded studies: ``a`` (patient P-A, two images, one urgent with an unacknowledged
    alert), ``b`` (P-B, one image, high), ``c`` (P-C, one image, routine, waiting longest)."""

    a: int
    a_images: list[int]
    b: int
    b_image: int
    c: int
    c_image: int
    alert_id: int
    probabilities: dict[int, dict[str, float]]


def group(env: ApiEnv, study_id: int, image_ids: list[int], **fields: object) -> None:
    """Put images into one study (as a modality sends a PA and a lateral view) and set its fields."""
    with env.db.session(write=True) as session:
        for image_id in image_ids:
            image = session.get(Image, image_id)
            assert image is not None
            image.study_id = study_id
        study = session.get(Study, study_id)
        assert study is not None
        for name, value in fields.items():
            setattr(study, name, value)


def seed_room(env: ApiEnv, data_root: Path) -> Room:
    jpegs = [path.read_bytes() for path in dataset_jpegs(data_root, 4)]
    box = (40.0, 60.0, 200.0, 300.0)
    a1 = seed_image(
        env,
        jpegs[0],
        patient_key="P-A",
        priority="urgent",
        received_at=hours_ago(2),
        label="covid19",
        findings=[("covid19", 0.93, box), ("pneumonia", 0.41, (220.0, 80.0, 380.0, 320.0))],
        reasons=[URGENT_REASON, "covid19 0.80 (positive: ≥ 0.50)"],
    )
    a2 = seed_image(
        env,
        jpegs[1],
        patient_key="P-A",
        priority="routine",
        received_at=hours_ago(1),
        label="normal",
        reasons=["image negative: AI disease score 0.20 (< 0.50)"],
    )
    b = seed_image(
        env,
        jpegs[2],
        patient_key="P-B",
        priority="high",
        received_at=hours_ago(3),
        label="pneumonia",
        findings=[("pneumonia", 0.88, box)],
        reasons=["pneumonia 0.80 on the right lung (positive: ≥ 0.50)"],
    )
    c = seed_image(
        env,
        jpegs[3],
        patient_key="P-C",
        priority="routine",
        received_at=hours_ago(5),
        label="normal",
        reasons=["image negative: AI disease score 0.20 (< 0.50)"],
    )
    group(
        env, a1.study_id, [a1.image_id, a2.image_id], accession_number="ACC-1001", description="CHEST PA+LAT"
    )
    group(env, b.study_id, [b.image_id], accession_number="ACC-2002", description="CHEST PA")
    group(env, c.study_id, [c.image_id], accession_number="ACC-3003", description="CHEST AP portable")
    with env.db.session(write=True) as session:
        triage_id = session.query(TriageRecord.id).filter(TriageRecord.image_id == a1.image_id).scalar()
        alert = Alert(
            image_id=a1.image_id,
            patient_id=a1.patient_id,
            triage_id=triage_id,
            priority="urgent",
            reasons=[URGENT_REASON],
        )
        session.add(alert)
        session.flush()
        alert_id = alert.id
    probabilities = {}
    for seeded, label in ((a1, "covid19"), (a2, "normal"), (b, "pneumonia"), (c, "normal")):
        others = [x for x in ("covid19", "pneumonia", "normal") if x != label]
        probabilities[seeded.image_id] = {label: 0.8, others[0]: 0.15, others[1]: 0.05}
    return Room(
        a1.study_id,
        [a1.image_id, a2.image_id],
        b.study_id,
        b.image_id,
        c.study_id,
        c.image_id,
        alert_id,
        probabilities,
    )


def many_alerts(env: ApiEnv, image_id: int, count: int) -> None:
    """``count`` more unacknowledged alerts of one image (a busy night)."""
    with env.db.session(write=True) as session:
        image = session.get(Image, image_id)
        assert image is not None
        triage_id = session.query(TriageRecord.id).filter(TriageRecord.image_id == image_id).scalar()
        for index in range(count):
            session.add(
                Alert(
                    image_id=image_id,
                    patient_id=image.study.patient_id,
                    triage_id=triage_id,
                    priority="urgent",
                    reasons=[f"{URGENT_REASON} (reading {index})"],
                    created_at=datetime.now().astimezone(),
                )
            )
