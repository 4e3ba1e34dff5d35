"""The content-addressed image store moved to :mod:`covidet.store.files` (the store owns what is kept:
rows and files). This path keeps working for the code and scripts that import it."""

from covidet.store.files import ImageStore, StoredFile

__all__ = ["ImageStore", "StoredFile"]
