"""Usage attribution (D8): one test per row of the payer table, and the authorization cases
around it (caps, revocation, expiry, several organizations, linked servers)."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select

from chronote_billing.container import Container
from chronote_billing.core.errors import PermissionDenied, ValidationFailed
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.orgs.service import CannotChangeOwnAuthorization, UnknownCaptureSource
from chronote_billing.usage.schemas import EventRequest, UsageRequest
from chronote_billing.usage.service import (
    FundingSourceNotHeld,
    RecordingTooLong,
    UsageDeclined,
    write_or_record_decline,
)
from tests.conftest import OPERATOR, snowflake
from tests.factories import new_key

MC = 1000


@pytest.fixture
def c(db, clock) -> Container:
    return Container(db=db, clock=clock)


def make_org(c, owner: str, name: str = "Acme", credits: int = 1000) -> str:
    org = c.db.write(
        lambda s: c.orgs.create_org(s, actor_user_id=owner, name=name, idempotency_key=new_key())
    )
    if credits:
        c.db.write(
            lambda s: c.ledger.issue_grant(
                s,
                account_id=org.billing_account_id,
                amount=credits * MC,
                source="purchase",
                idempotency_key=new_key(),
                cause_type="test",
            )
        )
    return org.id


def add_member(c, org: str, actor: str, user: str, role: str = "member") -> None:
    c.db.write(
        lambda s: c.orgs.add_member(
            s, actor_user_id=actor, org_id=org, user_id=user, role=role, idempotency_key=new_key()
        )
    )


def authorize(c, org, actor, subject, cap=None, sources=None, subject_type="member", valid_until=None):
    return c.db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=actor,
            org_id=org,
            subject_type=subject_type,
            subject_id=subject,
            monthly_cap_credits=cap,
            capture_sources=sources,
            valid_from=None,
            valid_until=valid_until,
            idempotency_key=new_key(),
        )
    )


def link(c, org, actor, guild):
    return c.db.write(
        lambda s: c.orgs.link_server(
            s,
            actor_user_id=actor,
            actor_manages_guild=True,
            org_id=org,
            guild_id=guild,
            idempotency_key=new_key(),
        )
    )


def start(c, key: str | None = None, **fields):
    fields.setdefault("meeting_id", "m-" + secrets.token_hex(6))
    req = UsageRequest(**fields)
    return write_or_record_decline(c.db, c.usage, lambda s: c.usage.start_recording(s, req, key or new_key()))


def finish(c, rec_id, seconds, key=None):
    return c.db.write(lambda s: c.usage.finish_recording(s, OPERATOR, rec_id, seconds, key or new_key()))


def available(c, account_id: str) -> int:
    return c.db.read(lambda s: c.ledger.balance(s, account_id).available)


def personal_account(c, user: str) -> str:
    return c.db.write(lambda s: c.accounts.get_or_create(s, "personal", user).id)


def org_account(c, org_id: str) -> str:
    return c.db.read(lambda s: c.orgs.get_org(s, org_id).billing_account_id)


def outbox(c, event_type: str, account_id: str | None) -> list[OutboxEntry]:
    return c.db.read(
        lambda s: list(
            s.execute(
                select(OutboxEntry).where(
                    OutboxEntry.type == event_type, OutboxEntry.account_id == account_id
                )
            ).scalars()
        )
    )


def spend_server_allowance(c, guild: str, user: str) -> None:
    """Record the server's whole free allowance (960 credits) in 90-minute meetings."""
    for _ in range(10):
        rec = start(
            c,
            context="server",
            capture_source="discord_voice",
            user_id=user,
            guild_id=guild,
            requested_minutes=90,
        )
        assert rec.payer_kind == "server"
        finish(c, rec.id, {"voice": 90 * 60})
    rec = start(
        c,
        context="server",
        capture_source="discord_voice",
        user_id=user,
        guild_id=guild,
        requested_minutes=60,
    )
    finish(c, rec.id, {"voice": 60 * 60})


# ---------------------------------------------------------------------- D8: server meetings


def test_server_meeting_is_paid_by_the_server_wallet_never_the_starter(c):
    guild, starter = snowflake(), snowflake()
    mine = personal_account(c, starter)
    rec = start(
        c,
        context="server",
        capture_source="discord_voice",
        user_id=starter,
        guild_id=guild,
        requested_minutes=45,
    )
    assert rec.payer_kind == "server" and rec.authorization_id is None
    assert rec.reason == f"Server {guild} credits"
    done = finish(c, rec.id, {"voice": 44 * 60 + 1})
    assert done.charged == 45 * MC and done.status == "finished"
    assert available(c, rec.payer_account_id) == (960 - 45) * MC
    assert c.db.read(lambda s: c.ledger.statement(s, mine).data) == []


