"""Demo data for `make run`: a few users, servers and one organization with grants and history.

Loading is idempotent: every write uses a fixed idempotency key, so a restart loads nothing new.
"""

from __future__ import annotations

from datetime import timedelta

from chronote_billing.container import Container

DEMO_USERS = {
    "ada": ("100000000000000001", "Ada"),
    "ben": ("100000000000000002", "Ben"),
    "cy": ("100000000000000003", "Cy"),
}
DEMO_SERVERS = {"study": ("200000000000000001", "Study Hall"), "guild": ("200000000000000002", "Acme Guild")}


def load(c: Container) -> str:
    now = c.clock.now()

    def work(session):  # type: ignore[no-untyped-def]
        created = []
        for _key, (uid, name) in DEMO_USERS.items():
            created.append(c.accounts.get_or_create(session, "personal", uid, name))
        for _key, (gid, name) in DEMO_SERVERS.items():
            created.append(c.accounts.get_or_create(session, "server", gid, name))
        ada = created[0]
        c.ledger.issue_grant(
            session,
            account_id=ada.id,
            amount=50_000,
            source="promotional",
            idempotency_key="demo-ada-welcome",
            cause_type="admin",
            cause_id="demo",
            expires_at=now + timedelta(days=90),
            description="Welcome credits",
        )
        hold = c.ledger.place_hold(
            session,
            account_id=ada.id,
            amount=30_000,
            expires_at=now + timedelta(hours=2),
            idempotency_key="demo-ada-hold-1",
            reason="Desktop recording (demo)",
        )
        if hold.status == "open":
            c.ledger.capture_hold(
                session, hold_id=hold.id, amount=23_000, idempotency_key="demo-ada-capture-1"
            )
        return len(created)

    count = c.db.write(work)
    return f"demo data ready: {count} accounts"


def start_side_services(c: Container, host: str, port: int, stripe_port: int) -> None:
    """Start what the demo needs beside the API (the local Stripe stand-in)."""
    from chronote_billing.stripe_local.server import start_in_thread

    stand_in = start_in_thread(
        host=host,
        port=stripe_port,
        webhook_url=f"http://{host}:{port}/webhooks/stripe",
        webhook_secret=c.settings.stripe_webhook_secret,
    )
    print(f"local Stripe: {stand_in.url} (webhooks to http://{host}:{port}/webhooks/stripe)")
