"""The grayscale display transform of a decoded DICOM frame: Modality LUT, then VOI, scaled to [0, 1].

Shared by :func:`covidet.imaging.reader.read_image` (the whole frame) and the acceptance check of
:mod:`covidet.imaging.validate` (a small crop, so that a malformed LUT or window is found before an
image is acknowledged, at the cost of a few pixels instead of the whole frame).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

__all__ = ["grayscale_display", "has_voi_lut"]


def has_voi_lut(ds: Dataset) -> bool:
    """Mirror pydicom's test for a usable VOI LUT Sequence (preferred over windowing)."""
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def grayscale_display(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT then VOI, scaled so that the VOI output range maps to [0, 1] (MONOCHROME2 sense).

    The range used for scaling is: for a VOI LUT Sequence, the min..max of the LUT's entries (some
    writers declare 16 bits per entry but fill only 12); for window centre/width, the output range
    pydicom's windowing maps to (from BitsStored, PixelRepresentation and rescale); without any VOI,
    the min..max of the modality values (no percentile clipping, so synthetic data maps exactly).
    """
    values = apply_modality_lut(arr, ds)
    if has_voi_lut(ds):
        if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)
        values = apply_voi_lut(values, ds)
        desc = ds.VOILUTSequence[0].LUTDescriptor
        probe = np.arange(desc[1], desc[1] + (desc[0] or 2**16), dtype=np.int64)
        lut = apply_voi_lut(probe, ds)
        low, high = float(lut.min()), float(lut.max())
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_voi_lut(values, ds)
        low, high = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
    else:
        low, high = float(np.min(values)), float(np.max(values))
    if high == low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values.astype(np.float64) - low) / (high - low)
