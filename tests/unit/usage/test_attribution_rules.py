"""The payer decision (D8, decision 0030) as a pure function: one case per row of the payer
table and per decline reason, with no database, no clock and no organization."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from chronote_billing.catalog.service import load_catalog
from chronote_billing.ledger.rules import approvable
from chronote_billing.usage.attribution import (
    PAYER_TABLE,
    AccountFacts,
    Approval,
    Ask,
    AuthorizationFacts,
    Decline,
    FundingSourceNotHeld,
    OrganizationLimits,
    OriginalPayer,
    Snapshot,
    WalletFacts,
    decide,
    payer_chain,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
UNIT = 1000  # millicredits per minute of meeting audio
CATALOG = load_catalog()
ORG = OrganizationLimits(240, {"chat_to_speech_per_month": None})


def account(kind: str = "personal", credits: int = 0, plan: str | None = None, **kw: object) -> AccountFacts:
    plan_id = plan or f"{kind}_free"
    return AccountFacts(
        id=f"acct_{kind}",
        kind=kind,
        owner_ref="100000000000000001" if kind == "personal" else "200000000000000002",
        display_name="Cy" if kind == "personal" else "Study Hall",
        plan=CATALOG.plan(plan_id),
        wallet=WalletFacts(credits * UNIT),
        **kw,  # type: ignore[arg-type]
    )


def auth(
    auth_id: str = "auth_a",
    org: str = "Acme",
    cap: int | None = None,
    used: int = 0,
    org_credits: int = 1000,
    subject_type: str = "member",
    **kw: object,
) -> AuthorizationFacts:
    fields: dict[str, object] = dict(
        id=auth_id,
        org_id=f"org_{org.lower()}",
        org_name=org,
        org_account_id=f"acct_{org.lower()}",
        subject_type=subject_type,
        subject_id="100000000000000001",
        subject_name="Cy",
        monthly_cap=None if cap is None else cap * UNIT,
        capture_sources=None,
        valid_from=NOW - timedelta(days=30),
        valid_until=None,
        revoked_at=None,
        created_at=NOW - timedelta(days=30),
        member_role="member",
        cap_used=used * UNIT,
        cap_held=0,
        org_wallet=WalletFacts(org_credits * UNIT),
    )
    fields.update(kw)
    return AuthorizationFacts(**fields)  # type: ignore[arg-type]


def snap(requester: AccountFacts, *auths: AuthorizationFacts, **kw: object) -> Snapshot:
    return Snapshot(now=NOW, requester=requester, authorizations=auths, organization=ORG, **kw)  # type: ignore[arg-type]


def personal(minutes: int = 30, source: str = "desktop", **kw: object) -> Ask:
    return Ask(context="personal", capture_source=source, funding_source=None, minutes=minutes, **kw)  # type: ignore[arg-type]


def server(minutes: int = 30) -> Ask:
    return Ask(context="server", capture_source="discord_voice", funding_source=None, minutes=minutes)


def run(ask: Ask, snapshot: Snapshot) -> Approval | Decline:
    return decide(ask, payer_chain(ask, snapshot), UNIT)


def approved(verdict: Approval | Decline) -> Approval:
    assert isinstance(verdict, Approval), verdict
    return verdict


def declined(verdict: Approval | Decline) -> Decline:
    assert isinstance(verdict, Decline), verdict
    return verdict


# ------------------------------------------------------------------------ the rows of D8


def test_the_table_is_data_with_one_row_per_situation() -> None:
    assert set(PAYER_TABLE) == {
        "server meeting",
        "personal work, source picked",
        "personal work, re-processing by the owner",
        "personal work",
    }


@pytest.mark.parametrize(
    ("server_credits", "org_credits", "linked", "payer", "code"),
    [
        (960, 1000, True, "server", None),  # the server's own allowance first
        (10, 1000, True, "auth_s", None),  # then the organization through its authorization
        (10, 1000, False, None, "insufficient_credits"),  # never anyone's personal wallet
        (10, 5, True, None, "insufficient_credits"),
    ],
)
def test_server_meeting_chain(
    server_credits: int, org_credits: int, linked: bool, payer: str | None, code: str | None
) -> None:
    auths = (
        (auth("auth_s", subject_type="server", org_credits=org_credits, subject_name="Study Hall"),)
        if linked
        else ()
    )
    verdict = run(server(30), snap(account("server", server_credits), *auths))
    if payer is None:
        assert declined(verdict).code == code
        assert all(a.funding_source in ("server", "auth_s") for a in declined(verdict).attempts)
    else:
        assert approved(verdict).payer.funding_source == payer
    if payer == "auth_s":
        assert approved(verdict).reason == "Acme authorization for Study Hall, no monthly cap"


def test_personal_work_uses_the_personal_wallet_then_authorizations_in_preferred_order() -> None:
    cy = account("personal", 5)
    a, b = auth("auth_a", "Acme"), auth("auth_b", "Globex", created_at=NOW - timedelta(days=60))
    # Oldest first without a preference...
    assert approved(run(personal(30), snap(cy, a, b))).payer.funding_source == "auth_b"
    # ...the user's order when they have one; the personal wallet always first.
    assert (
        approved(run(personal(30), snap(cy, a, b, preferred_order=("auth_a",)))).payer.funding_source
        == "auth_a"
    )
    assert approved(run(personal(5), snap(cy, a, b))).payer.funding_source == "personal"


def test_a_picked_source_is_used_or_declined_never_replaced() -> None:
    cy = account("personal", 500)
    a = auth("auth_a", cap=10)
    picked = replace(personal(30), funding_source="auth_a")
    verdict = declined(run(picked, snap(cy, a)))
    assert verdict.code == "cap_reached" and [x.funding_source for x in verdict.attempts] == ["auth_a"]
    assert (
        approved(run(replace(personal(30), funding_source="personal"), snap(cy, a))).payer.funding_source
        == "personal"
    )
    with pytest.raises(FundingSourceNotHeld):
        run(replace(personal(30), funding_source="auth_nope"), snap(cy, a))
    with pytest.raises(FundingSourceNotHeld):  # an authorization of an organization the user left
        run(picked, snap(cy, replace(a, member_role=None)))


def test_reprocessing_uses_the_original_payer_while_valid_else_the_current_chain() -> None:
    cy = account("personal", 500)
    a = auth("auth_a")
    original = OriginalPayer("personal", "100000000000000001", "acct_acme", "auth_a")
    assert approved(run(personal(30), snap(cy, a, original=original))).payer.funding_source == "auth_a"
    revoked = replace(a, revoked_at=NOW - timedelta(minutes=1))
    assert (
        approved(run(personal(30), snap(cy, revoked, original=original))).payer.funding_source == "personal"
    )
    someone_else = replace(original, owner_user_id="100000000000000009")
    assert approved(run(personal(30), snap(cy, a, original=someone_else))).payer.funding_source == "personal"


def test_upload_sized_from_its_file_is_cut_to_each_payers_limit() -> None:
    cy = account("personal", 500)
    verdict = approved(run(personal(500, source="upload", sized_from_file=True), snap(cy)))
    assert verdict.minutes == 60 and verdict.partial  # Personal Free records 60 minutes at most


# ------------------------------------------------------------------------ decline reasons


@pytest.mark.parametrize(
    ("ask", "snapshot", "code", "reason"),
    [
        (
            personal(30),
            snap(account("personal", 10)),
            "insufficient_credits",
            "10 credits available, 30 needed",
        ),
        (
            replace(personal(30), funding_source="auth_a"),
            snap(account("personal"), auth(cap=50, used=40)),
            "cap_reached",
            "monthly cap reached, 10 of 50 credits left this month, 30 needed",
        ),
        (
            personal(90),
            snap(account("personal", 500)),
            "recording_too_long",
            "recordings up to 60 min, 90 requested",
        ),
        (
            replace(personal(30), funding_source="auth_a"),
            snap(account("personal"), auth(capture_sources=("web",))),
            "capture_source_not_allowed",
            "desktop recordings are not allowed",
        ),
        (
            replace(personal(30), funding_source="auth_a"),
            snap(account("personal"), auth(revoked_at=NOW - timedelta(hours=1))),
            "authorization_revoked",
            "revoked",
        ),
        (
            replace(personal(30), funding_source="auth_a"),
            snap(account("personal"), auth(valid_until=NOW - timedelta(hours=1))),
            "authorization_expired",
            "expired on",
        ),
        (
            replace(personal(30), funding_source="auth_a"),
            snap(account("personal"), auth(valid_from=NOW + timedelta(hours=1))),
            "authorization_not_yet_valid",
            "valid from",
        ),
        (
            Ask("server", None, None, amount=50, event_type="chat_to_speech_message"),
            snap(account("server", 100, quota_used=50)),
            "feature_limit_reached",
            "50 chat-to-speech messages a month on this plan, all used",
        ),
    ],
)
def test_each_decline_reason(ask: Ask, snapshot: Snapshot, code: str, reason: str) -> None:
    verdict = declined(run(ask, snapshot))
    assert verdict.code == code
    assert reason in verdict.message and verdict.message.startswith("Declined: ")


def test_payers_failing_in_different_ways_decline_as_usage_declined_with_every_attempt() -> None:
    verdict = declined(run(personal(30), snap(account("personal", 1), auth(cap=5))))
    assert verdict.code == "usage_declined"
    assert [(a.funding_source, a.code) for a in verdict.attempts] == [
        ("personal", "insufficient_credits"),
        ("auth_a", "cap_reached"),
    ]


# ------------------------------------------------------------------------ budgets and reasons


def test_partial_approval_picks_the_payer_able_to_approve_the_most_whole_minutes() -> None:
    ask = personal(30, allow_partial=True)
    verdict = approved(run(ask, snap(account("personal", 7), auth(cap=12))))
    assert (verdict.payer.funding_source, verdict.minutes, verdict.amount, verdict.partial) == (
        "auth_a",
        12,
        12_000,
        True,
    )
    assert [a.funding_source for a in verdict.attempts] == ["personal"]
    nothing = declined(run(ask, snap(account("personal", 0))))
    assert nothing.code == "insufficient_credits"


def test_a_due_allowance_counts_as_available() -> None:
    fresh = replace(account("personal"), wallet=WalletFacts(0, 120 * UNIT))
    assert approved(run(personal(30), snap(fresh))).amount == 30 * UNIT


def test_reasons_say_who_pays_for_the_person_and_for_the_payers_statement() -> None:
    verdict = approved(
        run(replace(personal(30), funding_source="auth_a"), snap(account("personal"), auth(cap=600, used=60)))
    )
    assert verdict.reason == "Acme authorization for you, 510 of 600 credits left this month"
    assert verdict.statement_reason == "Acme authorization for Cy, 510 of 600 credits left this month"


def test_approvable_is_the_balance_within_the_caps_room() -> None:
    assert approvable(5_000, None) == 5_000
    assert approvable(5_000, 2_000) == 2_000
    assert approvable(1_000, 2_000) == 1_000
