"""The transfer syntaxes the DICOM receiver accepts: those pydicom can decode with the installed
plugins (pylibjpeg-libjpeg, -openjpeg, -rle), so that whatever is acknowledged can be analysed.

Every syntax of the list is tested end to end (docs/dicom.md). JPEG Extended (12-bit, process 2
and 4) is decoded by pylibjpeg-libjpeg; a stream that breaks the standard (pydicom's test file
``JPEG-lossy.dcm``: a sequential scan whose spectral selection is not 0..63) is refused at C-STORE
with "cannot understand" by the acceptance decode, not acknowledged.
"""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "VERIFICATION_SYNTAXES"]


def _decodable(candidates: tuple[UID, ...]) -> tuple[UID, ...]:
    """The candidates for which a pydicom pixel decoder (plugin) is installed and usable."""
    from pydicom.pixels import get_decoder

    usable = []
    for uid in candidates:
        if not uid.is_encapsulated:  # native pixel data: pydicom reads it itself
            usable.append(uid)
            continue
        try:
            if get_decoder(uid).is_available:
                usable.append(uid)
        except NotImplementedError:
            continue
    return tuple(usable)


#: Transfer syntaxes accepted for the storage SOP classes, in the receiver's order of preference.
#: Only those pydicom can decode with the installed plugins (pylibjpeg-libjpeg, -openjpeg, -rle)
#: are offered, so everything acknowledged can later be analysed.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = _decodable(
    (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLossless,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        HTJ2K,
        RLELossless,
        ExplicitVRBigEndian,  # retired, still sent by some old modalities; pydicom reads it
    )
)

#: Verification is offered in the uncompressed syntaxes only (there is no data set to compress).
VERIFICATION_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
