"""``GET /api/v1/health``: is the service up and its database reachable (for probes and monitors)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from covidet import __version__
from covidet.api.deps import DatabaseDep
from covidet.store.health import ping

__all__ = ["HealthPublic", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])


class HealthPublic(BaseModel):
    """``status`` is ``ok`` when the database answers, else ``unavailable`` (HTTP 503)."""

    status: Literal["ok", "unavailable"]
    version: str
    database: Literal["ok", "unavailable"]


@router.get(
    "",
    response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "the database does not answer"}},
)
def health(db: DatabaseDep, response: Response) -> HealthPublic:
    """Service status; needs no credentials and reveals no data."""
    try:
        with db.session() as session:
            ping(session)
    except Exception as exc:
        logger.error("health check: database unavailable: %s", exc)
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthPublic(status="unavailable", version=__version__, database="unavailable")
    return HealthPublic(status="ok", version=__version__, database="ok")
