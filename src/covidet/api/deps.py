"""FastAPI dependencies of the API, as ``Annotated`` aliases (FastAPI full-stack template style).

The application's shared objects (settings, database, ingest service) live on ``app.state``, set by
:func:`covidet.api.app.create_app`; routes receive them through these aliases, so tests and the
``serve`` command can hand in their own. Device authentication is an API key in the ``X-API-Key``
header, compared by its SHA-256 (keys are stored hashed only); it admits devices to the upload route
only. Users (tokens, session cookies, roles) are authenticated by :mod:`covidet.api.auth`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from covidet.config import Settings
from covidet.ingest.service import ImageIngest
from covidet.ingest.storage import ImageStore
from covidet.store import queries
from covidet.store.db import Database
from covidet.store.models import DeviceKind

__all__ = [
    "API_KEY_HEADER",
    "API_PREFIX",
    "AuthenticatedDevice",
    "CurrentDevice",
    "DatabaseDep",
    "IngestDep",
    "SettingsDep",
    "StoreDep",
    "UploaderDevice",
    "api_key_header",
    "client_label",
    "get_current_device",
    "require_device_kind",
]

#: Every JSON route is under this prefix; the OpenAPI document and the docs are at the root.
API_PREFIX = "/api/v1"
API_KEY_HEADER = "X-API-Key"

#: Sent with every 401 so that a client learns how to authenticate (RFC 9110 requires the header on
#: 401; "APIKey" is not a registered scheme, but it names the header to use).
_WWW_AUTHENTICATE = {"WWW-Authenticate": f'APIKey realm="covidet", header="{API_KEY_HEADER}"'}

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="DeviceApiKey",
    description="The API key printed once by `covidet devices add NAME --kind uploader|modality`.",
    # Missing keys are answered by get_current_device, so that the refusal is logged and recorded.
    auto_error=False,
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.db


def get_ingest(request: Request) -> ImageIngest:
    return request.app.state.ingest


def get_store(request: Request) -> ImageStore:
    return request.app.state.ingest.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
IngestDep = Annotated[ImageIngest, Depends(get_ingest)]
StoreDep = Annotated[ImageStore, Depends(get_store)]


@dataclass(frozen=True, slots=True)
class AuthenticatedDevice:
    """The device a request's API key belongs to (a plain value, not a database row)."""

    id: int
    name: str
    kind: str


def client_label(request: Request) -> str:
    """``"client <address>"`` for logs and rejected_messages when the sender is not known."""
    host = request.client.host if request.client else "unknown address"
    return f"client {host}"


def get_current_device(
    request: Request,
    db: DatabaseDep,
    ingest: IngestDep,
    api_key: Annotated[str | None, Security(api_key_header)],
) -> AuthenticatedDevice:
    """The active device owning the request's ``X-API-Key``.

    Raises:
        HTTPException: 401 (with ``WWW-Authenticate``) for a missing or unknown key; the refusal is
            logged and kept in rejected_messages (channel ``upload``), without the key itself.
    """
    device = None
    if api_key:
        with db.session() as session:
            row = queries.device_by_api_key(session, api_key)
            if row is not None:
                device = AuthenticatedDevice(row.id, row.name, row.kind)
    if device is None:
        reason = (
            f"missing API key: send the device's key in the {API_KEY_HEADER} header"
            if not api_key
            else "unknown or revoked API key"
        )
        ingest.reject("upload", client_label(request), f"{request.method} {request.url.path}: {reason}", None)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers=_WWW_AUTHENTICATE)
    return device


CurrentDevice = Annotated[AuthenticatedDevice, Depends(get_current_device)]


def require_device_kind(*kinds: DeviceKind) -> Callable[..., AuthenticatedDevice]:
    """A dependency that admits only devices of ``kinds`` (403, logged and recorded, otherwise)."""
    allowed = {kind.value for kind in kinds}

    def dependency(request: Request, device: CurrentDevice, ingest: IngestDep) -> AuthenticatedDevice:
        if device.kind not in allowed:
            reason = (
                f"device {device.name!r} is a {device.kind}; only {' or '.join(sorted(allowed))} "
                f"devices may call {request.method} {request.url.path}"
            )
            ingest.reject("upload", device.name, reason, None)
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=reason)
        return device

    return dependency


#: A device allowed to upload images: an uploader (phone, gateway) or a modality.
UploaderDevice = Annotated[
    AuthenticatedDevice, Depends(require_device_kind(DeviceKind.UPLOADER, DeviceKind.MODALITY))
]
