"""The Query/Retrieve SCP's configuration, presentation contexts, authorisation and audit, shared by
the C-FIND (:mod:`.find`) and C-GET / C-MOVE (:mod:`.retrieve`) handlers.

Who may query and retrieve: an association accepted for an active device of kind ``workstation``
(:mod:`covidet.ingest.dicom_association` gives it :func:`workstation_contexts` instead of the
modalities' storage contexts). Every handler checks the peer again (:meth:`QueryRetrieve.refusal`)
and writes its audit rows (:meth:`QueryRetrieve.audit`) before anything is disclosed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from covidet.config import Settings
from covidet.ingest.dicom_association import Peer
from covidet.ingest.dicom_syntaxes import ACCEPTED_TRANSFER_SYNTAXES, VERIFICATION_SYNTAXES
from covidet.ingest.qr.keys import PATIENT_ROOT, STUDY_ROOT
from covidet.ingest.service import ACCEPTED_SOP_CLASSES
from covidet.ingest.storage import ImageStore
from covidet.store.db import Database
from covidet.store.dicom_audit import record_qr_request
from covidet.store.models import DeviceKind

__all__ = [
    "FIND_MODELS",
    "GET_MODELS",
    "MOVE_MODELS",
    "RETRIEVABLE_SOP_CLASSES",
    "AuditDetails",
    "QueryRetrieve",
    "failure",
    "parse_destinations",
    "workstation_contexts",
]

logger = logging.getLogger("covidet.ingest.qr")

#: What a Q/R request's audit rows record besides the peer (level, model, destination, status,
#: counts): JSON values.
AuditDetails = Mapping[str, str | int]

#: Information model SOP class -> root, per DIMSE service.
FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): STUDY_ROOT,
}
GET_MODELS = {
    str(PatientRootQueryRetrieveInformationModelGet): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): STUDY_ROOT,
}
MOVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): STUDY_ROOT,
}
#: What covidet holds and sends: the X-ray storage classes it accepts, and the SRs it makes.
RETRIEVABLE_SOP_CLASSES = (*ACCEPTED_SOP_CLASSES, str(Comprehensive3DSRStorage))

#: Implicit VR Little Endian: every query model context accepts it (PS3.5 10.1).
_QR_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_ERROR_COMMENT_LIMIT = 64


def workstation_contexts() -> list[PresentationContext]:
    """The presentation contexts a workstation's association may use: Verification, the six
    Query/Retrieve models, and the retrievable storage classes with the SCP/SCU role reversed
    (covidet is the storage SCU for C-GET: it accepts the workstation's SCP role, as pynetdicom's
    C-GET SCP needs). A C-STORE from a workstation on the default role is refused by the store
    handler (0x0124)."""
    contexts = [build_context(Verification, list(VERIFICATION_SYNTAXES))]
    for model in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS):
        contexts.append(build_context(model, list(_QR_SYNTAXES)))
    for sop_class in RETRIEVABLE_SOP_CLASSES:
        context = build_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        context.scu_role, context.scp_role = False, True
        contexts.append(context)
    return contexts


def parse_destinations(mapping: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """``{AE: "host:port"}`` (the checked ``Settings.dicom_move_destinations``) -> ``{AE: (host, port)}``."""
    parsed: dict[str, tuple[str, int]] = {}
    for ae_title, address in mapping.items():
        host, _, port = address.rpartition(":")
        parsed[ae_title.strip()] = (host, int(port))
    return parsed


def failure(status: int, comment: str) -> Dataset:
    """A failure status with its Error Comment (cut to the DICOM limit of 64 characters)."""
    dataset = Dataset()
    dataset.Status = status
    dataset.ErrorComment = comment[:_ERROR_COMMENT_LIMIT]
    return dataset


@dataclass
class QueryRetrieve:
    """What the Q/R handlers need: the archive (``db``, ``store``), the receiver's AE title (the
    ``RetrieveAETitle`` of responses), the bounds (``max_matches`` per C-FIND, ``max_instances`` per
    C-GET / C-MOVE), the C-MOVE destinations (AE title -> (host, port)), and ``on_connect``, an
    ``EVT_CONN_OPEN`` handler for the C-MOVE association (TCP_NODELAY)."""

    db: Database
    store: ImageStore
    ae_title: str = "COVIDET"
    max_matches: int = 1000
    max_instances: int = 10_000
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    on_connect: Callable[[Event], None] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, store: ImageStore, *, ae_title: str
    ) -> QueryRetrieve:
        """Configured by ``Settings.dicom_qr_max_matches``, ``dicom_qr_max_instances`` and
        ``dicom_move_destinations``."""
        return cls(
            db,
            store,
            ae_title=ae_title,
            max_matches=settings.dicom_qr_max_matches,
            max_instances=settings.dicom_qr_max_instances,
            destinations=parse_destinations(settings.dicom_move_destinations),
        )

    def refusal(self, peer: Peer | None, service: str) -> Dataset | None:
        """``None`` when ``peer`` may use ``service``; else the 0x0124 status, logged."""
        if peer is not None and peer.kind == DeviceKind.WORKSTATION.value:
            return None
        who = (
            "an unregistered association"
            if peer is None
            else f"{peer.ae_title} ({peer.kind}, {peer.address})"
        )
        logger.warning("%s refused for %s: only workstations may query and retrieve", service, who)
        return failure(0x0124, f"{service} refused: not a registered workstation")

    def audit(
        self,
        service: str,
        peer: Peer,
        *,
        object_type: str,
        object_ids: Sequence[str],
        details: AuditDetails,
    ) -> None:
        """Write the audit rows of one request (:func:`covidet.store.dicom_audit.record_qr_request`).
        Raises what the database raises: the caller then refuses the request."""
        host = peer.address.rpartition(":")[0] or peer.address
        with self.db.session(write=True) as session:
            record_qr_request(
                session,
                service,
                device_id=peer.device_id,
                peer_host=host,
                object_type=object_type,
                object_ids=object_ids,
                details={"calling_ae": peer.ae_title, "peer": peer.address, **details},
            )
