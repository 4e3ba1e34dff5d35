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