def test_server_meeting_falls_back_to_the_org_when_the_server_allowance_is_spent(c):
    owner, guild, starter = snowflake(), snowflake(), snowflake()
    org = make_org(c, owner, "Acme", credits=500)
    link(c, org, owner, guild)
    auth = authorize(c, org, owner, guild, cap=200, subject_type="server")
    spend_server_allowance(c, guild, starter)
    rec = start(
        c,
        context="server",
        capture_source="discord_voice",
        user_id=starter,
        guild_id=guild,
        requested_minutes=60,
    )
    assert rec.payer_account_id == org_account(c, org) and rec.authorization_id == auth.id
    assert rec.reason == f"Acme authorization for Server {guild}, 140 of 200 credits left this month"
    assert [a.code for a in rec.attempts] == ["insufficient_credits"]
    finish(c, rec.id, {"voice": 30 * 60})
    assert available(c, org_account(c, org)) == 470 * MC


def test_server_meeting_without_org_declines_and_never_charges_a_personal_wallet(c):
    guild, starter = snowflake(), snowflake()
    mine = personal_account(c, starter)
    spend_server_allowance(c, guild, starter)
    with pytest.raises(UsageDeclined) as err:
        start(
            c,
            context="server",
            capture_source="discord_voice",
            user_id=starter,
            guild_id=guild,
            requested_minutes=10,
        )
    assert err.value.code == "insufficient_credits"
    assert "0 credits available" in err.value.message
    assert c.db.read(lambda s: c.ledger.statement(s, mine).data) == []
    server = c.db.read(lambda s: c.accounts.find(s, "server", guild).id)
    assert len(outbox(c, "hold.declined", server)) == 1
    with pytest.raises(ValidationFailed):  # and a funding source cannot be picked for server work
        start(
            c,
            context="server",
            capture_source="discord_voice",
            user_id=starter,
            guild_id=guild,
            requested_minutes=10,
            funding_source="personal",
        )


# ---------------------------------------------------------------------- D8: personal recordings


def test_personal_recording_uses_personal_wallet_first_then_authorizations_in_preferred_order(c):
    owner_a, owner_b, user = snowflake(), snowflake(), snowflake()
    acme = make_org(c, owner_a, "Acme")
    globex = make_org(c, owner_b, "Globex")
    add_member(c, acme, owner_a, user)
    add_member(c, globex, owner_b, user)
    a_auth = authorize(c, acme, owner_a, user, cap=600)
    g_auth = authorize(c, globex, owner_b, user)
    rec = start(c, context="personal", capture_source="desktop", user_id=user, requested_minutes=30)
    assert rec.payer_kind == "personal" and rec.reason == "personal Free allowance"
    # 90 minutes is above Personal Free's 60: the first authorization (by creation) pays
    rec = start(c, context="personal", capture_source="desktop", user_id=user, requested_minutes=90)
    assert rec.authorization_id == a_auth.id
    assert rec.reason == "Acme authorization for you, 510 of 600 credits left this month"
    assert rec.attempts[0].code == "recording_too_long"
    c.db.write(lambda s: c.usage.set_default_order(s, user, [g_auth.id, a_auth.id], new_key()))
    rec = start(c, context="personal", capture_source="web", user_id=user, requested_minutes=90)
    assert rec.authorization_id == g_auth.id and rec.reason == "Globex authorization for you, no monthly cap"
    sources = c.db.read(lambda s: c.usage.funding_sources(s, user))
    assert [s.id for s in sources] == ["personal", g_auth.id, a_auth.id]
    assert sources[2].held == 90 * MC and sources[2].left == 510 * MC


