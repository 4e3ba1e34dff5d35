"""A simulated X-ray modality: sends real chest X-rays as DICOM over C-STORE (pynetdicom SCU).

Images come from a dataset folder with ``manifest.csv`` (the layout of ``covidet train``), from a
plain folder of images, or from a list of files. PNG/JPEG files are converted to DX "for
presentation" objects (:func:`covidet.imaging.dicom_writer.xray_to_dicom`); DICOM files are sent
as they are.

Identifiers are stable: the patient id, Study, Series and SOP Instance UIDs of a converted image are
derived from the dataset patient and the file, so running the simulator twice sends the same
instances again (which a correct receiver stores once) and the vital-sign sensors can speak of the
same patients.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.status import code_to_category
from tqdm import tqdm

from covidet.imaging.dicom_writer import DX_FOR_PRESENTATION, xray_to_dicom
from covidet.simulate.records import ModalityJson, SendFailure

if TYPE_CHECKING:
    from pynetdicom.association import Association

__all__ = [
    "IMAGE_SUFFIXES",
    "ModalityReport",
    "ModalitySimulator",
    "XRayCase",
    "load_cases",
]

logger = logging.getLogger(__name__)

#: Files of a plain folder that are taken as images (others are ignored).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
_LABELS = ("covid19", "normal", "pneumonia")  # round-robin order of a manifest selection
#: Storage SOP classes proposed besides DX: what DICOM files given to the simulator may be.
_STORAGE_CLASSES = (
    DX_FOR_PRESENTATION,
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)


def _uid(*parts: str) -> str:
    """A UID derived from ``parts`` (same parts, same UID, on any machine)."""
    return generate_uid(entropy_srcs=["covidet-simulator", *parts])


def _dicom_text(value: str, length: int) -> str:
    """``value`` as a DICOM LO/SH: printable, no backslash, at most ``length`` characters."""
    return "".join(c for c in value if c.isprintable() and c != "\\")[:length]


@dataclass(frozen=True, slots=True)
class XRayCase:
    """One image to send and the simulated patient it belongs to.

    ``label`` is the dataset's label (covid19 | pneumonia | normal) or ``None`` when unknown; it
    drives the vital signs of the patient. For DICOM files, ``patient_key`` is the file's PatientID
    and the UIDs are the file's own.
    """

    path: Path
    patient_key: str
    label: str | None
    is_dicom: bool = False

    @property
    def study_instance_uid(self) -> str:
        return _uid("study", self.patient_key)

    @property
    def series_instance_uid(self) -> str:
        return _uid("series", self.patient_key)

    @property
    def sop_instance_uid(self) -> str:
        return _uid("image", self.patient_key, self.path.name)

    def to_dataset(self) -> Dataset:
        """The DICOM object to send (reads, and for PNG/JPEG converts, the file)."""
        if self.is_dicom:
            return dcmread(self.path)
        accession = hashlib.sha256(self.study_instance_uid.encode()).hexdigest()[:12].upper()
        return xray_to_dicom(
            self.path,
            patient_id=self.patient_key,
            patient_name=f"SIMULATED^{self.patient_key}",
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_instance_uid=self.sop_instance_uid,
            accession_number=f"S{accession}",
            study_description="Chest X-ray (covidet simulator)",
        )


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _file_case(path: Path) -> XRayCase:
    """A case for a file outside a manifest: one patient per file, label from its folder name."""
    if _is_dicom_file(path):
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        key = str(ds.get("PatientID") or "") or f"SIM-{hashlib.sha256(path.name.encode()).hexdigest()[:12]}"
        return XRayCase(path, key, None, is_dicom=True)
    label = path.parent.name if path.parent.name in _LABELS else None
    key = f"SIM-{hashlib.sha256(path.name.encode()).hexdigest()[:12]}"
    return XRayCase(path, key, label)


def _manifest_cases(root: Path, split: str | None) -> list[XRayCase]:
    """Cases of a dataset manifest, one patient per ``(source, patient_id)``, labels interleaved."""
    with (root / "manifest.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if split in (None, "all") or row.get("split") == split]
    by_label: dict[str, list[XRayCase]] = {}
    for row in rows:
        source, patient = row.get("source") or "data", row.get("patient_id") or ""
        # Patient ids are only unique within one source of the dataset.
        key = _dicom_text(f"SIM-{source}-{patient}" if patient else f"SIM-{Path(row['image']).stem}", 64)
        label = row.get("label") or None
        by_label.setdefault(label or "", []).append(XRayCase(root / row["image"], key, label))
    # Round robin over labels so that a short --limit still mixes covid19, normal and pneumonia.
    order = [label for label in _LABELS if label in by_label] + sorted(set(by_label) - set(_LABELS))
    queues = [iter(by_label[label]) for label in order]
    cases: list[XRayCase] = []
    while queues:
        for queue in list(queues):
            case = next(queue, None)
            if case is None:
                queues.remove(queue)
            else:
                cases.append(case)
    return cases


def load_cases(
    source: Path | Sequence[Path], *, split: str | None = "val", limit: int | None = None
) -> list[XRayCase]:
    """The images to send, in order.

    ``source`` is a dataset folder with ``manifest.csv`` (rows of ``split``; ``None`` or ``"all"``
    for every row), a folder of images (searched recursively, sorted; ``split`` ignored), or a list
    of image files. At most ``limit`` cases are returned.

    Raises:
        FileNotFoundError: ``source`` or a listed file does not exist.
        ValueError: nothing to send.
    """
    if isinstance(source, Path) and source.is_dir():
        if (source / "manifest.csv").is_file():
            cases = _manifest_cases(source, split)
        else:
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            cases = [_file_case(p) for p in files[: limit if limit is not None else None]]
    else:
        paths = [source] if isinstance(source, Path) else list(source)
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"not a file or dataset folder: {', '.join(missing)}")
        cases = [_file_case(Path(p)) for p in paths]
    cases = cases[:limit] if limit is not None else cases
    if not cases:
        raise ValueError(f"no images to send in {source} (split {split!r})")
    return cases


@dataclass
class ModalityReport:
    """What the modality sent. A C-STORE is acknowledged when the peer answers Success or Warning
    (stored, possibly coerced); every other outcome is a failure with its status (``None`` when no
    answer came: association refused or aborted, file unreadable). ``total`` cases were to be sent,
    ``sent`` C-STORE requests were issued."""

    peer: str
    total: int = 0
    sent: int = 0
    acknowledged: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[SendFailure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_json(self) -> ModalityJson:
        return {
            "peer": self.peer,
            "total": self.total,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "statuses": dict(sorted(self.statuses.items())),
            "failures": self.failures,
        }


class ModalitySimulator:
    """A DICOM Storage SCU that sends :class:`XRayCase` objects to ``host:port``.

    ``called_ae`` is covidet's AE title (``Settings.ae_title``); ``calling_ae`` the modality's own,
    as registered with ``covidet devices add NAME --kind modality --ae-title ...``. ``timeout`` (s)
    bounds the association set-up, each DIMSE response and network silence.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_ae: str = "COVIDET",
        calling_ae: str = "COVIDET-SIM",
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.called_ae = called_ae
        self.calling_ae = calling_ae
        self.timeout = timeout

    def _application_entity(self, extra_syntaxes: set[str]) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, *sorted(extra_syntaxes)]
        for sop_class in _STORAGE_CLASSES:
            ae.add_requested_context(sop_class, syntaxes)
        return ae

    def send(
        self, cases: Sequence[XRayCase], *, progress: bool = False, bar_position: int = 0
    ) -> ModalityReport:
        """C-STORE every case over one association, re-established if the peer drops it.

        Never raises for network or peer errors: they are failures in the returned report. Once an
        association cannot be established, the remaining cases fail without further attempts (an
        unreachable peer costs one timeout, not one per image).
        """
        report = ModalityReport(peer=f"{self.called_ae}@{self.host}:{self.port}", total=len(cases))
        # DICOM files may carry a compressed transfer syntax: propose it too, so they go unchanged.
        extra = set()
        for case in cases:
            if case.is_dicom:
                with contextlib.suppress(Exception):  # an unreadable file is reported when sent
                    extra.add(str(dcmread(case.path, stop_before_pixels=True).file_meta.TransferSyntaxUID))
        ae = self._application_entity(extra)
        assoc = None
        unreachable: str | None = None
        bar = tqdm(
            total=len(cases),
            desc="images",
            unit="image",
            file=sys.stderr,
            disable=not progress,
            position=bar_position,
        )
        try:
            for case in cases:
                bar.update(1)
                if unreachable is not None:
                    report.failures.append({"file": str(case.path), "status": None, "reason": unreachable})
                    continue
                try:
                    # One at a time: a converted X-ray is ~1 MB, never all of them in memory.
                    ds = case.to_dataset()
                except Exception as exc:  # unreadable file: reported, the others are still sent
                    logger.warning("cannot make a DICOM object of %s: %s", case.path, exc)
                    reason = f"unreadable: {exc}"
                    report.failures.append({"file": str(case.path), "status": None, "reason": reason})
                    continue
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
                    if not assoc.is_established:
                        unreachable = (
                            f"association rejected by {report.peer}"
                            if assoc.is_rejected
                            else f"association with {report.peer} failed (not listening, or aborted)"
                        )
                        logger.warning("%s", unreachable)
                        report.failures.append(
                            {"file": str(case.path), "status": None, "reason": unreachable}
                        )
                        continue
                report.sent += 1
                self._store(assoc, case, ds, report)
        finally:
            bar.close()
            if assoc is not None and assoc.is_established:
                assoc.release()
        logger.info(
            "modality sent %d of %d image(s) to %s: %d acknowledged, %d failed",
            report.sent,
            report.total,
            report.peer,
            report.acknowledged,
            report.failed,
        )
        return report

    def _store(self, assoc: Association, case: XRayCase, ds: Dataset, report: ModalityReport) -> None:
        try:
            response = assoc.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:  # no accepted presentation context, etc.
            report.failures.append({"file": str(case.path), "status": None, "reason": str(exc)})
            return
        code = response.get("Status") if response else None
        if code is None:
            reason = "no response (association aborted or timed out)"
            report.failures.append({"file": str(case.path), "status": None, "reason": reason})
            return
        status = f"0x{int(code):04X}"
        report.statuses[status] += 1
        category = code_to_category(int(code))
        if category in ("Success", "Warning"):
            report.acknowledged += 1
        else:
            comment = str(response.get("ErrorComment") or "")
            report.failures.append(
                {"file": str(case.path), "status": status, "reason": comment or f"{category} status"}
            )
