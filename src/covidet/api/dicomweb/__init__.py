"""DICOMweb (PS3.18) under ``/dicom-web``: WADO-RS, QIDO-RS and STOW-RS over covidet's archive.

The archive is what :mod:`covidet.store.archive_queries` calls covidet's holdings: the X-rays
(PNG/JPEG uploads served as DX objects) and the SRs covidet keeps. Reads need a radiologist or an
admin (bearer token or web session) and are audited; STOW-RS takes a modality or uploader device key,
or an admin's bearer token, and stores through the same ingest as C-STORE. The conformance statement
is docs/dicomweb.md.
"""

from fastapi import APIRouter

from covidet.api.dicomweb import qido, stow, wado
from covidet.api.dicomweb.common import DICOMWEB_PREFIX

__all__ = ["DICOMWEB_PREFIX", "router"]

# Not in the OpenAPI document: DICOMweb is specified by PS3.18 and covidet's conformance statement
# (docs/dicomweb.md), its bodies are DICOM JSON and multipart/related, not the JSON API's schemas.
router = APIRouter(prefix=DICOMWEB_PREFIX, include_in_schema=False)
router.include_router(qido.router)
router.include_router(wado.router)
router.include_router(stow.router)