def test_user_in_two_organizations_picks_the_source_per_recording(c):
    owner_a, owner_b, user = snowflake(), snowflake(), snowflake()
    acme, globex = make_org(c, owner_a, "Acme"), make_org(c, owner_b, "Globex")
    add_member(c, acme, owner_a, user)
    add_member(c, globex, owner_b, user)
    authorize(c, acme, owner_a, user)
    g_auth = authorize(c, globex, owner_b, user, cap=100)
    rec = start(
        c,
        context="personal",
        capture_source="mobile",
        user_id=user,
        requested_minutes=20,
        funding_source=g_auth.id,
    )
    assert rec.payer_account_id == org_account(c, globex) and rec.authorization_id == g_auth.id
    # a picked source that cannot cover is declined, never silently replaced
    with pytest.raises(UsageDeclined) as err:
        start(
            c,
            context="personal",
            capture_source="mobile",
            user_id=user,
            requested_minutes=90,
            funding_source=g_auth.id,
        )
    assert err.value.code == "cap_reached" and len(err.value.attempts) == 1
    assert len(outbox(c, "authorization.cap_reached", org_account(c, globex))) == 1
    # someone else's authorization is not a funding source of this user: bad input
    stranger = snowflake()
    with pytest.raises(FundingSourceNotHeld):
        start(
            c,
            context="personal",
            capture_source="mobile",
            user_id=stranger,
            requested_minutes=5,
            funding_source=g_auth.id,
        )


def test_member_cap_reached_mid_month_declines_with_reason_and_tries_the_next_source(c):
    owner_a, owner_b, user = snowflake(), snowflake(), snowflake()
    acme, globex = make_org(c, owner_a, "Acme"), make_org(c, owner_b, "Globex")
    add_member(c, acme, owner_a, user)
    add_member(c, globex, owner_b, user)
    a_auth = authorize(c, acme, owner_a, user, cap=150)
    g_auth = authorize(c, globex, owner_b, user)
    c.db.write(lambda s: c.usage.set_default_order(s, user, [a_auth.id, g_auth.id], new_key()))
    first = start(c, context="personal", capture_source="desktop", user_id=user, requested_minutes=120)
    assert first.authorization_id == a_auth.id
    finish(c, first.id, {"mic": 100 * 60, "system": 101 * 60})  # wall clock 101 min: 101 credits
    second = start(c, context="personal", capture_source="desktop", user_id=user, requested_minutes=90)
    assert second.authorization_id == g_auth.id
    cap_attempt = next(a for a in second.attempts if a.authorization_id == a_auth.id)
    assert cap_attempt.code == "cap_reached"
    assert "monthly cap reached, 49 of 150 credits left this month, 90 needed" in cap_attempt.reason
    assert len(outbox(c, "authorization.cap_reached", org_account(c, acme))) == 1
    assert c.db.read(lambda s: c.ledger.cap_usage(s, a_auth.id, "2026-11")).used == 101 * MC


def test_revoked_authorization_lets_the_open_hold_finish_and_declines_new_holds(c, clock):
    owner, user = snowflake(), snowflake()
    org = make_org(c, owner, "Acme")
    add_member(c, org, owner, user)
    auth = authorize(c, org, owner, user, cap=300)
    rec = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=90,
        funding_source=auth.id,
    )
    c.db.write(
        lambda s: c.orgs.revoke_authorization(
            s, actor_user_id=owner, authorization_id=auth.id, idempotency_key=new_key()
        )
    )
    clock.advance(timedelta(minutes=80))
    extended = c.db.write(lambda s: c.usage.extend_recording(s, OPERATOR, rec.id, 30, new_key()))
    assert extended.approved_minutes == 120 and extended.held == 120 * MC
    done = finish(c, rec.id, {"mic": 110 * 60})
    assert done.charged == 110 * MC and done.authorization_id == auth.id
    with pytest.raises(UsageDeclined) as err:
        start(
            c,
            context="personal",
            capture_source="desktop",
            user_id=user,
            requested_minutes=10,
            funding_source=auth.id,
        )
    assert err.value.code == "authorization_revoked"
    # without a pick, the revoked authorization is simply not in the chain any more
    rec = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=90,
        allow_partial=True,
    )
    assert rec.payer_kind == "personal" and rec.approved_minutes == 60


def test_expired_authorization_is_declined_when_picked_and_skipped_otherwise(c, clock):
    owner, user = snowflake(), snowflake()
    org = make_org(c, owner, "Acme")
    add_member(c, org, owner, user)
    auth = authorize(c, org, owner, user, valid_until=clock.now() + timedelta(days=2))
    assert (
        start(
            c, context="personal", capture_source="web", user_id=user, requested_minutes=90
        ).authorization_id
        == auth.id
    )
    clock.advance(timedelta(days=3))
    with pytest.raises(UsageDeclined) as err:
        start(
            c,
            context="personal",
            capture_source="web",
            user_id=user,
            requested_minutes=30,
            funding_source=auth.id,
        )
    assert err.value.code == "authorization_expired" and "expired on 2026-11-03" in err.value.message
    with pytest.raises(UsageDeclined) as err:
        start(c, context="personal", capture_source="web", user_id=user, requested_minutes=90)
    assert err.value.code == "recording_too_long" and err.value.status == 422


