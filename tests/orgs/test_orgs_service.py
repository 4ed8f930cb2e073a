"""Organizations: roles, linked servers, authorizations and the audit log (D7, D11)."""

from __future__ import annotations

import threading

import pytest

from chronote_billing.container import Container
from chronote_billing.core.db import Database
from chronote_billing.core.errors import IdempotencyConflict, PermissionDenied
from chronote_billing.orgs.service import (
    AuthorizationExists,
    LastOwner,
    ServerAlreadyLinked,
    UnknownCaptureSource,
    member_role,
)
from chronote_billing.usage.schemas import UsageRequest
from chronote_billing.usage.service import UsageDeclined
from tests.conftest import OPERATOR, snowflake
from tests.factories import new_key


@pytest.fixture
def c(db, clock) -> Container:
    return Container(db=db, clock=clock)


def test_roles_audit_and_member_removal_revokes_authorizations(c):
    owner, admin, member = snowflake(), snowflake(), snowflake()
    org = c.db.write(
        lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Acme", idempotency_key="create")
    )
    assert (
        c.db.write(lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Acme", idempotency_key="create"))
        == org
    )
    with pytest.raises(IdempotencyConflict):
        c.db.write(
            lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Other", idempotency_key="create")
        )
    add = lambda actor, user, role: c.db.write(  # noqa: E731
        lambda s: c.orgs.add_member(
            s, actor_user_id=actor, org_id=org.id, user_id=user, role=role, idempotency_key=new_key()
        )
    )
    add(owner, admin, "billing_admin")
    with pytest.raises(PermissionDenied):
        add(admin, snowflake(), "owner")  # only owners make owners
    add(admin, member, "member")
    with pytest.raises(PermissionDenied) as err:
        add(member, snowflake(), "member")
    assert err.value.details["missing_permission"] == f"role owner or billing_admin in organization {org.id}"
    with pytest.raises(LastOwner):
        c.db.write(
            lambda s: c.orgs.set_role(
                s, actor_user_id=owner, org_id=org.id, user_id=owner, role="member", idempotency_key=new_key()
            )
        )
    auth = c.db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=admin,
            org_id=org.id,
            subject_type="member",
            subject_id=member,
            monthly_cap_credits=300,
            capture_sources=["desktop"],
            valid_from=None,
            valid_until=None,
            idempotency_key=new_key(),
        )
    )
    with pytest.raises(AuthorizationExists):
        c.db.write(
            lambda s: c.orgs.create_authorization(
                s,
                actor_user_id=admin,
                org_id=org.id,
                subject_type="member",
                subject_id=member,
                monthly_cap_credits=None,
                capture_sources=None,
                valid_from=None,
                valid_until=None,
                idempotency_key=new_key(),
            )
        )
    with pytest.raises(UnknownCaptureSource):
        c.db.write(
            lambda s: c.orgs.update_authorization(
                s,
                actor_user_id=admin,
                authorization_id=auth.id,
                capture_sources=["fax"],
                idempotency_key=new_key(),
            )
        )
    updated = c.db.write(
        lambda s: c.orgs.update_authorization(
            s,
            actor_user_id=owner,
            authorization_id=auth.id,
            monthly_cap_credits=450,
            idempotency_key=new_key(),
        )
    )
    assert updated.monthly_cap_credits == 450 and updated.capture_sources == ["desktop"]
    c.db.write(
        lambda s: c.orgs.remove_member(
            s, actor_user_id=admin, org_id=org.id, user_id=member, idempotency_key=new_key()
        )
    )
    assert c.db.read(lambda s: member_role(s, org.id, member)) is None
    assert c.db.read(lambda s: c.orgs.authorization_view(s, auth.id)).status == "revoked"
    log = c.db.read(lambda s: c.orgs.audit_log(s, org.id, 20))
    actions = [e.action for e in log]
    assert actions[:4] == [
        "member.removed",
        "authorization.revoked",
        "authorization.updated",
        "authorization.created",
    ]
    change = next(e for e in log if e.action == "authorization.updated")
    assert (change.actor, change.before["monthly_cap"], change.after["monthly_cap"]) == (
        owner,
        300_000,
        450_000,
    )
    assert [o.id for o, role in c.db.read(lambda s: c.orgs.orgs_for_user(s, admin))] == [org.id]


