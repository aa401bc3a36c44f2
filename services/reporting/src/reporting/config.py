"""Settings of the reporting service (environment prefix `SHINCHOKU_REPORTING_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from contracts.periods import FiscalQuarter
from reporting.alerts.service import AlertSettings
from shinchoku_runtime.settings import ServiceSettings


class ReportingSettings(ServiceSettings):
    """Read from `SHINCHOKU_REPORTING_*` variables, e.g. `SHINCHOKU_REPORTING_DATABASE_URL`."""

    model_config = SettingsConfigDict(
        env_prefix="SHINCHOKU_REPORTING_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    port: int = 8003
    nats_user: str | None = "reporting"
    batch_size: int = Field(default=1000, ge=1, le=10_000, description="Messages asked for by each pull request")
    max_rows_per_transaction: int = Field(
        default=4000, ge=1, description="Queued batches are merged into one transaction up to this many events"
    )
    max_ack_pending: int = Field(default=20_000, ge=100, description="Consumer's max_ack_pending (durable config)")
    ack_wait: float = Field(
        default=30.0, gt=0, description="Seconds before an unacknowledged message is redelivered (consumer config)"
    )
    retry_delay: float = Field(
        default=2.0, gt=0, description="Seconds before a batch that hit a database fault is retried (in place)"
    )
    hold_delay: float = Field(
        default=60.0,
        gt=0,
        description="Seconds before an ACCEPTED message this version cannot decode comes back (held, never dropped)",
    )
    writer_processes: int = Field(
        default=1,
        ge=0,
        le=1,
        description="1: decode and write batches in a child process (a second core); 0: in a thread of this one",
    )
    dashboard_session_secret: SecretStr | None = Field(
        default=None,
        description="Key signing the dashboard's session cookies, the same on every replica "
        "(unset: generated once in DATA_DIR/auth/dashboard-session.key, 0600)",
    )
    dashboard_session_ttl: int = Field(
        default=8 * 3600, ge=60, le=7 * 24 * 3600, description="Seconds a dashboard sign-in lasts at most"
    )
    dashboard_cookie_secure: Literal["auto", "always"] = Field(
        default="auto",
        description="auto: cookies are Secure when the request came over https (behind a TLS proxy, let the "
        "server trust its X-Forwarded-Proto); always: Secure whatever the scheme",
    )
    dashboard_oidc_client_id: str | None = Field(
        default=None,
        description="The dashboard's client at the identity provider (SHINCHOKU_AUTH_ISSUER, mode oidc): "
        "enables sign-in with the authorization-code flow and PKCE",
    )
    dashboard_oidc_client_secret: SecretStr | None = Field(
        default=None, description="Its secret, for a confidential client (a public client relies on PKCE alone)"
    )
    dashboard_oidc_scope: str = Field(default="openid profile", description="Scopes asked of the provider")
    dashboard_public_url: str | None = Field(
        default=None,
        description="The dashboard's base URL as browsers reach it (https://…); the OIDC redirect URI is "
        "PUBLIC_URL/dashboard/auth/callback. Unset: the request's own base URL",
    )
    ingest_url: str = Field(
        default="http://127.0.0.1:8002",
        description="Ingest's HTTP base URL as a browser reaches it: the dashboard links each event id there",
    )

    alert_due_days: int = Field(
        default=14, ge=0, le=90, description="report_due fires this many days before a quarter's on-time deadline"
    )
    alert_tick_seconds: float = Field(
        default=30.0, gt=0, description="Alerts are evaluated on the clock this often (and whenever the store changes)"
    )
    alerts_since: str | None = Field(
        default=None,
        description="First quarter report_due, report_missing and stale look at (e.g. FY2024Q1); default: the "
        "earliest quarter any report is for, but not before the quarter before the first live (not backfilled) "
        "report was received: history older than the platform raises no report_missing",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Post each alert raised and resolved here (JSON {text}: Slack-compatible and Teams incoming webhooks)",
    )
    alert_clock: AwareDatetime | None = Field(
        default=None,
        description="Evaluate the alerts as of this fixed moment (a demo or a test of a past quarter); default: now",
    )
    alert_min_interval: float = Field(default=1.0, ge=0, description="Least seconds between two alert evaluations")
    alert_full_every_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Evaluate every measure's alerts at least this often (a change is evaluated for the measures it "
        "touched; every measure at start and when the Asia/Tokyo date changes)",
    )
    alert_webhook_first_retry: float = Field(default=0.5, gt=0, description="Seconds before the first webhook retry")
    alert_webhook_max_retry: float = Field(default=300.0, gt=0, description="Longest wait between webhook retries")

    def alert_settings(self) -> AlertSettings:
        return AlertSettings(
            due_days=self.alert_due_days,
            tick_seconds=self.alert_tick_seconds,
            since=FiscalQuarter.parse(self.alerts_since) if self.alerts_since else None,
            webhook_url=self.alert_webhook_url,
            webhook_first_retry=self.alert_webhook_first_retry,
            webhook_max_retry=self.alert_webhook_max_retry,
            min_interval=self.alert_min_interval,
            full_every_seconds=self.alert_full_every_seconds,
        )

    def resolved_database_url(self) -> str:
        """The configured URL, or the SQLite file `data_dir/db/reporting.sqlite` (its directory created)."""
        if not self.database_url:
            return self.sqlite_default("reporting")
        if self.database_url.startswith("sqlite:///") and not self.database_url.startswith("sqlite:///:memory:"):
            Path(self.database_url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
        return self.database_url
