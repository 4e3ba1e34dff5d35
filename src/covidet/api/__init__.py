"""covidet's HTTP API (FastAPI): device upload of X-rays, health, and later the worklist.

The API never imports torch: analysis happens in the worker, behind the queue.
"""

from covidet.api.app import API_PREFIX, create_app

__all__ = ["API_PREFIX", "create_app"]
