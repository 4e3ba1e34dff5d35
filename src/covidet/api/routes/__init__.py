"""One router per resource; :mod:`covidet.api.app` mounts them under ``/api/v1``."""
