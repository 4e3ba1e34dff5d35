"""Vital-sign alerts: listing them with their patients and acknowledging them.

Functions take a session and never commit; see :mod:`covidet.store.review_queries`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from covidet.store.models import (
    Alert,
    Patient,
    utcnow,
)
from covidet.store.query_common import NotFound

__all__ = [
    "acknowledge_alert",
    "get_alert",
    "list_alerts",
]

# ------------------------------------------------------------------------------------------- alerts


def list_alerts(
    session: Session, *, acknowledged: bool | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[tuple[Alert, Patient]], int]:
    """Alerts, newest first, with their patients; ``acknowledged`` filters."""
    statement = select(Alert, Patient).join(Patient, Alert.patient_id == Patient.id)
    if acknowledged is not None:
        statement = statement.where(
            Alert.acknowledged_at.is_not(None) if acknowledged else Alert.acknowledged_at.is_(None)
        )
    total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    rows = session.execute(
        statement.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit).offset(offset)
    ).all()
    return [(alert, patient) for alert, patient in rows], int(total)


def get_alert(session: Session, alert_id: int) -> tuple[Alert, Patient] | None:
    row = session.execute(
        select(Alert, Patient).join(Patient, Alert.patient_id == Patient.id).where(Alert.id == alert_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def acknowledge_alert(
    session: Session, alert_id: int, *, username: str, now: datetime | None = None
) -> tuple[Alert, Patient]:
    """Mark an alert acknowledged by ``username``. Acknowledging twice keeps the first acknowledgement
    (who saw it first is what matters).

    Raises:
        NotFound: no such alert.
    """
    found = get_alert(session, alert_id)
    if found is None:
        raise NotFound(f"no alert with id {alert_id}")
    alert = found[0]
    if alert.acknowledged_at is None:
        alert.acknowledged_at = now or utcnow()
        alert.acknowledged_by = username
        session.flush()
    return found
