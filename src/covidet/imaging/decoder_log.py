"""Keep pydicom's per-plugin decoding tracebacks out of covidet's ERROR log.

When a frame cannot be decoded, pydicom logs every plugin's exception at ERROR *with a traceback*
(``pydicom.pixels.decoders.base``) and then raises a ``RuntimeError`` that already names each
plugin's failure. covidet catches that error, turns it into a one-line reason and refuses the image
(logged once, at WARNING, with the sender), so the library's tracebacks would report a correctly
handled bad input as a server error. The filter lowers them to DEBUG-only noise: dropped unless
the logger is set to DEBUG, where the details can still help.
"""

from __future__ import annotations

import logging

__all__ = ["DECODER_LOGGER", "install"]

#: The logger pydicom's decoders use for plugin failures.
DECODER_LOGGER = "pydicom.pixels.decoders.base"


class _DropPluginTracebacks(logging.Filter):
    """Drop ERROR records that carry exception info, unless DEBUG logging is on for the logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno >= logging.ERROR:
            return logging.getLogger(DECODER_LOGGER).isEnabledFor(logging.DEBUG)
        return True


_FILTER = _DropPluginTracebacks()


def install() -> None:
    """Attach the filter to pydicom's decoder logger (idempotent)."""
    logger = logging.getLogger(DECODER_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
