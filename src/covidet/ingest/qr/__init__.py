"""DICOM Query/Retrieve SCP of the receiver: C-FIND, C-GET and C-MOVE over what covidet holds
(:mod:`covidet.store.archive_queries`: the X-rays, PNG/JPEG uploads served as DX, and the SRs covidet
keeps), for registered workstations only. See docs/dicom.md "Query/Retrieve" for the conformance
statement.

:func:`qr_handlers` gives the receiver's ``evt_handlers`` entries; :func:`workstation_contexts` the
presentation contexts a workstation's association negotiates.
"""

from __future__ import annotations

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

from covidet.ingest.dicom_association import PeerRegistry
from covidet.ingest.qr.find import handle_find
from covidet.ingest.qr.retrieve import handle_get, handle_move
from covidet.ingest.qr.service import RETRIEVABLE_SOP_CLASSES, QueryRetrieve, workstation_contexts

__all__ = [
    "RETRIEVABLE_SOP_CLASSES",
    "QueryRetrieve",
    "handle_find",
    "handle_get",
    "handle_move",
    "qr_handlers",
    "workstation_contexts",
]


def qr_handlers(service: QueryRetrieve, peers: PeerRegistry) -> list[EventHandlerType]:
    """``(event, handler, [args])`` bindings of the C-FIND, C-GET and C-MOVE handlers."""
    return [
        (evt.EVT_C_FIND, handle_find, [service, peers]),
        (evt.EVT_C_GET, handle_get, [service, peers]),
        (evt.EVT_C_MOVE, handle_move, [service, peers]),
    ]
