"""Demo data for `make run`: a few users, servers and one organization with grants and history.

The people and servers are the portal's demo sign-in identities (`chronote_billing.portal`'s
`demo_people.json`), so whoever signs in as Ada finds Ada's history.

The demo seeds once and then reuses what it seeded: `make run` again on the same database finds
the organization and loads nothing new (the grants' expiries are relative to the first run, so
asking for them again would be a different request). Every write still uses a fixed idempotency
key, so a run stopped half-way finishes the history on the next one.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal
from chronote_billing.container import Container
from chronote_billing.portal.demo_people import demo_identities
from chronote_billing.usage.schemas import UsageRequest

# By key: (Discord id, name).
DEMO_USERS = {p.key: (p.discord_user_id, p.name) for p in demo_identities().people}
DEMO_SERVERS = {s.key: (s.guild_id, s.name) for s in demo_identities().servers}


def load(c: Container) -> str:
    """Accounts, an organization with members, a linked server and authorizations, and some
    history: recordings and metered events charged through the usage engine like real ones."""
    from chronote_billing.people import service as people
    from chronote_billing.usage.schemas import EventRequest

    ada, ben, cy = (DEMO_USERS[k][0] for k in ("ada", "ben", "cy"))
    study, acme_guild = DEMO_SERVERS["study"][0], DEMO_SERVERS["guild"][0]
    now = c.clock.now()

    def seeded(session):  # type: ignore[no-untyped-def]
        """Cy's authorization in the Acme organization Ben created, if an earlier run made it."""
        for org, _ in c.orgs.orgs_for_user(session, ben):
            if org.name == "Acme" and org.created_by == ben:
                for auth in c.orgs.list_authorizations(session, org.id):
                    if auth.subject_type == "member" and auth.subject_id == cy:
                        return auth.id
        return None

    def accounts_and_org(session):  # type: ignore[no-untyped-def]
        for uid, name in DEMO_USERS.values():
            c.accounts.get_or_create(session, "personal", uid, name)
            people.remember(session, uid, name, now)  # as if each had signed in before
        for gid, name in DEMO_SERVERS.values():
            c.accounts.get_or_create(session, "server", gid, name)
        org = c.orgs.create_org(session, actor_user_id=ben, name="Acme", idempotency_key="demo-org-acme")
        c.orgs.add_member(
            session,
            actor_user_id=ben,
            org_id=org.id,
            user_id=ada,
            role="billing_admin",
            idempotency_key="demo-acme-ada",
        )
        c.orgs.add_member(
            session,
            actor_user_id=ben,
            org_id=org.id,
            user_id=cy,
            role="member",
            idempotency_key="demo-acme-cy",
        )
        c.orgs.link_server(
            session,
            actor_user_id=ben,
            actor_manages_guild=True,
            org_id=org.id,
            guild_id=acme_guild,
            idempotency_key="demo-acme-link",
        )
        cy_authorization = c.orgs.create_authorization(
            session,
            actor_user_id=ben,
            org_id=org.id,
            subject_type="member",
            subject_id=cy,
            monthly_cap_credits=600,
            capture_sources=["desktop", "web"],
            valid_from=None,
            valid_until=None,
            idempotency_key="demo-acme-auth-cy",
        )
        c.orgs.create_authorization(
            session,
            actor_user_id=ben,
            org_id=org.id,
            subject_type="server",
            subject_id=acme_guild,
            monthly_cap_credits=None,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key="demo-acme-auth-guild",
        )
        org_account = c.accounts.find(session, "organization", org.id)
        assert org_account is not None
        c.ledger.issue_grant(
            session,
            account_id=org_account.id,
            amount=20_000_000,
            source="promotional",
            idempotency_key="demo-acme-credits",
            cause_type="admin",
            cause_id="demo",
            expires_at=now + timedelta(days=365),
            description="Demo credits for Acme",
        )
        ada_account = c.accounts.find(session, "personal", ada)
        assert ada_account is not None
        c.ledger.issue_grant(
            session,
            account_id=ada_account.id,
            amount=50_000,
            source="promotional",
            idempotency_key="demo-ada-welcome",
            cause_type="admin",
            cause_id="demo",
            expires_at=now + timedelta(days=90),
            description="Welcome credits",
        )
        return cy_authorization.id

    reused = c.db.read(seeded)
    cy_authorization_id = reused or c.db.write(accounts_and_org)

    history = [
        (
            "ada-desktop",
            UsageRequest(
                context="personal",
                capture_source="desktop",
                user_id=ada,
                meeting_id="demo-m1",
                requested_minutes=60,
            ),
            23 * 60 + 10,
        ),
        (
            "study-weekly",
            UsageRequest(
                context="server",
                capture_source="discord_voice",
                user_id=ada,
                guild_id=study,
                meeting_id="demo-m2",
                requested_minutes=90,
            ),
            47 * 60,
        ),
        (
            "cy-desktop",
            UsageRequest(
                context="personal",
                capture_source="desktop",
                user_id=cy,
                meeting_id="demo-m3",
                requested_minutes=60,
                funding_source=cy_authorization_id,
            ),
            31 * 60 + 5,
        ),
        (
            "acme-standup",
            UsageRequest(
                context="server",
                capture_source="discord_voice",
                user_id=ben,
                guild_id=acme_guild,
                meeting_id="demo-m4",
                requested_minutes=60,
            ),
            15 * 60,
        ),
    ]
    for key, request, seconds in history:
        record_one(c, key, request, seconds)
    c.db.write(
        lambda s: c.usage.charge_event(
            s,
            EventRequest(
                event_id="demo-ask-1",
                event_type="ask_question",
                context="server",
                user_id=ada,
                guild_id=study,
                meeting_id="demo-m2",
            ),
        )
    )
    return (
        f"demo data {'reused' if reused else 'ready'}: users {', '.join(n for _, n in DEMO_USERS.values())}; servers "
        f"{', '.join(n for _, n in DEMO_SERVERS.values())}; organization Acme (owner Ben, billing admin Ada, "
        "member Cy) with history"
    )


def record_one(c: Container, key: str, request: UsageRequest, seconds: int) -> None:
    """One recording of the demo history: started, then finished after ``seconds``."""

    def start(session: Session) -> str:
        return c.usage.start_recording(session, request, f"demo-{key}-start").id

    recording_id = c.db.write(start)

    def finish(session: Session) -> None:
        starter = Principal(kind="person", user_id=request.user_id)
        c.usage.finish_recording(
            session, starter, recording_id, {request.capture_source: seconds}, f"demo-{key}-finish"
        )

    c.db.write(finish)
