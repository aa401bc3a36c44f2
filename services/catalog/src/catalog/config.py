"""Settings of the catalog service (`SHINCHOKU_CATALOG_*`)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shinchoku_runtime.settings import ServiceSettings


class CatalogSettings(ServiceSettings):
    """Where the catalog keeps its registry and how it reaches NATS."""

    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_CATALOG_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    port: int = 8001

    def resolved_database_url(self) -> str:
        """The configured URL, or the SQLite file `data_dir/db/catalog.sqlite`."""
        return self.database_url or self.sqlite_default("catalog")
