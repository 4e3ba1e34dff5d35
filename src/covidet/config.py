"""One settings object for covidet (pydantic-settings).

Precedence, lowest first: defaults < config file (TOML, path in ``$COVIDET_CONFIG``) < ``COVIDET_*``
environment variables < command-line options (passed to :func:`get_settings` as overrides).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["CONFIG_ENV_VAR", "Settings", "get_settings"]

CONFIG_ENV_VAR = "COVIDET_CONFIG"


class Settings(BaseSettings):
    """covidet's settings. Each field is also the environment variable ``COVIDET_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="COVIDET_", extra="ignore")

    home: Path = Field(Path("~/.covidet"), description="folder of the SQLite database and image store")
    data: Path | None = Field(
        None, description="dataset folder (manifest.csv) or COCO JSON for train/evaluate"
    )
    model: Path | None = Field(None, description="model bundle folder; default: the shipped bundle")
    device: str = Field("cpu", description="torch device for inference: cpu, cuda, cuda:N")
    threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads; default: torch's choice")
    log_level: str = Field("INFO", description="logging level: DEBUG, INFO, WARNING, ERROR")

    # --- store -------------------------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db; default: SQLite file "
        "<home>/covidet.db",
    )
    # --- ingest ------------------------------------------------------------------------------------
    ae_title: str = Field("COVIDET", max_length=16, description="called AE title of the DICOM receiver")
    max_image_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="largest accepted image file or DICOM object, bytes"
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="largest accepted image, pixels (rows x columns x frames)"
    )
    mqtt_broker_host: str = Field("127.0.0.1", description="MQTT broker host of the vitals subscriber")
    mqtt_broker_port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    mqtt_username: str | None = Field(None, description="MQTT user of the covidet vitals subscriber")
    mqtt_password: str | None = Field(None, description="MQTT password of the covidet vitals subscriber")
    mqtt_tls_ca: Path | None = Field(None, description="CA certificate file: connect to the broker over TLS")
    mqtt_client_id: str = Field(
        "covidet-ingest", description="MQTT client id; fixed so the broker keeps the QoS-1 session"
    )
    mosquitto_dir: Path | None = Field(
        None,
        description="where `devices add` writes Mosquitto's password and ACL files; default <home>/mosquitto",
    )

    # --- analysis worker ----------------------------------------------------------------------------
    queue: str = Field(
        "inprocess",
        pattern="^(inprocess|celery)$",
        description="where accepted images are analysed: 'inprocess' (threads of the receiving process) "
        "or 'celery' (`covidet worker` processes over Redis)",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL of the Celery broker and events"
    )
    celery_visibility_timeout: int = Field(
        300, ge=1, description="seconds before Redis re-delivers the job of a worker that died (Celery)"
    )
    analysis_workers: int = Field(1, ge=1, le=64, description="in-process analysis threads")
    analysis_max_attempts: int = Field(
        3, ge=1, le=20, description="tries per image before it is marked failed"
    )
    analysis_retry_seconds: float = Field(
        2.0, ge=0, description="first retry delay, seconds; doubled after each failed attempt"
    )
    # --- reports out ------------------------------------------------------------------------------------
    pacs_host: str | None = Field(None, description="forward DICOM reports to this PACS host (C-STORE)")
    pacs_port: int = Field(104, ge=1, le=65535, description="PACS port")
    pacs_ae_title: str = Field("PACS", max_length=16, description="called AE title of the PACS")

    @property
    def home_dir(self) -> Path:
        """``home`` with ``~`` expanded."""
        return self.home.expanduser()

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file in ``home``."""
        return self.database_url or f"sqlite:///{self.home_dir / 'covidet.db'}"

    @property
    def image_store_dir(self) -> Path:
        """Folder of the content-addressed image store."""
        return self.home_dir / "images"

    @property
    def resolved_mosquitto_dir(self) -> Path:
        return (self.mosquitto_dir or self.home_dir / "mosquitto").expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV_VAR)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def get_settings(**overrides: Any) -> Settings:
    """Settings with command-line ``overrides`` (``None`` values are ignored: option not given)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
