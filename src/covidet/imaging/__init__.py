"""Image input: read chest X-rays (DICOM, PNG, JPEG) into display-ready grayscale arrays."""

from covidet.imaging.reader import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    ImageReadError,
    XRayImage,
    inspect_image,
    read_image,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageHeader",
    "ImageReadError",
    "XRayImage",
    "inspect_image",
    "read_image",
]
