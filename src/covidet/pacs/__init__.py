"""Outbound DICOM: covidet as a client of a PACS (C-STORE forwarding of reports, :mod:`.forward`).

Inbound DICOM (covidet's own C-STORE receiver) is :mod:`covidet.ingest`; this package imports neither
``ingest`` nor ``worker`` (an import-linter contract in pyproject.toml keeps it so).
"""

from covidet.pacs.forward import ForwardError, forward_to_pacs

__all__ = ["ForwardError", "forward_to_pacs"]
