"""The API tests' fixtures (an app over a fresh database of each backend, users admin, rad, rad2)."""

from tests.api.conftest import api_env, sqlite_env  # noqa: F401  (pytest finds fixtures by name)
