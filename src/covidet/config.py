"""One settings object for covidet (pydantic-settings).

Precedence, lowest first: defaults < config file (TOML, path in ``$COVIDET_CONFIG``) < ``COVIDET_*``
environment variables < command-line options (passed to :func:`get_settings` as overrides).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["CONFIG_ENV_VAR", "PLACEHOLDER_SECRETS", "Settings", "get_settings"]

logger = logging.getLogger(__name__)

CONFIG_ENV_VAR = "COVIDET_CONFIG"

#: Values of ``secret_key`` that are refused in production: example values copied from documentation.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "change_me", "changethis", "secret", "secret-key", "placeholder", "covidet"}
)
#: Shortest ``secret_key`` accepted in production (characters); ``secrets.token_urlsafe(32)`` has 43.
MIN_SECRET_LENGTH = 32


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
    backend: str = Field(
        "auto",
        pattern="^(auto|torch|onnxruntime|openvino)$",
        description="inference engine: 'auto' (the fastest accelerated variant that passed the parity check "
        "recorded in the model card and whose artefacts are present, else torch), 'torch', 'onnxruntime' "
        "or 'openvino' (falls back to torch with a warning when the runtime is missing); see "
        "docs/inference.md",
    )
    log_level: str = Field("INFO", description="logging level: DEBUG, INFO, WARNING, ERROR")

    # --- store -------------------------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db; default: SQLite file "
        "<home>/covidet.db",
    )
    db_pool_size: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="database connections one process may hold at once; default: what it serves at once "
        "(dicom_max_associations + 40 API threads + analysis_workers + 4 for the MQTT writer, re-triage, "
        "audit writer and a spare; covidet.store.db.pool_size_for). With PostgreSQL keep the sum over "
        "covidet's processes under the server's max_connections",
    )
    db_pool_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="seconds a request waits for a free database connection before it is refused as "
        "busy (HTTP 503 with Retry-After, DICOM 0xA700); below dicom_network_timeout so the modality "
        "gets an answer",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=1,
        le=600,
        description="on SIGTERM/SIGINT, how long `covidet serve` lets work in progress finish (HTTP "
        "requests, C-STOREs, the MQTT batch, analysis) before it exits anyway (exit code 0); what was "
        "not acknowledged is re-sent by its sender, queued images stay queued (docs/load.md)",
    )
    # --- ingest ------------------------------------------------------------------------------------
    ae_title: str = Field("COVIDET", max_length=16, description="called AE title of the DICOM receiver")
    # DICOM receiver hardening (docs/dicom.md, docs/security-dicom.md)
    dicom_max_associations: int = Field(
        32,
        ge=1,
        le=1000,
        description="accepted DICOM associations served at once; silent connections do not count; over "
        "the limit a request is rejected-transient (local limit exceeded)",
    )
    dicom_acse_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="seconds a new DICOM connection may take (TLS handshake, association request) before "
        "it is dropped",
    )
    dicom_network_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds an open DICOM association may stay silent before it is aborted",
    )
    dicom_tls_cert: Path | None = Field(None, description="serve DICOM over TLS with this certificate (PEM)")
    dicom_tls_key: Path | None = Field(None, description="private key of dicom_tls_cert (PEM)")
    dicom_tls_ca: Path | None = Field(
        None,
        description="CA certificate(s) (PEM): DICOM TLS clients must present a certificate it signed",
    )
    dicom_peer_addresses: dict[str, list[str]] = Field(
        default_factory=dict,
        description="AE title -> the addresses or networks it may call from, e.g. "
        'COVIDET_DICOM_PEER_ADDRESSES=\'{"XRAY1": ["10.0.0.5", "10.1.0.0/24"]}\'; AE titles not listed '
        "may call from anywhere",
    )
    # DICOM Query/Retrieve SCP (docs/dicom.md "Query/Retrieve")
    dicom_move_destinations: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="C-MOVE destinations: AE title -> host:port, e.g. "
        "COVIDET_DICOM_MOVE_DESTINATIONS='VIEWER=127.0.0.1:11113,PACS=pacs.local:104' (or a JSON object, "
        "or a TOML table); a C-MOVE to any other AE title is refused (0xA801)",
    )
    dicom_qr_max_matches: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="most C-FIND matches one query may return; a query matching more is refused "
        "(0xA700) with an Error Comment asking for narrower keys",
    )
    dicom_qr_max_instances: int = Field(
        10_000,
        ge=1,
        le=65_535,
        description="most instances one C-GET or C-MOVE may send; a retrieve matching more is refused "
        "(0xA702) before anything is sent",
    )
    max_image_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="largest accepted image file or DICOM object, bytes"
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="largest accepted image, pixels (rows x columns x frames)"
    )
    max_decode_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1,
        description="largest memory one image's decode may cost, bytes, estimated from its header "
        "(covidet.imaging.decode_budget; a 4096 x 4096 16-bit DICOM needs about 369 MB)",
    )
    mqtt_broker_host: str = Field("127.0.0.1", description="MQTT broker host of the vitals subscriber")
    mqtt_broker_port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    mqtt_username: str | None = Field(None, description="MQTT user of the covidet vitals subscriber")
    mqtt_password: str | None = Field(None, description="MQTT password of the covidet vitals subscriber")
    mqtt_tls_ca: Path | None = Field(None, description="CA certificate file: connect to the broker over TLS")
    mqtt_client_id: str = Field(
        "covidet-ingest", description="MQTT client id; fixed so the broker keeps the QoS-1 session"
    )
    mqtt_max_payload_bytes: int = Field(
        16 * 1024,
        ge=256,
        le=64 * 1024 * 1024,
        description="largest vitals payload, bytes: the broker's message_size_limit in the generated "
        "Mosquitto configuration, and the subscriber refuses a larger one on arrival (docs/mqtt.md)",
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
    analysis_batch_size: int = Field(
        4,
        ge=1,
        le=64,
        description="most waiting images an in-process analysis thread runs through the detector together "
        "(same-size images share forward passes; an idle queue never waits to fill a batch); 1 turns "
        "batching off",
    )
    analysis_max_attempts: int = Field(
        3, ge=1, le=20, description="tries per image before it is marked failed"
    )
    analysis_retry_seconds: float = Field(
        2.0, ge=0, description="first retry delay, seconds; doubled after each failed attempt"
    )
    # --- accounts and security ----------------------------------------------------------------------
    environment: Literal["development", "production"] = Field(
        "development",
        description="'production' refuses to start without a real secret_key; 'development' generates one "
        "and keeps it in <home>/secret_key (mode 0600)",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="server secret (at least 32 characters in production) that keys the pseudonyms of "
        "training exports; generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
    )
    session_minutes: int = Field(
        480, ge=1, le=7 * 24 * 60, description="lifetime of a browser session cookie, minutes (absolute)"
    )
    token_days: int = Field(
        30, ge=1, le=3650, description="lifetime of a bearer token from POST /api/v1/auth/token, days"
    )
    # --- HTTP hardening (docs/security-web.md) ------------------------------------------------------------
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="largest request body of the web app and API other than an image upload (JSON, forms), "
        "bytes; a larger one is refused with 413 before or while it is read (uploads: max_image_bytes)",
    )
    login_max_failures: int = Field(
        10, ge=1, description="failed sign-ins of one username within login_window_seconds before it's locked"
    )
    login_max_failures_per_address: int = Field(
        50,
        ge=1,
        description="failed sign-ins from one client address within login_window_seconds before it "
        "is locked (behind a proxy, the proxy's address unless uvicorn trusts its forwarded headers)",
    )
    login_window_seconds: int = Field(
        900,
        ge=1,
        description="window of the sign-in throttle, seconds: a locked username or address is "
        "refused (429, Retry-After) until its oldest counted failure is this old",
    )
    hsts_seconds: int = Field(
        31_536_000,
        ge=0,
        description="max-age of Strict-Transport-Security, sent on HTTPS answers only "
        "(uvicorn --ssl-certfile, or X-Forwarded-Proto from a trusted proxy); 0: not sent",
    )
    triage_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="overrides of the triage table's thresholds (field names of "
        "covidet.assessment.triage.TriageThresholds, docs/triage.md), e.g. "
        "COVIDET_TRIAGE_THRESHOLDS='{\"window_minutes\": 60}' or a [triage_thresholds] TOML table",
    )
    # --- reports out ------------------------------------------------------------------------------------
    pacs_host: str | None = Field(None, description="forward DICOM reports to this PACS host (C-STORE)")
    pacs_port: int = Field(104, ge=1, le=65535, description="PACS port")
    pacs_ae_title: str = Field("PACS", max_length=16, description="called AE title of the PACS")

    @field_validator("dicom_move_destinations", mode="before")
    @classmethod
    def _parse_move_destinations(cls, value: Any) -> Any:
        """``AE=host:port,AE2=host:port`` (or a JSON object, or a mapping) -> {AE: "host:port"}; every
        entry checked here, so a typo stops the start instead of a C-MOVE."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                value = json.loads(text)
            else:
                value = dict(part.partition("=")[::2] for part in text.split(",") if part.strip())
        if not isinstance(value, dict):
            raise ValueError("dicom_move_destinations must be AE=host:port pairs separated by commas")
        checked: dict[str, str] = {}
        for ae_title, address in value.items():
            ae, where = str(ae_title).strip(), str(address).strip()
            host, _, port = where.rpartition(":")
            if not ae or len(ae) > 16 or not ae.isascii() or "\\" in ae:
                raise ValueError(f"move destination AE title {ae!r} must be 1-16 ASCII characters")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"move destination {ae}: {where!r} is not host:port")
            checked[ae] = f"{host.strip('[]')}:{int(port)}"
        return checked

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> Settings:
        # Refused at start, before any request: a production server with a guessable secret would issue
        # guessable pseudonyms (see docs/api.md), and the operator learns of it when it matters least.
        if self.environment == "production":
            value = self.secret_key.get_secret_value().strip() if self.secret_key else ""
            if not value:
                raise ValueError("secret_key is required when environment is production (COVIDET_SECRET_KEY)")
            if value.lower() in PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH:
                raise ValueError(
                    "secret_key looks like a placeholder: use at least "
                    f"{MIN_SECRET_LENGTH} random characters in production"
                )
        return self

    def resolved_secret_key(self) -> str:
        """``secret_key``, or in development the one kept in ``<home>/secret_key`` (created on first use,
        mode 0600, so that pseudonyms stay stable across restarts)."""
        if self.secret_key is not None and self.secret_key.get_secret_value().strip():
            return self.secret_key.get_secret_value().strip()
        if self.environment == "production":  # unreachable after validation; kept for safety
            raise ValueError("secret_key is required when environment is production")
        path = self.home_dir / "secret_key"
        try:
            kept = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            kept = ""
        if kept:
            return kept
        path.unlink(missing_ok=True)  # an empty file left by a crash between create and write
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the home: owner only
        value = secrets.token_urlsafe(32)
        try:
            # O_EXCL: two processes starting together agree on whichever file was created first.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text(encoding="ascii").strip()
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(value + "\n")
        logger.warning("development secret_key generated in %s (set COVIDET_SECRET_KEY in production)", path)
        return value

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
