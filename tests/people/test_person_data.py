"""A person's data (decision 0047): the export (API, portal) and the erasure (CLI). After
erasure nothing in the database, the outbox and the stored Stripe events included, contains the
person's id or name; amounts are untouched and `verify` passes."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.cli import output
from chronote_billing.cli.main import app as cli
from chronote_billing.container import Container
from chronote_billing.core import migrate
from chronote_billing.core.db import Database
from chronote_billing.ledger.verify import verify
from chronote_billing.models import metadata
from chronote_billing.people import service as people
from chronote_billing.people.models import Person, PersonErasure
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.usage.schemas import EventRequest, UsageRequest
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import OPERATOR, create_database, snowflake
from tests.factories import Billing, api_headers, api_key, new_key
from tests.portal.test_portal_auth import discord_sign_in
from tests.portal.test_portal_pages import Person as PortalPerson
from tests.portal.test_portal_pages import discord, oauth_settings

__all__ = ["discord"]

NAME = "Quillon Zebedarrow"


@pytest.fixture
def own_db() -> Iterator[Database]:
    """A database of its own: the test reads every row of every table."""
    database = Database(create_database("erasure_" + secrets.token_hex(3)))
    migrate.upgrade(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def billing(stripe_local, own_db, clock) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    def make_account(kind: str = "personal", owner_ref: str | None = None, name: str | None = None) -> str:
        ref = owner_ref or snowflake()
        return own_db.write(lambda s: env.container.accounts.get_or_create(s, kind, ref, name).id)

    env = Billing(stripe_local, own_db, clock, make_account)
    sync_catalog(env.service.client)
    yield env
    stripe_local.send_webhooks_to(None)


def a_life(billing: Billing) -> dict[str, str]:
    """A person who signed in, bought a pack, recorded, joined an organization, spent under its
    authorization, started a server meeting and was declined once."""
    c = billing.container
    user, owner, guild = snowflake(), snowflake(), snowflake()
    c.db.write(lambda s: people.remember(s, user, NAME, c.clock.now()))
    account_id = c.db.write(lambda s: c.accounts.get_or_create(s, "personal", user, NAME).id)
    from chronote_billing.access.service import Principal

    me = Principal(kind="person", user_id=user)
    view = billing.service.start_checkout(me, account_id, idempotency_key=new_key(), pack_id="credits_1000")
    assert billing.harness.pay_checkout(view.url, email="q@example.com", name=NAME).status_code == 303
    billing.harness.wait_for_webhooks()
    personal = UsageRequest(context="personal", capture_source="desktop", user_id=user, requested_minutes=10)
    rec = c.db.write(lambda s: c.usage.start_recording(s, personal, new_key()))
    c.db.write(lambda s: c.usage.finish_recording(s, OPERATOR, rec.id, {"mic": 300}, new_key()))
    org = c.db.write(
        lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Acme", idempotency_key=new_key())
    )
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=org.billing_account_id,
            amount=50_000,
            source="purchase",
            idempotency_key=new_key(),
            cause_type="t",
        )
    )
    c.db.write(
        lambda s: c.orgs.add_member(
            s, actor_user_id=owner, org_id=org.id, user_id=user, role="member", idempotency_key=new_key()
        )
    )
    grant = c.db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=owner,
            org_id=org.id,
            subject_type="member",
            subject_id=user,
            monthly_cap_credits=20,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key=new_key(),
        )
    )
    c.db.write(lambda s: c.usage.set_default_order(s, user, ["personal", grant.id], new_key()))
    ask = EventRequest(
        event_id=new_key(),
        event_type="ask_question",
        context="personal",
        user_id=user,
        funding_source=grant.id,
    )
    c.db.write(lambda s: c.usage.charge_event(s, ask))
    server = UsageRequest(
        context="server",
        capture_source="discord_voice",
        user_id=user,
        guild_id=guild,
        requested_minutes=5,
        meeting_id=new_key(),
    )
    meeting = c.db.write(lambda s: c.usage.start_recording(s, server, new_key()))
    c.db.write(lambda s: c.usage.finish_recording(s, OPERATOR, meeting.id, {"voice": 120}, new_key()))
    too_long = UsageRequest(
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=600,
        funding_source=grant.id,
    )
    from chronote_billing.usage.service import UsageDeclined, write_or_record_decline

    with pytest.raises(UsageDeclined):
        write_or_record_decline(c.db, c.usage, lambda s: c.usage.start_recording(s, too_long, new_key()))
    c.db.write(
        lambda s: c.notifications.set_auto_recharge(
            s,
            account_id=account_id,
            enabled=True,
            threshold_credits=10,
            pack_id="credits_1000",
            idempotency_key=new_key(),
            monthly_limit_count=1,
        )
    )
    return {"user": user, "account": account_id, "org": org.id}


def every_value(db: Database) -> str:
    """Every row of every table, as text."""
    parts = []
    with db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(table.select()):
                parts.append(f"{table.name}: {tuple(row)!r}")
        parts += [str(r) for r in conn.execute(text("select * from alembic_version"))]
    return "\n".join(parts)


def test_the_export_has_everything_kept_about_the_person_and_is_theirs_only(billing: Billing) -> None:
    life = a_life(billing)
    user = life["user"]
    reader = api_key(billing.container, "accounts:read")
    url = f"/v1/people/{user}/export"
    body = billing.app.get(url, headers=api_headers(reader, user)).json()
    assert body["discord_user_id"] == user and body["name"]["display_name"] == NAME
    account = body["personal_account"]
    assert account["id"] == life["account"] and account["grants"] and account["statement"]
    assert account["notification_settings"]["auto_recharge_limit_count"] == 1
    assert {r["context"] for r in body["usage"]} == {"personal", "server"}
    assert (
        body["organizations"][0]["org_name"] == "Acme" and body["authorizations"][0]["monthly_cap"] == 20_000
    )
    assert body["audit_entries"] and body["funding_order"] and body["checkouts"]
    csv_body = billing.app.get(url, params={"format": "csv"}, headers=api_headers(reader, user))
    assert csv_body.status_code == 200 and csv_body.headers["content-type"].startswith("text/csv")
    lines = csv_body.text.splitlines()
    assert lines[0] == "section,record,field,value" and f"name,,display_name,{NAME}" in lines

    other = billing.app.get(url, headers=api_headers(reader, snowflake()))
    assert other.status_code == 403 and other.json()["code"] == "permission_denied"
    assert billing.app.get(url, headers=api_headers(reader)).status_code == 403  # no acting user
    assert billing.app.get(url).status_code == 401
    assert (
        billing.app.get(url, headers=api_headers(api_key(billing.container, "operator"))).status_code == 200
    )
    nobody = snowflake()
    unknown = billing.app.get(f"/v1/people/{nobody}/export", headers=api_headers(reader, nobody))
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_person"
    bad = billing.app.get("/v1/people/not-an-id/export", headers=api_headers(reader, user))
    assert bad.status_code == 422


def test_after_erasure_nothing_contains_their_id_or_name_and_the_ledger_still_adds_up(
    billing: Billing,
) -> None:
    life = a_life(billing)
    user, account_id = life["user"], life["account"]
    before = every_value(billing.db)
    assert user in before and NAME in before
    balance = billing.balance(account_id)
    statement = billing.db.read(lambda s: billing.container.ledger.statement(s, account_id, limit=500)).data
    org_account = billing.db.read(lambda s: s.get(BillingAccount, account_id))
    customer = org_account.stripe_customer_id

    output.set_container(billing.container)
    try:
        done = CliRunner().invoke(cli, ["erase-person", user, "--yes", "--reason", "asked by email"])
    finally:
        output.set_container(None)
    assert done.exit_code == 0, done.output
    assert "erased as erased-" in done.output and "Stripe customer updated" in done.output
    billing.harness.wait_for_webhooks()

    after = every_value(billing.db)
    assert user not in after, [line for line in after.splitlines() if user in line][:5]
    assert NAME not in after, [line for line in after.splitlines() if NAME in line][:5]
    (erasure,) = billing.db.read(lambda s: list(s.scalars(select(PersonErasure))))
    assert erasure.pseudonym in after and erasure.reason == "asked by email"
    assert billing.db.read(lambda s: s.get(Person, user)) is None
    # Amounts, movements and statements are kept, under the pseudonym.
    assert billing.balance(account_id).available == balance.available
    kept = billing.db.read(lambda s: billing.container.ledger.statement(s, account_id, limit=500)).data
    assert [(line.id, line.amount) for line in kept] == [(line.id, line.amount) for line in statement]
    assert billing.db.read(lambda s: s.get(BillingAccount, account_id).owner_ref) == erasure.pseudonym
    assert billing.db.read(lambda s: verify(s, first_only=False)) == []
    stripe_customer = billing.service.client.v1.customers.retrieve(customer)
    assert "discord_user_id" not in stripe_customer.metadata and stripe_customer.name == erasure.pseudonym
    # Erasing again: there is nobody left to erase.
    output.set_container(billing.container)
    try:
        again = CliRunner().invoke(cli, ["erase-person", user, "--yes"])
    finally:
        output.set_container(None)
    assert again.exit_code == 1 and "Nothing is kept about" in again.output


def test_unknown_people_and_people_recording_now_are_not_erased_and_nothing_is_written(
    billing: Billing,
) -> None:
    c = billing.container
    user = snowflake()
    c.db.write(lambda s: people.remember(s, user, NAME, c.clock.now()))
    open_rec = UsageRequest(context="personal", capture_source="desktop", user_id=user, requested_minutes=10)
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=c.accounts.get_or_create(s, "personal", user, NAME).id,
            amount=50_000,
            source="promotional",
            idempotency_key=new_key(),
            cause_type="t",
        )
    )
    c.db.write(lambda s: c.usage.start_recording(s, open_rec, new_key()))
    before = every_value(billing.db)
    output.set_container(c)
    try:
        for args, message in [
            (["erase-person", snowflake(), "--yes"], "Nothing is kept about"),
            (["erase-person", "not-an-id", "--yes"], "must be a Discord id"),
            (["erase-person", user, "--yes"], "has a recording in progress"),
        ]:
            refused = CliRunner().invoke(cli, args)
            errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
            assert refused.exit_code == 1 and len(errors) == 1 and message in errors[0], refused.output
    finally:
        output.set_container(None)
    assert every_value(billing.db) == before


def test_the_portal_offers_the_persons_own_data(billing: Billing, discord) -> None:  # type: ignore[no-untyped-def]
    settings = oauth_settings(
        discord,
        stripe_api_base=billing.harness.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=billing.harness.webhook_secret,
    )
    container = Container(db=billing.db, clock=billing.clock, settings=settings)
    client = TestClient(create_app(container), follow_redirects=False)
    me = PortalPerson(client, snowflake(), NAME)
    discord_sign_in(client, discord, me.user_id, me.name, [])
    assert "/portal/personal/data/export.json" in me.get("/portal/personal/billing")
    mine = client.get("/portal/personal/data/export.json")
    assert mine.status_code == 200 and mine.headers["content-disposition"].startswith("attachment")
    assert json.loads(mine.text)["discord_user_id"] == me.user_id
    assert client.get("/portal/personal/data/export.csv").text.startswith("section,record,field,value")
    assert client.get("/portal/personal/data/export.xml").status_code == 404
    anonymous = TestClient(create_app(container), follow_redirects=False).get(
        "/portal/personal/data/export.json"
    )
    assert anonymous.status_code == 303