def test_capture_sources_limit_an_authorization(c):
    owner, user = snowflake(), snowflake()
    org = make_org(c, owner, "Acme")
    add_member(c, org, owner, user)
    authorize(c, org, owner, user, sources=["desktop", "upload"])
    assert (
        start(c, context="personal", capture_source="desktop", user_id=user, requested_minutes=90).payer_kind
        == "organization"
    )
    with pytest.raises(UsageDeclined) as err:
        start(c, context="personal", capture_source="mobile", user_id=user, requested_minutes=90)
    reasons = [a.reason for a in err.value.attempts]
    assert reasons == [
        "personal Free allowance: recordings up to 60 min, 90 requested",
        "Acme authorization for you: mobile recordings are not allowed",
    ]


def test_partial_approval_gives_a_known_time_budget(c):
    user = snowflake()
    rec = start(c, context="personal", capture_source="quick_capture", user_id=user, requested_minutes=50)
    finish(c, rec.id, {"mic": 50 * 60})
    rec = start(
        c,
        context="personal",
        capture_source="quick_capture",
        user_id=user,
        requested_minutes=60,
        allow_partial=True,
    )
    assert rec.partial is False and rec.approved_minutes == 60
    finish(c, rec.id, {"mic": 59 * 60})
    rec = start(
        c,
        context="personal",
        capture_source="quick_capture",
        user_id=user,
        requested_minutes=30,
        allow_partial=True,
    )
    assert rec.partial and rec.approved_minutes == 11 and rec.held == 11 * MC


# ---------------------------------------------------------------------- D8: uploads


def test_upload_sized_from_declared_duration_settled_at_probed_duration_once(c):
    user = snowflake()
    rec = start(
        c, context="personal", capture_source="upload", user_id=user, declared_duration_seconds=25 * 60 + 5
    )
    assert rec.kind == "upload" and rec.approved_minutes == 26
    done = finish(c, rec.id, {"upload": 24 * 60 + 30}, key="settle-1")
    again = finish(c, rec.id, {"upload": 24 * 60 + 30}, key="settle-2")  # a processing retry
    assert done.charged == again.charged == 25 * MC
    assert available(c, rec.payer_account_id) == (120 - 25) * MC


def test_upload_sized_from_file_size_is_capped_at_the_longest_recording(c):
    user = snowflake()
    # 500 MB at 32 kbit/s would be days of audio: held for the payer's longest recording
    rec = start(c, context="personal", capture_source="upload", user_id=user, file_size_bytes=500_000_000)
    assert rec.approved_minutes == 60
    # a probed file longer than the hold but within the limit extends it, here up to 60 min
    done = finish(c, rec.id, {"upload": 42 * 60})
    assert done.charged == 42 * MC and done.shortfall == 0


def test_probed_upload_longer_than_declared_extends_its_hold_on_the_same_payer(c):
    user = snowflake()
    rec = start(
        c, context="personal", capture_source="upload", user_id=user, declared_duration_seconds=20 * 60
    )
    done = finish(c, rec.id, {"upload": 25 * 60})
    assert (done.charged, done.shortfall, done.held) == (25 * MC, 0, 25 * MC)


def test_upload_longer_than_its_hold_charges_what_is_held_and_records_the_shortfall(c):
    user = snowflake()
    for minutes in (60, 50):
        first = start(
            c,
            context="personal",
            capture_source="upload",
            user_id=user,
            declared_duration_seconds=minutes * 60,
        )
        finish(c, first.id, {"upload": minutes * 60})
    rec = start(
        c,
        context="personal",
        capture_source="upload",
        user_id=user,
        declared_duration_seconds=30 * 60,
        allow_partial=True,
    )
    assert rec.approved_minutes == 10 and rec.partial
    done = finish(c, rec.id, {"upload": 12 * 60})  # the 2 more minutes cannot be held: nothing left
    assert done.charged == 10 * MC and done.shortfall == 2 * MC
    assert available(c, rec.payer_account_id) == 0


def test_upload_longer_than_the_limit_is_refused_and_released(c):
    user = snowflake()
    rec = start(
        c, context="personal", capture_source="upload", user_id=user, declared_duration_seconds=20 * 60
    )
    done = finish(c, rec.id, {"upload": 75 * 60})
    assert done.status == "failed" and done.charged == 0
    assert available(c, rec.payer_account_id) == 120 * MC


