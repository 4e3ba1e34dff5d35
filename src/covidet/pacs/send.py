"""Send one dataset to the PACS configured in the settings (``COVIDET_PACS_HOST`` / ``_PORT`` /
``_AE_TITLE``) and log what was sent with its status: the one outbound C-STORE of covidet's reports
(the AI result's Secondary Capture and SR, the signed review's SR)."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from covidet.config import Settings
from covidet.pacs.forward import ForwardError, forward_to_pacs

__all__ = ["send_to_pacs"]

logger = logging.getLogger("covidet.worker.reporting")  # the logger name these lines always had


def send_to_pacs(settings: Settings, dataset: Dataset, *, what: str) -> int:
    """C-STORE ``dataset`` to the PACS of ``settings`` and log ``what`` was sent with the status;
    returns the status. Raises what :func:`covidet.pacs.forward.forward_to_pacs` raises, and
    :class:`~covidet.pacs.forward.ForwardError` when no PACS host is configured."""
    if not settings.pacs_host:
        raise ForwardError(f"{what} not sent: no PACS configured (COVIDET_PACS_HOST)")
    status = forward_to_pacs(
        dataset,
        host=settings.pacs_host,
        port=settings.pacs_port,
        called_ae=settings.pacs_ae_title,
        calling_ae=settings.ae_title,
    )
    logger.info(
        "%s forwarded to %s@%s:%d: status 0x%04X",
        what,
        settings.pacs_ae_title,
        settings.pacs_host,
        settings.pacs_port,
        status,
    )
    return status
