"""Image input: read chest X-rays (DICOM, PNG, JPEG) into display-ready grayscale arrays.

The package's public names are exactly those of :mod:`covidet.imaging.reader` (one list, there).
"""

from covidet.imaging.reader import *  # noqa: F403
from covidet.imaging.reader import __all__ as __all__