# ---------------------------------------------------------------------- D8: sharing and re-processing


def test_shared_personal_meeting_charges_nothing_and_keeps_its_payer(c):
    user, guild = snowflake(), snowflake()
    rec = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=20,
        meeting_id="m-share-" + user,
    )
    finish(c, rec.id, {"mic": 20 * 60})
    before = available(c, rec.payer_account_id)
    view = c.db.write(
        lambda s: c.usage.record_share(
            s, meeting_id=rec.meeting_id, guild_id=guild, user_id=user, idempotency_key=new_key()
        )
    )
    assert view.payer_account_id == rec.payer_account_id and view.shared_with_guilds == [guild]
    assert available(c, rec.payer_account_id) == before
    assert c.db.read(lambda s: c.accounts.find(s, "server", guild)) is None
    with pytest.raises(PermissionDenied):
        c.db.write(
            lambda s: c.usage.record_share(
                s, meeting_id=rec.meeting_id, guild_id=guild, user_id=snowflake(), idempotency_key=new_key()
            )
        )


def test_work_in_a_server_on_a_shared_meeting_is_paid_by_the_server(c):
    user, guild, asker = snowflake(), snowflake(), snowflake()
    rec = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=5,
        meeting_id="m-ask-" + user,
    )
    finish(c, rec.id, {"mic": 60})
    c.db.write(
        lambda s: c.usage.record_share(
            s, meeting_id=rec.meeting_id, guild_id=guild, user_id=user, idempotency_key=new_key()
        )
    )
    event = EventRequest(
        event_id="ev-" + asker,
        event_type="ask_question",
        context="server",
        user_id=asker,
        guild_id=guild,
        meeting_id=rec.meeting_id,
    )
    charged = c.db.write(lambda s: c.usage.charge_event(s, event))
    again = c.db.write(lambda s: c.usage.charge_event(s, event))
    assert charged == again and charged.payer_kind == "server" and charged.charged == 500
    assert available(c, charged.payer_account_id) == 960 * MC - 500
    assert available(c, rec.payer_account_id) == 119 * MC
    attribution = c.db.read(lambda s: c.usage.meeting_attribution(s, OPERATOR, rec.meeting_id))
    assert attribution.payer_account_id == rec.payer_account_id


def test_owner_reprocessing_uses_the_original_payer_while_valid_else_the_current_chain(c):
    owner, user = snowflake(), snowflake()
    org = make_org(c, owner, "Acme")
    add_member(c, org, owner, user)
    auth = authorize(c, org, owner, user)
    meeting = "m-re-" + user
    rec = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=30,
        meeting_id=meeting,
        funding_source=auth.id,
    )
    finish(c, rec.id, {"mic": 30 * 60})
    again = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=30,
        meeting_id=meeting,
    )
    assert again.authorization_id == auth.id  # without the rule the personal wallet would pay
    c.db.write(lambda s: c.usage.cancel_recording(s, OPERATOR, again.id, new_key()))
    c.db.write(
        lambda s: c.orgs.revoke_authorization(
            s, actor_user_id=owner, authorization_id=auth.id, idempotency_key=new_key()
        )
    )
    third = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=30,
        meeting_id=meeting,
    )
    assert third.payer_kind == "personal"
    assert c.db.read(lambda s: c.usage.meeting_attribution(s, OPERATOR, meeting)).authorization_id == auth.id


def test_processing_failure_releases_the_hold_and_charges_nothing(c):
    user = snowflake()
    rec = start(c, context="personal", capture_source="upload", user_id=user, declared_duration_seconds=600)
    failed = c.db.write(lambda s: c.usage.fail_recording(s, OPERATOR, rec.id, new_key()))
    assert failed.status == "failed" and failed.charged == 0
    assert available(c, rec.payer_account_id) == 120 * MC
    assert c.db.read(lambda s: c.ledger.get_hold(s, rec.hold_id)).status == "released"


# ---------------------------------------------------------------------- decisions and bad input


def test_quote_matches_start_and_places_nothing(c):
    owner, user = snowflake(), snowflake()
    org = make_org(c, owner, "Acme")
    add_member(c, org, owner, user)
    authorize(c, org, owner, user, cap=600)
    req = UsageRequest(context="personal", capture_source="desktop", user_id=user, requested_minutes=90)
    quote = c.db.write(lambda s: c.usage.quote(s, req))
    assert quote.approved and quote.reason == "Acme authorization for you, 510 of 600 credits left this month"
    assert available(c, org_account(c, org)) == 1000 * MC
    rec = c.db.write(lambda s: c.usage.start_recording(s, req, "q-start"))
    assert (rec.payer_account_id, rec.reason) == (quote.payer_account_id, quote.reason)
    assert (
        c.db.write(lambda s: c.usage.start_recording(s, req, "q-start")) == rec
    )  # a retry: the first decision


