"""Device registration checks: is a name or a calling AE title already registered.

Functions take a :class:`~sqlalchemy.orm.Session` and never commit (the caller owns the transaction).
Creating, listing and finding devices by their credentials is :mod:`covidet.store.queries`.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from covidet.store.models import Device

__all__ = ["ae_title_taken", "device_name_taken"]


def device_name_taken(session: Session, name: str) -> bool:
    """Whether a device (active or not) is registered under exactly ``name``."""
    return session.scalar(select(Device.id).where(Device.name == name).limit(1)) is not None


def ae_title_taken(session: Session, ae_title: str) -> bool:
    """Whether a device (active or not) has the calling AE title ``ae_title`` (surrounding spaces
    ignored, as the receiver matches it)."""
    return session.scalar(select(Device.id).where(Device.ae_title == ae_title.strip()).limit(1)) is not None
