"""covidet: early assessment of Covid-19 from chest X-rays in an IoMT deployment.

Research software, **not for clinical use** until validated.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("covidet")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

DISCLAIMER = "not for clinical use"

__all__ = ["DISCLAIMER", "__version__"]