def test_bad_input_is_rejected_with_stable_codes_and_writes_nothing(c):
    user = snowflake()
    cases = [
        (dict(capture_source="zoom", requested_minutes=10), "unknown_capture_source"),
        (dict(capture_source="desktop", requested_minutes=0), "validation_error"),
        (dict(capture_source="desktop", requested_minutes=-5), "validation_error"),
        (dict(capture_source="desktop", requested_minutes=100_000), "recording_too_long"),
        (dict(capture_source="desktop", requested_minutes=61), "recording_too_long"),
        (dict(capture_source="discord_voice", requested_minutes=10), "capture_source_context_mismatch"),
        (
            dict(capture_source="desktop", requested_minutes=10, funding_source="auth_nothing"),
            "funding_source_not_held",
        ),
    ]
    for fields, code in cases:
        with pytest.raises(
            (ValidationFailed, UnknownCaptureSource, RecordingTooLong, FundingSourceNotHeld, UsageDeclined)
        ) as err:
            start(c, context="personal", user_id=user, **fields)
        assert err.value.code == code, fields
    assert c.db.read(lambda s: c.accounts.find(s, "personal", user)) is None


def test_a_member_never_changes_their_own_authorization(c):
    owner, admin = snowflake(), snowflake()
    org = make_org(c, owner, "Acme")
    add_member(c, org, owner, admin, role="billing_admin")
    auth = authorize(c, org, owner, admin, cap=100)
    with pytest.raises(CannotChangeOwnAuthorization):
        c.db.write(
            lambda s: c.orgs.update_authorization(
                s,
                actor_user_id=admin,
                authorization_id=auth.id,
                monthly_cap_credits=10_000,
                idempotency_key=new_key(),
            )
        )
    with pytest.raises(CannotChangeOwnAuthorization):
        authorize(c, org, admin, admin)
    assert c.db.read(lambda s: c.orgs.authorization_view(s, auth.id)).monthly_cap_credits == 100
    # An owner controls the organization's money and may authorize themselves.
    assert authorize(c, org, owner, owner, cap=50).monthly_cap_credits == 50


def test_the_org_statement_names_the_member_where_the_member_reads_for_you(c):
    owner, user = snowflake(), snowflake()
    acme = make_org(c, owner, "Acme")
    add_member(c, acme, owner, user)
    auth = authorize(c, acme, owner, user, cap=100)
    from chronote_billing.people import service as people

    c.db.write(lambda s: people.remember(s, user, "Cy", c.clock.now()))
    rec = start(
        c,
        context="personal",
        capture_source="desktop",
        user_id=user,
        requested_minutes=10,
        funding_source=auth.id,
    )
    assert rec.reason.startswith("Acme authorization for you")
    finish(c, rec.id, {"desktop": 5 * 60})
    lines = c.db.read(lambda s: c.ledger.statement(s, org_account(c, acme))).data
    (capture,) = [line for line in lines if line.kind == "capture"]
    # Named as the organization's admins know the member, computed when charged: no stale
    # "credits left" figure from when the hold was placed (issue: stale reasons).
    assert capture.reason == "Desktop recording, 5 min · Acme authorization for Cy"
    assert "for you" not in " ".join(line.reason for line in lines)


def test_chat_to_speech_is_limited_per_month_by_the_payers_plan(c, clock):
    guild, user = snowflake(), snowflake()

    def speak(n: int):
        event = EventRequest(
            event_id=f"tts-{guild}-{clock.now():%Y%m}-{n}",
            event_type="chat_to_speech_message",
            context="server",
            user_id=user,
            guild_id=guild,
        )
        return write_or_record_decline(c.db, c.usage, lambda s: c.usage.charge_event(s, event))

    for n in range(50):  # Server Free: 50 chat-to-speech messages a month
        assert speak(n).charged == 50
    with pytest.raises(UsageDeclined) as err:
        speak(50)
    assert err.value.code == "feature_limit_reached" and err.value.status == 402
    clock.advance(timedelta(days=31))
    assert speak(51).charged == 50  # a new month, a new quota
