"""Builders the tests share: Discord-style ids and idempotency keys, API keys and the headers that
carry them, credits granted to an account, a free local port, and the billing environment
against the Stripe stand-in (``Billing``, started by ``billing_environment``).

A helper lives here once two test files need it; a helper one file needs stays in that file.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.ledger.service import LedgerService
from chronote_billing.plans.service import current_plan
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_stripe_local.server import TEST_SECRET_KEY
from chronote_stripe_local.testing import StripeLocalHarness

DAY = 86400


def snowflake() -> str:
    """A random Discord-style id, so every test owns its accounts."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


def new_key() -> str:
    """A fresh idempotency key."""
    return "k-" + secrets.token_hex(6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- API keys


def api_key(c: Container, *scopes: str, label: str = "test") -> str:
    """A new API key with these scopes; its secret."""
    return c.db.write(lambda s: c.api_keys.create(s, label, list(scopes)).secret)


def api_headers(
    secret: str,
    user: str | None = None,
    guilds: str | None = None,
    idem: str | bool | None = None,
    **extra: str,
) -> dict[str, str]:
    """The headers of an API call: the key, the acting person and the servers they manage, and an
    Idempotency-Key (``idem``: that key, ``True`` for a fresh one, none when left out)."""
    headers = {"Authorization": f"Bearer {secret}", **extra}
    if user:
        headers["Chronote-Acting-User"] = user
    if guilds:
        headers["Chronote-Manage-Guilds"] = guilds
    if idem:
        headers["Idempotency-Key"] = new_key() if idem is True else idem
    return headers


# ---------------------------------------------------------------------------- credits


def grant(db: Database, ledger: LedgerService, account: str, amount: int, key: str, **kw: Any) -> Any:
    """Credits granted to an account (a promotional grant by an admin unless told otherwise)."""
    kw.setdefault("source", "promotional")
    kw.setdefault("cause_type", "admin")
    return db.write(
        lambda s: ledger.issue_grant(s, account_id=account, amount=amount, idempotency_key=key, **kw)
    )


# ---------------------------------------------------------------------------- billing with Stripe


class Billing:
    def __init__(self, harness: StripeLocalHarness, db, clock, make_account) -> None:  # type: ignore[no-untyped-def]
        self.harness = harness
        self.db = db
        self.clock = clock
        self.make_account = make_account
        settings = Settings(
            stripe_api_base=harness.url,
            stripe_secret_key=TEST_SECRET_KEY,
            stripe_webhook_secret=harness.webhook_secret,
            public_base_url="http://billing.test",
        )
        self.container = Container(db=db, clock=clock, settings=settings)
        self.service = self.container.billing
        self.app = TestClient(create_app(self.container))
        self.deliveries: list[int] = []
        harness.send_webhooks_to(self._deliver)
        self.sync_clock()

    def _deliver(self, payload: bytes, headers: dict[str, str]) -> int:
        response = self.app.post("/webhooks/stripe", content=payload, headers=headers)
        self.deliveries.append(response.status_code)
        return response.status_code

    def sync_clock(self, to: int | None = None) -> None:
        """Business time follows Stripe's time (the stand-in's, or a test clock's)."""
        with self.harness.stand_in.engine.store.lock:
            now = to if to is not None else self.harness.stand_in.engine.store.global_now()
        self.clock.set(datetime.fromtimestamp(now, tz=UTC))

    def person(self, kind: str = "personal") -> tuple[str, Principal]:
        account_id = self.make_account(kind)
        owner = self.db.read(lambda s: s.get(BillingAccount, account_id).owner_ref)
        if kind == "personal":
            return account_id, Principal(kind="person", user_id=owner)
        if kind == "server":
            return account_id, Principal(
                kind="person", user_id="100000000000000001", managed_guilds=frozenset({owner})
            )
        return account_id, Principal(kind="service", scopes=frozenset({"operator"}))

    def on_test_clock(self, account_id: str) -> str:
        """Attach the account to a new customer on a Stripe test clock (before its first purchase)."""
        clock = self.harness.client.v1.test_helpers.test_clocks.create(
            {"frozen_time": int(self.clock.now().timestamp())}
        )
        account = self.db.read(lambda s: s.get(BillingAccount, account_id))
        from chronote_billing.stripe_sync.metadata import account_metadata

        customer = self.harness.client.v1.customers.create(
            {"name": account.display_name, "metadata": account_metadata(account), "test_clock": clock.id}
        )

        def link(session):  # type: ignore[no-untyped-def]
            session.get(BillingAccount, account_id).stripe_customer_id = customer.id

        self.db.write(link)
        return str(clock.id)

    def advance(self, clock_id: str, seconds: int) -> None:
        current = int(self.harness.client.v1.test_helpers.test_clocks.retrieve(clock_id).frozen_time)
        self.sync_clock(current + seconds)
        self.harness.advance_clock(clock_id, to=current + seconds)
        self.harness.wait_for_webhooks()

    def buy_plan(
        self, account_id: str, principal: Principal, plan: str, card: str = "4242424242424242"
    ) -> str:
        view = self.service.start_checkout(principal, account_id, idempotency_key=f"buy-{plan}", plan_id=plan)
        response = self.harness.pay_checkout(view.url, card=card)
        assert response.status_code == 303, response.text
        self.harness.wait_for_webhooks()
        return view.id

    def plan(self, account_id: str) -> str | None:
        def work(session):  # type: ignore[no-untyped-def]
            plan = current_plan(
                session, session.get(BillingAccount, account_id), self.clock.now(), self.container.catalog
            )
            return plan.id if plan else None

        return self.db.read(work)

    def grants(self, account_id: str) -> list:
        return self.db.read(lambda s: self.container.ledger.list_grants(s, account_id))

    def balance(self, account_id: str):  # type: ignore[no-untyped-def]
        return self.db.read(lambda s: self.container.ledger.balance(s, account_id))


def billing_environment(
    stripe_local: StripeLocalHarness,
    db: Database,
    clock: ManualClock,
    make_account: Callable[..., str],
    *,
    webhooks_must_succeed: bool = False,
) -> Iterator[Billing]:
    """What a ``billing`` fixture yields: the environment with the catalog synced to Stripe;
    afterwards webhooks stop, and (``webhooks_must_succeed``) every delivery must have been a 200."""
    env = Billing(stripe_local, db, clock, make_account)
    sync_catalog(env.service.client)
    yield env
    stripe_local.send_webhooks_to(None)
    if webhooks_must_succeed:
        assert all(status == 200 for status in env.deliveries), env.deliveries
