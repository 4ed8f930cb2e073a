"""Usage records, meeting attributions and their views: the persistence the recording and event
services share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, recording_permission
from chronote_billing.core.errors import NotFound, PermissionDenied
from chronote_billing.ledger.service import LedgerService

from .attribution import Approval
from .models import MeetingAttribution, UsageRecord
from .schemas import PayerAttempt, RecordingView


def insert_record(
    session: Session,
    *,
    record_id: str,
    kind: str,
    status: str,
    approval: Approval,
    context: str,
    capture_source: str | None,
    event_type: str | None,
    event_id: str | None,
    user_id: str | None,
    guild_id: str | None,
    meeting_id: str | None,
    requested_minutes: int,
    requested: int,
    hold_id: str | None,
    debit_id: str | None,
    rate_card_version: str,
    now: datetime,
) -> None:
    payer = approval.payer
    auth = payer.authorization
    assert payer.account.id is not None
    session.execute(
        insert(UsageRecord).values(
            id=record_id,
            kind=kind,
            status=status,
            payer_account_id=payer.account.id,
            payer_kind=payer.account.kind,
            authorization_id=auth.id if auth else None,
            hold_id=hold_id,
            debit_id=debit_id,
            context=context,
            capture_source=capture_source,
            event_type=event_type,
            event_id=event_id,
            user_id=user_id,
            guild_id=guild_id,
            meeting_id=meeting_id,
            reason=approval.reason,
            requested_minutes=requested_minutes,
            approved_minutes=approval.minutes,
            max_minutes=payer.max_minutes if kind != "event" else 0,
            requested=requested,
            held=approval.amount if hold_id else 0,
            charged=approval.amount if debit_id else 0,
            shortfall=0,
            seconds_by_source=None,
            wall_clock_seconds=None,
            rate_card_version=rate_card_version,
            created_at=now,
            finished_at=now if debit_id else None,
        )
    )


def attribute_meeting(
    session: Session,
    *,
    meeting_id: str,
    owner_user_id: str | None,
    context: str,
    guild_id: str | None,
    capture_source: str | None,
    approval: Approval,
    record_id: str,
    now: datetime,
) -> None:
    """The meeting's first recording decides who paid for it, forever."""
    if session.get(MeetingAttribution, meeting_id) is not None:
        return
    payer = approval.payer
    session.execute(
        insert(MeetingAttribution).values(
            meeting_id=meeting_id,
            owner_user_id=owner_user_id,
            context=context,
            guild_id=guild_id,
            capture_source=capture_source,
            payer_account_id=payer.account.id,
            authorization_id=payer.authorization.id if payer.authorization else None,
            usage_record_id=record_id,
            reason=approval.reason,
            created_at=now,
        )
    )


def lock_record(session: Session, recording_id: str) -> UsageRecord:
    found = session.execute(
        select(UsageRecord.id).where(UsageRecord.id == recording_id).with_for_update()
    ).scalar()
    if found is None:
        raise NotFound(f"No recording '{recording_id}'.", recording_id=recording_id)
    return record(session, recording_id)


def record(session: Session, record_id: str) -> UsageRecord:
    rec = session.get(UsageRecord, record_id)
    if rec is None:
        raise NotFound(f"No recording '{record_id}'.", recording_id=record_id)
    session.refresh(rec)
    return rec


def require_recording_access(principal: Principal, rec: UsageRecord) -> None:
    missing = recording_permission(principal, rec.user_id, rec.context, rec.guild_id)
    if missing is not None:
        raise PermissionDenied(
            f"Not allowed on recording '{rec.id}': needs {missing}.",
            missing_permission=missing,
            recording_id=rec.id,
        )


def update_record(session: Session, record_id: str, **values: Any) -> None:
    session.execute(update(UsageRecord).where(UsageRecord.id == record_id).values(**values))


def open_recording(session: Session, meeting_id: str) -> str | None:
    return session.execute(
        select(UsageRecord.id).where(
            UsageRecord.meeting_id == meeting_id, UsageRecord.status == "open", UsageRecord.kind != "event"
        )
    ).scalar()


def view_of(
    session: Session,
    ledger: LedgerService,
    rec: UsageRecord,
    attempts: list[PayerAttempt] | None = None,
    partial: bool | None = None,
) -> RecordingView:
    """A recording as the API shows it. ``partial`` defaults to approved below requested; an
    extension reports whether it got less than it asked for."""
    expires = None
    if rec.hold_id and rec.status == "open":
        expires = ledger.get_hold(session, rec.hold_id).expires_at
    return RecordingView(
        id=rec.id,
        kind=rec.kind,
        status=rec.status,
        payer_account_id=rec.payer_account_id,
        payer_kind=rec.payer_kind,
        authorization_id=rec.authorization_id,
        reason=rec.reason,
        context=rec.context,
        capture_source=rec.capture_source,
        event_type=rec.event_type,
        event_id=rec.event_id,
        user_id=rec.user_id,
        guild_id=rec.guild_id,
        meeting_id=rec.meeting_id,
        requested_minutes=rec.requested_minutes,
        approved_minutes=rec.approved_minutes,
        max_minutes=rec.max_minutes,
        partial=(rec.kind != "event" and rec.approved_minutes < rec.requested_minutes)
        if partial is None
        else partial,
        held=rec.held,
        charged=rec.charged,
        shortfall=rec.shortfall,
        hold_id=rec.hold_id,
        debit_id=rec.debit_id,
        hold_expires_at=expires,
        seconds_by_source=rec.seconds_by_source,
        wall_clock_seconds=rec.wall_clock_seconds,
        rate_card_version=rec.rate_card_version,
        created_at=rec.created_at,
        finished_at=rec.finished_at,
        attempts=attempts or [],
    )