def test_a_server_links_to_one_organization_and_unlinking_revokes_its_authorization(c):
    owner_a, owner_b, guild = snowflake(), snowflake(), snowflake()
    a = c.db.write(lambda s: c.orgs.create_org(s, actor_user_id=owner_a, name="A", idempotency_key=new_key()))
    b = c.db.write(lambda s: c.orgs.create_org(s, actor_user_id=owner_b, name="B", idempotency_key=new_key()))
    link = lambda org, actor, manages=True: c.db.write(  # noqa: E731
        lambda s: c.orgs.link_server(
            s,
            actor_user_id=actor,
            actor_manages_guild=manages,
            org_id=org,
            guild_id=guild,
            idempotency_key=new_key(),
        )
    )
    with pytest.raises(PermissionDenied):
        link(a.id, owner_a, manages=False)
    link(a.id, owner_a)
    with pytest.raises(ServerAlreadyLinked):
        link(b.id, owner_b)
    auth = c.db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=owner_a,
            org_id=a.id,
            subject_type="server",
            subject_id=guild,
            monthly_cap_credits=None,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key=new_key(),
        )
    )
    c.db.write(
        lambda s: c.orgs.unlink_server(
            s, actor_user_id=owner_a, org_id=a.id, guild_id=guild, idempotency_key=new_key()
        )
    )
    assert c.db.read(lambda s: c.orgs.authorization_view(s, auth.id)).status == "revoked"
    link(b.id, owner_b)


def _race(db: Database, clock, workers: int, fn) -> list[object]:
    results: list[object] = [None] * workers
    barrier = threading.Barrier(workers)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.postgres
def test_twenty_members_recording_at_once_never_exceed_the_wallet_or_a_cap(c, clock):
    owner = snowflake()
    org = c.db.write(
        lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Race", idempotency_key=new_key())
    )
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=org.billing_account_id,
            amount=1_000_000,
            source="purchase",
            idempotency_key=new_key(),
            cause_type="test",
        )
    )
    members = [snowflake() for _ in range(20)]
    auths = {}
    for m in members:
        c.db.write(
            lambda s, m=m: c.orgs.add_member(
                s, actor_user_id=owner, org_id=org.id, user_id=m, role="member", idempotency_key=new_key()
            )
        )
        auths[m] = c.db.write(
            lambda s, m=m: c.orgs.create_authorization(
                s,
                actor_user_id=owner,
                org_id=org.id,
                subject_type="member",
                subject_id=m,
                monthly_cap_credits=70,
                capture_sources=None,
                valid_from=None,
                valid_until=None,
                idempotency_key=new_key(),
            )
        )

    # each member starts three 30-minute recordings at once (two devices and a retry storm):
    # caps allow two per member (70 credits), the wallet (1,000) allows 33 in all.
    def start(i: int):
        member = members[i % 20]
        req = UsageRequest(
            context="personal",
            capture_source="desktop",
            user_id=member,
            requested_minutes=30,
            funding_source=auths[member].id,
        )
        return c.db.write(lambda s: c.usage.start_recording(s, req, f"race-{i}"))

    results = _race(c.db, clock, 60, start)
    placed = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert all(
        isinstance(e, UsageDeclined) and e.code in ("cap_reached", "insufficient_credits") for e in errors
    ), errors
    assert len(placed) == 33
    balance = c.db.read(lambda s: c.ledger.balance(s, org.billing_account_id))
    assert balance.held == 33 * 30_000 and balance.available == 10_000
    for m in members:
        usage = c.db.read(lambda s, m=m: c.ledger.cap_usage(s, auths[m].id, "2026-11"))
        assert usage.held + usage.used <= 70_000
    # and when they all finish, what is charged stays within the caps and the wallet
    for rec in placed:
        c.db.write(
            lambda s, rec=rec: c.usage.finish_recording(s, OPERATOR, rec.id, {"mic": 29 * 60}, new_key())
        )
    assert (
        c.db.read(lambda s: c.ledger.balance(s, org.billing_account_id)).available == 1_000_000 - 33 * 29_000
    )


@pytest.mark.postgres
def test_organizations_racing_to_link_one_server_get_one_link_and_clear_refusals(c, clock):
    guild = snowflake()
    owners = [snowflake() for _ in range(8)]
    orgs = [
        c.db.write(
            lambda s, o=o: c.orgs.create_org(s, actor_user_id=o, name="Racer", idempotency_key=new_key())
        )
        for o in owners
    ]

    def link(i: int):
        return c.db.write(
            lambda s: c.orgs.link_server(
                s,
                actor_user_id=owners[i],
                actor_manages_guild=True,
                org_id=orgs[i].id,
                guild_id=guild,
                idempotency_key=new_key(),
            )
        )

    results = _race(c.db, clock, len(owners), link)
    linked = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(linked) == 1 and all(isinstance(r, ServerAlreadyLinked) for r in refused), results
    assert c.db.read(lambda s: c.orgs.server_link(s, guild)).org_id == linked[0].org_id
