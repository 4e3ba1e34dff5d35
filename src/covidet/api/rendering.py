"""An X-ray as a PNG for the browser: the default display's grey levels, re-windowed and shrunk on
request (``GET /api/v1/images/{id}/pixels.png``).

Uses :func:`covidet.imaging.read_image` only: no torch in the API.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from covidet.imaging.reader import read_image

__all__ = ["render_png"]


def render_png(
    path: Path,
    *,
    window_center: float | None = None,
    window_width: float | None = None,
    max_size: int | None = None,
) -> bytes:
    """The X-ray at ``path`` as an 8-bit grayscale PNG.

    The image is first rendered as :func:`covidet.imaging.read_image` displays it (DICOM modality and
    VOI LUT or the file's window, MONOCHROME1 inverted), as grey levels 0-255. ``window_center`` and
    ``window_width`` then re-window those grey levels (default 127.5 and 255: unchanged), e.g. center
    100, width 120 to stretch the lungs' contrast. ``max_size`` shrinks the longer side to at most
    that many pixels (aspect kept), for thumbnails.

    Raises:
        ImageReadError: the stored file cannot be read.
    """
    xray = read_image(path, name=path.name)
    grey = xray.pixels.astype(np.float32) * 255.0
    if window_center is not None or window_width is not None:
        center = 127.5 if window_center is None else window_center
        width = 255.0 if window_width is None else window_width
        grey = (grey - (center - width / 2.0)) / width * 255.0
    picture = PILImage.fromarray(np.round(np.clip(grey, 0.0, 255.0)).astype(np.uint8))  # 2-D uint8: mode L
    if max_size is not None and max(picture.size) > max_size:
        picture.thumbnail((max_size, max_size), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # speed over size: it is sent once per view
    return buffer.getvalue()
