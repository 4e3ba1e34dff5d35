"""Compatibility: PACS forwarding moved to :mod:`covidet.pacs.forward` (outbound DICOM is not ingest).

``from covidet.ingest.forward import ForwardError, forward_to_pacs`` keeps working; new code imports
from :mod:`covidet.pacs`.
"""

from covidet.pacs.forward import ForwardError, forward_to_pacs

__all__ = ["ForwardError", "forward_to_pacs"]
