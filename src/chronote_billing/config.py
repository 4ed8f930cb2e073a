"""Settings read from the environment, one place for every knob the service has."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from chronote_billing.core.errors import ValidationFailed

DEFAULT_SQLITE_PATH = Path("var") / "chronote.db"


def normalize_database_url(url: str) -> str:
    """Accept the URL forms people paste and give SQLAlchemy the psycopg 3 driver; unset or
    empty means the embedded SQLite database."""
    url = url.strip()
    if not url:
        return f"sqlite:///{DEFAULT_SQLITE_PATH}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return _multi_host_as_query(url)


def _multi_host_as_query(url: str) -> str:
    """libpq's multi-host form, ``postgresql://user@db1:5432,db2:5432/chronote?...`` (a primary
    and its standbys, decision 0050), in the form SQLAlchemy parses:
    ``postgresql+psycopg://user@/chronote?host=db1:5432&host=db2:5432&...``."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return url
    database, question, query = path.partition("?")
    host_params = "&".join(f"host={quote(host, safe=':[]')}" for host in hosts.split(",") if host)
    query = host_params + ("&" + query if query else "")
    return f"{scheme}://{userinfo}{at}/{database}?{query}"


def _whole(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValidationFailed(f"{name} must be a whole number of days, 1 or more.", field=name)
    return int(raw)


@dataclass(frozen=True)
class Settings:
    database_url: str = field(
        default_factory=lambda: normalize_database_url(
            os.environ.get("CHRONOTE_DATABASE_URL", f"sqlite:///{DEFAULT_SQLITE_PATH}")
        )
    )
    stripe_api_base: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_STRIPE_API_BASE", "http://127.0.0.1:12111")
    )
    stripe_secret_key: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_STRIPE_SECRET_KEY", "sk_test_chronote_local")
    )
    stripe_webhook_secret: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_STRIPE_WEBHOOK_SECRET", "whsec_chronote_local")
    )
    public_base_url: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_PUBLIC_BASE_URL", "http://127.0.0.1:8000")
    )
    session_secret: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_SESSION_SECRET", "dev-only-change-me")
    )
    discord_client_id: str = field(default_factory=lambda: os.environ.get("CHRONOTE_DISCORD_CLIENT_ID", ""))
    discord_client_secret: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_DISCORD_CLIENT_SECRET", "")
    )
    discord_api_base: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_DISCORD_API_BASE", "https://discord.com/api")
    )
    # Demo mode lets a person pick a demo Discord identity in the portal instead of OAuth;
    # it is on only for `make run` and never when a Discord client id is configured.
    demo_mode: bool = field(default_factory=lambda: os.environ.get("CHRONOTE_DEMO_MODE", "") == "1")
    # Stripe Tax on every checkout (decision 0043); needs Stripe Tax active in the dashboard.
    stripe_automatic_tax: bool = field(
        default_factory=lambda: os.environ.get("CHRONOTE_STRIPE_TAX", "") == "1"
    )
    # Organizations and servers buy as businesses: billing address required, tax ID collected.
    business_tax_ids: bool = field(
        default_factory=lambda: os.environ.get("CHRONOTE_BUSINESS_TAX_IDS", "") == "1"
    )
    chronote_webhook_url: str = field(default_factory=lambda: os.environ.get("CHRONOTE_WEBHOOK_URL", ""))
    chronote_webhook_secret: str = field(
        default_factory=lambda: os.environ.get("CHRONOTE_WEBHOOK_SECRET", "whsec_chronote_outbound_local")
    )

    # Bearer token of /metrics (decision 0036); empty: /metrics is off.
    metrics_token: str = field(default_factory=lambda: os.environ.get("CHRONOTE_METRICS_TOKEN", ""))
    # Days delivered notifications and non-money idempotency records are kept (decision 0037).
    retention_days: int = field(default_factory=lambda: _whole("CHRONOTE_RETENTION_DAYS", 30))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def get_settings() -> Settings:
    return Settings()
