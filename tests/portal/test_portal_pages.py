"""Portal pages through the HTTP app: who is billed, funding sources, organizations managed
through forms (with CSRF, nonce-derived idempotency and inline errors), access denials naming
the missing permission, usage reports without meeting content, and readable 403/404 pages."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient

from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.usage.schemas import EventRequest, UsageRequest
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import OPERATOR, snowflake
from tests.portal.test_portal_auth import (
    FakeDiscord,
    discord,
    discord_sign_in,
    guild,
    make_client,
    oauth_settings,
)

__all__ = ["discord"]  # the module-scoped fake Discord fixture, shared with the sign-in tests


class Person:
    """A signed-in portal user driving pages and forms as a browser would."""

    def __init__(self, client: TestClient, user_id: str, name: str) -> None:
        self.client = client
        self.user_id = user_id
        self.name = name
        self.page = ""

    def get(self, path: str, status: int = 200) -> str:
        response = self.client.get(path)
        assert response.status_code == status, (path, response.status_code, response.text[:500])
        self.page = response.text
        return response.text

    def tokens(self, action: str, page: str | None = None) -> dict[str, str]:
        text = page if page is not None else self.page
        found = re.search(
            r'<form[^>]*action="' + re.escape(action) + r'"[^>]*>\s*'
            r'<input type="hidden" name="csrf_token" value="([^"]+)">\s*'
            r'<input type="hidden" name="nonce" value="([^"]+)">',
            text,
        )
        assert found, f"no form posting to {action} on the page"
        return {"csrf_token": found.group(1), "nonce": found.group(2)}

    def submit(
        self, action: str, data: dict[str, Any], htmx: bool = True, tokens: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"HX-Request": "true"} if htmx else {}
        return self.client.post(action, data={**(tokens or self.tokens(action)), **data}, headers=headers)


def person(
    db: Database,
    discord: FakeDiscord,
    container_clock: ManualClock,
    guilds: list[dict[str, Any]] | None = None,
) -> Person:
    user_id = snowflake()
    name = "User" + user_id[-4:]
    client = make_client(db, oauth_settings(discord), container_clock)
    discord_sign_in(client, discord, user_id, name, guilds or [])
    return Person(client, user_id, name)


def container_of(p: Person) -> Container:
    container: Container = p.client.app.state.container  # type: ignore[attr-defined]
    return container


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def create_org(p: Person, name: str) -> str:
    p.get("/portal/orgs/new")
    done = p.submit("/portal/orgs/new", {"name": name})
    assert done.status_code == 204, done.text
    location = done.headers["HX-Redirect"]
    found = re.match(r"^/portal/org/(org_[a-z0-9]+)/billing$", location)
    assert found, location
    return found.group(1)


# ---------------------------------------------------------------------------- personal and servers


def test_personal_billing_shows_plan_allowance_credits_and_statement(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    ada = person(db, discord, clock)
    c = container_of(ada)

    def grant(session: Any) -> None:
        account = c.accounts.get_or_create(session, "personal", ada.user_id)
        c.ledger.issue_grant(
            session,
            account_id=account.id,
            amount=2_500_500,
            source="promotional",
            idempotency_key="welcome",
            cause_type="admin",
            expires_at=clock.now() + timedelta(days=30),
            description="Welcome credits",
        )

    db.write(grant)
    page = text_of(ada.get("/portal/personal/billing"))
    assert "Billed to: you" in page
    assert "Personal Free" in page and "free" in page
    assert "120 of 120 credits left" in page  # this month's free allowance, granted on first need
    assert "Nov 1, 2026 – Dec 1, 2026" in page
    assert "2,620" in page and "2,620.5" not in page  # available: 120 + 2,500.5, in whole credits
    assert "Welcome credits" in page and "Dec 1, 2026" in page  # grant and its expiry
    assert "Free monthly allowance" in page
    assert "Personal Pro" in page and "$9.00" in page and "$90.00 / year" in page
    assert "1,000 credits" in page and "$15.00" in page
    assert '"Manage billing" appears after the first purchase' in page  # no Stripe customer yet
    assert "Funding sources" in page and "credits left" in page
    assert "Personal Free allowance for 2026-11" in page  # statement line with its reason
    statement_csv = ada.client.get("/portal/personal/billing/statement.csv")
    assert statement_csv.status_code == 200 and statement_csv.headers["content-type"].startswith("text/csv")
    rows = statement_csv.text.splitlines()
    assert rows[0].startswith("line_id,date_utc,type,description,credits,millicredits")
    assert any(",credits_added,Welcome credits,2500,2500500," in r for r in rows[1:]), rows


def test_server_billing_only_for_managers_and_shows_the_linked_organization(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    hall, other = snowflake(), snowflake()
    dana = person(db, discord, clock, [guild(hall, "Dana's Hall", 0x20), guild(other, "Other", 0x40)])
    page = text_of(dana.get(f"/portal/server/{hall}/billing"))
    assert "Billed to: server Dana's Hall" in page
    assert "Server Free" in page and "960 of 960 credits left" in page
    assert "Server Basic" in page and "$12.00" in page and "Server Pro" in page and "$29.00" in page
    assert "Choose Server Basic" in page

    denied = dana.client.get(f"/portal/server/{other}/billing")
    assert denied.status_code == 403
    assert "You need Manage Server on this Discord server to manage its billing." in text_of(denied.text)
    # Nothing was created for the server the person does not manage.
    assert db.read(lambda s: container_of(dana).accounts.find(s, "server", other)) is None
    missing = dana.client.get("/portal/server/not-a-guild/billing")
    assert missing.status_code == 404 and "We couldn't find that" in text_of(missing.text)
    assert dana.client.get("/portal/nowhere").status_code == 404

    # Linked to an organization with an authorization: the server page says what is left.
    org_id = create_org(dana, "Dana Co")
    dana.get(f"/portal/org/{org_id}/billing")
    assert dana.submit(f"/portal/org/{org_id}/billing/servers/link", {"guild_id": hall}).status_code == 204
    dana.get(f"/portal/org/{org_id}/billing/authorizations")
    made = dana.submit(
        f"/portal/org/{org_id}/billing/authorizations/create",
        {"subject": f"server:{hall}", "monthly_cap_credits": "300"},
    )
    assert made.status_code == 204, made.text
    page = text_of(dana.get(f"/portal/server/{hall}/billing"))
    assert "linked to Dana Co" in page
    assert "no active authorization" not in page and "left this month" in page


def test_purchases_reach_the_billing_service_for_the_pages_own_account_only(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    hall = snowflake()
    erin = person(db, discord, clock, [guild(hall, "Erin's", 0x8)])
    erin.get("/portal/personal/billing")
    pack_tokens = erin.tokens("/portal/personal/billing/packs")
    # Another person's server: refused before anything reaches Stripe, naming the permission.
    refused = erin.submit(
        f"/portal/server/{snowflake()}/billing/packs", {"pack": "credits_1000"}, tokens=pack_tokens
    )
    assert refused.status_code == 403
    assert "Manage Server" in refused.text
    # No Stripe customer yet: the customer portal is refused with a readable reason.
    portal = erin.submit(
        "/portal/personal/billing/manage", {}, tokens=erin.tokens("/portal/personal/billing/packs")
    )
    assert portal.status_code == 404 and "nothing has been bought" in portal.text
    # An unknown pack is a readable validation error, inline (no traceback, no 500).
    bad = erin.submit("/portal/personal/billing/packs", {"pack": "credits_7"})
    assert bad.status_code == 422 and "Unknown credit pack" in bad.text
    assert "Traceback" not in bad.text


# ---------------------------------------------------------------------------- organizations


def test_org_admin_manages_members_and_authorizations_through_forms(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    owner = person(db, discord, clock)
    member = person(db, discord, clock)
    org_id = create_org(owner, "Acme Research")
    page = text_of(owner.get(f"/portal/org/{org_id}/billing"))
    assert "Billed to: Acme Research" in page
    assert "Acme Research · Owner" in page  # in the switcher under Organizations
    assert "org.created" not in page and "Created the organization Acme Research" in page  # audit log

    members_url = f"/portal/org/{org_id}/billing/members"
    owner.get(members_url)
    add = f"/portal/org/{org_id}/billing/members/add"
    tokens = owner.tokens(add)
    first = owner.submit(add, {"user_id": member.user_id, "role": "member"}, tokens=tokens)
    assert first.status_code == 204 and first.headers["HX-Redirect"] == members_url
    # The same form submitted again (same nonce) acts once: no "already a member" error.
    again = owner.submit(add, {"user_id": member.user_id, "role": "member"}, tokens=tokens)
    assert again.status_code == 204
    # A new submission for the same person is refused, inline.
    dup = owner.submit(
        add, {"user_id": member.user_id, "role": "member"}, tokens=owner.tokens(add, owner.get(members_url))
    )
    assert dup.status_code == 409 and "already a member" in dup.text
    bad = owner.submit(add, {"user_id": "ben", "role": "member"})
    assert bad.status_code == 422 and "must be a Discord id" in bad.text
    # Members show by the name they signed in with (id on hover); nobody else's name is invented.
    stranger = snowflake()
    assert owner.submit(add, {"user_id": stranger, "role": "member"}).status_code == 204
    members_page = owner.get(members_url)
    assert f'title="Discord id {member.user_id}">{member.name}</span>' in members_page
    assert f'title="Not signed in to the portal yet">{stranger}</span>' in members_page
    assert f"{owner.name} you" in text_of(members_page)

    auth_url = f"/portal/org/{org_id}/billing/authorizations"
    owner.get(auth_url)
    create = f"/portal/org/{org_id}/billing/authorizations/create"
    bad_cap = owner.submit(create, {"subject": f"member:{member.user_id}", "monthly_cap_credits": "lots"})
    assert bad_cap.status_code == 422 and "Monthly cap must be a whole number" in bad_cap.text
    made = owner.submit(
        create,
        {
            "subject": f"member:{member.user_id}",
            "monthly_cap_credits": "250",
            "capture_sources": ["desktop", "upload"],
            "valid_until": "2027-01-31",
        },
    )
    assert made.status_code == 204, made.text
    page = owner.get(auth_url)
    auth_id = re.search(r"/authorizations/(auth_[a-z0-9]+)/cap", page)
    assert auth_id
    listed = text_of(page)
    assert member.name in listed and "Desktop, Upload" in listed
    # The form's list of who may be authorized names people; the id is the option's value.
    assert f'<option value="member:{member.user_id}">{member.name}</option>' in page
    # Revoked or not, an authorization belongs to its organization: another org's URL is a 404.
    elsewhere = create_org(owner, "Elsewhere")
    foreign = owner.submit(
        f"/portal/org/{elsewhere}/billing/authorizations/{auth_id.group(1)}/cap",
        {"monthly_cap_credits": "1"},
        tokens=owner.tokens(create, owner.get(auth_url)),
    )
    assert foreign.status_code == 404

    cap = owner.submit(
        f"/portal/org/{org_id}/billing/authorizations/{auth_id.group(1)}/cap", {"monthly_cap_credits": "400"}
    )
    assert cap.status_code == 204
    assert 'value="400"' in owner.get(auth_url)

    # The member sees the authorization on their personal page, not the organization's pages.
    personal = text_of(member.get("/portal/personal/billing"))
    assert "Acme Research authorization" in personal and "cap 400 credits/month" in personal
    assert f'href="/portal/org/{org_id}/billing"' not in member.page  # not in the member's switcher
    denied = member.client.get(f"/portal/org/{org_id}/billing")
    assert denied.status_code == 403
    # In a person's words: who is needed, on which organization, by name (decision 0041).
    assert "You need to be an owner or billing admin of Acme Research" in denied.text
    assert "billing_admin" not in denied.text and "acct_" not in denied.text
    forbidden_post = member.submit(
        add,
        {"user_id": snowflake(), "role": "member"},
        tokens=member.tokens("/portal/personal/billing/packs", member.page),
    )
    assert (
        forbidden_post.status_code == 403 and "owner or billing admin of Acme Research" in forbidden_post.text
    )

    revoke = owner.submit(f"/portal/org/{org_id}/billing/authorizations/{auth_id.group(1)}/revoke", {})
    assert revoke.status_code == 204
    assert "revoked" in text_of(owner.get(auth_url))
    assert owner.client.get("/portal/org/org_doesnotexist/billing").status_code == 404


def test_reordering_funding_sources_swaps_the_list_in_place(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    admin = person(db, discord, clock)
    worker = person(db, discord, clock)
    c = container_of(admin)
    orgs = []
    for name in ("First Org", "Second Org"):
        org_id = create_org(admin, name)
        orgs.append(org_id)
        db.write(
            lambda s, org_id=org_id: c.orgs.add_member(
                s,
                actor_user_id=admin.user_id,
                org_id=org_id,
                user_id=worker.user_id,
                role="member",
                idempotency_key="m",
            )
        )
        db.write(
            lambda s, org_id=org_id: c.orgs.create_authorization(
                s,
                actor_user_id=admin.user_id,
                org_id=org_id,
                subject_type="member",
                subject_id=worker.user_id,
                monthly_cap_credits=100,
                capture_sources=None,
                valid_from=None,
                valid_until=None,
                idempotency_key="a",
            )
        )
    page = worker.get("/portal/personal/billing")
    order = re.findall(r'data-source="([^"]+)"', page)
    assert order[0] == "personal" and len(order) == 3
    labels = re.findall(r"<strong>([^<]+ authorization)</strong>", page)
    assert labels == ["First Org authorization", "Second Org authorization"]
    # The "down" button of the first authorization posts the swapped order.
    response = worker.submit(
        "/portal/personal/billing/funding-order", {"order": [order[0], order[2], order[1]]}
    )
    assert response.status_code == 200
    assert "<html" not in response.text  # a fragment, swapped in place
    assert re.findall(r"<strong>([^<]+ authorization)</strong>", response.text) == [
        "Second Org authorization",
        "First Org authorization",
    ]
    # Moving the personal wallet is refused by the rule, shown inside the list.
    refused = worker.submit(
        "/portal/personal/billing/funding-order",
        {"order": [order[1], "personal"]},
        tokens=worker.tokens("/portal/personal/billing/packs", worker.get("/portal/personal/billing")),
    )
    assert refused.status_code == 200 and "always comes first" in refused.text
    assert re.findall(r'data-source="([^"]+)"', worker.get("/portal/personal/billing")) == [
        order[0],
        order[2],
        order[1],
    ]


def test_org_usage_by_member_and_day_with_csv_and_no_meeting_content(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    owner = person(db, discord, clock)
    member = person(db, discord, clock)
    c = container_of(owner)
    org_id = create_org(owner, "Usage Org")
    org = db.read(lambda s: c.orgs.get_org(s, org_id))
    db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=org.billing_account_id,
            amount=100_000,
            source="comp",
            idempotency_key="seed",
            cause_type="admin",
        )
    )
    db.write(
        lambda s: c.orgs.add_member(
            s,
            actor_user_id=owner.user_id,
            org_id=org_id,
            user_id=member.user_id,
            role="member",
            idempotency_key="m",
        )
    )
    auth = db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=owner.user_id,
            org_id=org_id,
            subject_type="member",
            subject_id=member.user_id,
            monthly_cap_credits=None,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key="a",
        )
    )
    rec = db.write(
        lambda s: c.usage.start_recording(
            s,
            UsageRequest(
                context="personal",
                capture_source="desktop",
                user_id=member.user_id,
                meeting_id="secret-board-meeting",
                requested_minutes=10,
                funding_source=auth.id,
            ),
            "rec-1",
        )
    )
    db.write(lambda s: c.usage.finish_recording(s, OPERATOR, rec.id, {"desktop": 301}, "fin-1"))
    db.write(
        lambda s: c.usage.charge_event(
            s,
            EventRequest(
                event_id="ev-" + member.user_id,
                event_type="ask_question",
                context="personal",
                user_id=member.user_id,
                funding_source=auth.id,
            ),
        )
    )
    page = text_of(owner.get(f"/portal/org/{org_id}/billing/usage"))
    assert f"By member Member Uses Minutes Reserved Charged (credits) {member.name} 2" in page
    assert "Total 6" in page  # 6 started minutes + one question (half a credit), in whole credits
    assert "secret-board-meeting" not in page
    by_source = text_of(owner.get(f"/portal/org/{org_id}/billing/usage?group_by=source"))
    assert "Desktop" in by_source and "Ask question" in by_source
    by_day = owner.get(f"/portal/org/{org_id}/billing/usage?group_by=day")
    assert "<svg" in by_day and "11-01: 6 credits" in by_day
    # A bad window is told beside its field, in the field's label; the page stays (decision 0041).
    bad = owner.client.get(f"/portal/org/{org_id}/billing/usage?since=yesterday")
    assert bad.status_code == 200 and "From must be a date" in bad.text and "By member" in bad.text
    reversed_range = owner.client.get(f"/portal/org/{org_id}/billing/usage?since=2026-11-20&until=2026-11-02")
    assert (
        reversed_range.status_code == 200
        and "To must be the same day as From or later" in reversed_range.text
    )
    far = owner.client.get(f"/portal/org/{org_id}/billing/usage?until=9999-12-31")
    assert far.status_code == 200 and "too far in the future" in far.text
    far_csv = owner.client.get(f"/portal/org/{org_id}/billing/usage.csv?until=9999-12-31")
    assert far_csv.status_code == 422 and "too far in the future" in far_csv.text

    csv_totals = owner.client.get(f"/portal/org/{org_id}/billing/usage.csv?group_by=member")
    assert csv_totals.status_code == 200 and csv_totals.headers["content-type"].startswith("text/csv")
    assert csv_totals.text.splitlines()[1] == f"{member.user_id},2,6,0,6,6500"
    lines = owner.client.get(f"/portal/org/{org_id}/billing/usage.csv").text.splitlines()
    assert lines[0].startswith("id,created_at,finished_at,kind,status,context,source,user_id")
    assert len(lines) == 3
    assert member.client.get(f"/portal/org/{org_id}/billing/usage.csv").status_code == 403


def test_alerts_and_auto_recharge_settings_are_saved_for_the_organization(
    db: Database, discord: FakeDiscord, clock: ManualClock
) -> None:
    owner = person(db, discord, clock)
    org_id = create_org(owner, "Settings Org")
    owner.get(f"/portal/org/{org_id}/billing")
    saved = owner.submit(f"/portal/org/{org_id}/billing/alerts", {"threshold_credits": "200"})
    assert saved.status_code == 204
    owner.get(f"/portal/org/{org_id}/billing")
    # Without a saved card auto-recharge cannot be switched on, and the form says why, by the box.
    refused = owner.submit(
        f"/portal/org/{org_id}/billing/auto-recharge",
        {"enabled": "1", "threshold_credits": "500", "pack": "credits_5000", "monthly_limit_count": "2"},
    )
    assert refused.status_code == 422 and refused.headers["X-Error-Field"] == "enabled"
    assert "needs a card saved with Stripe for Settings Org" in refused.text
    c = container_of(owner)
    account = db.read(lambda s: c.accounts.find(s, "organization", org_id))
    assert not db.read(lambda s: c.notifications.get_settings(s, account.id)).auto_recharge.enabled
    # With a card (as after a first purchase), the page says what it buys, by the pack's name.
    db.write(
        lambda s: c.notifications.set_auto_recharge(
            s,
            account_id=account.id,
            enabled=True,
            threshold_credits=500,
            pack_id="credits_5000",
            idempotency_key="with-card",
            monthly_limit_count=2,
        )
    )
    page = text_of(owner.get(f"/portal/org/{org_id}/billing"))
    assert "Alert when fewer than 200 credits are available" in page
    assert "Buys 5,000 credits when fewer than 500 credits are available, at most 2 times a month" in page
    bad = owner.submit(
        f"/portal/org/{org_id}/billing/auto-recharge", {"threshold_credits": "", "pack": "credits_5000"}
    )
    assert bad.status_code == 422 and "Recharge threshold is required" in bad.text


def test_buying_a_pack_then_manage_billing_opens_that_accounts_own_portal(
    db: Database, discord: FakeDiscord, stripe_local: Any
) -> None:
    settings = oauth_settings(
        discord,
        stripe_api_base=stripe_local.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=stripe_local.webhook_secret,
    )
    container = Container(db=db, settings=settings)  # the system clock, as Stripe's side runs on it
    client = TestClient(create_app(container), follow_redirects=False)
    sync_catalog(container.billing.client)
    stripe_local.send_webhooks_to(
        lambda body, headers: client.post("/webhooks/stripe", content=body, headers=headers).status_code
    )
    buyer = Person(client, snowflake(), "Buyer")
    discord_sign_in(client, discord, buyer.user_id, buyer.name, [])
    page = buyer.get("/portal/personal/billing")
    assert "/portal/personal/billing/manage" not in page

    checkout = buyer.submit("/portal/personal/billing/packs", {"pack": "credits_1000"})
    assert checkout.status_code == 204, checkout.text
    url = checkout.headers["HX-Redirect"]
    assert url.startswith(stripe_local.url)
    paid = stripe_local.pay_checkout(url)
    back = paid.headers["location"]
    assert paid.status_code == 303 and "/portal/personal/billing?checkout=cs_" in back
    stripe_local.wait_for_webhooks()

    # Back from Checkout: the page confirms the payment and says so (decision 0040).
    page = text_of(buyer.get(back[back.index("/portal") :]))
    assert "Payment received: 1,000 credits were added." in page
    assert "Credit pack" in page and "1,120" in page  # 1,000 bought + this month's 120 allowance
    assert "Manage billing" in page and "appears after the first purchase" not in page
    portal = buyer.submit("/portal/personal/billing/manage", {})
    assert portal.status_code == 204 and portal.headers["HX-Redirect"].startswith(stripe_local.url)
    customer = db.read(lambda s: container.accounts.find(s, "personal", buyer.user_id)).stripe_customer_id
    sessions = [e for e in stripe_local.events() if e["type"].startswith("billing_portal.session")]
    assert customer and all(e["data"]["object"]["customer"] == customer for e in sessions)

    # Someone else's page never offers (or opens) this customer's portal.
    other = Person(TestClient(create_app(container), follow_redirects=False), snowflake(), "Other")
    discord_sign_in(other.client, discord, other.user_id, other.name, [])
    assert "Manage billing</button>" not in other.get("/portal/personal/billing")
    refused = other.submit(
        "/portal/personal/billing/manage", {}, tokens=other.tokens("/portal/personal/billing/packs")
    )
    assert refused.status_code == 404 and "nothing has been bought" in refused.text
