"""Recordings, uploads, metered events, shares, entitlements, funding sources and usage reports
(D8): the API Chronote's services call around every piece of work."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, may_see_server_credits, require_view
from chronote_billing.api.deps import (
    AccountsRead,
    ContainerDep,
    IdempotencyKeyDep,
    RecordingsRead,
    RecordingsWrite,
    UsageWrite,
)
from chronote_billing.api.responses import USAGE_DECLINES, problems
from chronote_billing.core.errors import HoldAlreadySettled, HoldExpired, NotFound, PermissionDenied
from chronote_billing.core.validation import (
    AccountId,
    AuthorizationId,
    ByteCount,
    DiscordId,
    DurationSeconds,
    EventRef,
    FundingSource,
    Keyword,
    MeetingRef,
    Minutes,
    Moment,
    RecordingId,
    SourceSeconds,
)
from chronote_billing.orgs.service import UnknownCaptureSource
from chronote_billing.usage import reports
from chronote_billing.usage.attribution import FundingSourceNotHeld
from chronote_billing.usage.errors import (
    CaptureSourceMismatch,
    FundingSourceNotAllowed,
    RecordingAlreadySettled,
    RecordingExpired,
    RecordingInProgress,
    RecordingNotOpen,
    RecordingTooLong,
)
from chronote_billing.usage.schemas import (
    AttributionView,
    Decision,
    EntitlementsView,
    EventRequest,
    FundingSourceView,
    RecordingView,
    UsageReport,
    UsageRequest,
)

router = APIRouter(prefix="/v1", tags=["usage"])


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecordingStart(StrictModel):
    context: Keyword = Field(description="personal or server.")
    capture_source: Keyword = Field(
        description="discord_voice, desktop, web, mobile, quick_capture or upload."
    )
    guild_id: DiscordId | None = None
    meeting_id: MeetingRef | None = None
    requested_minutes: Minutes | None = Field(
        default=None, description="Minutes to hold; uploads are sized instead."
    )
    funding_source: FundingSource | None = None
    allow_partial: StrictBool = False
    declared_duration_seconds: DurationSeconds | None = None
    file_size_bytes: ByteCount | None = None


class RecordingExtend(StrictModel):
    additional_minutes: Minutes
    allow_partial: StrictBool = False


class RecordingFinish(StrictModel):
    seconds_by_source: dict[Keyword, SourceSeconds] = Field(
        max_length=16,
        description="Seconds recorded per audio source (at most 4); charged as the wall-clock "
        "minutes of the longest, rounded up once. Uploads send their probed duration.",
    )


class MeteredEvent(StrictModel):
    event_id: EventRef = Field(description="Idempotency: one charge per event id.")
    event_type: Keyword = Field(description="chat_to_speech_message or ask_question.")
    context: Keyword
    guild_id: DiscordId | None = None
    meeting_id: MeetingRef | None = None
    funding_source: FundingSource | None = None


class ShareCreate(StrictModel):
    guild_id: DiscordId


class FundingOrder(StrictModel):
    order: list[AuthorizationId] = Field(
        max_length=100, description="Authorization ids in the order to use them after the personal wallet."
    )


# What the usage engine refuses as bad input, whoever would pay.
USAGE_REQUEST_PROBLEMS = (
    NotFound,
    RecordingTooLong,
    CaptureSourceMismatch,
    FundingSourceNotHeld,
    FundingSourceNotAllowed,
    UnknownCaptureSource,
)


def written(view: RecordingView, status_code: int = 200) -> Response:
    """A recording the service just built, sent as it is: FastAPI would validate it again against
    the response model, which on the hottest routes costs as much as the service's own work
    (docs/performance.md). The model still documents the answer in the OpenAPI document."""
    return Response(view.model_dump_json(), status_code=status_code, media_type="application/json")


def _usage_request(body: RecordingStart, principal: Principal) -> UsageRequest:
    """The request, for the acting user; a server's auto-record names nobody (decision 0029)."""
    if principal.user_id is None and principal.is_auto_recorder:
        if body.context != "server":
            raise PermissionDenied(
                "Without an acting user only a server's auto-recorded meetings can be started.",
                missing_permission="an acting user (Chronote-Acting-User)",
            )
        return UsageRequest(user_id=None, **body.model_dump())
    return UsageRequest(user_id=principal.require_user(), **body.model_dump())


@router.post(
    "/usage/quote",
    response_model=Decision,
    summary="Who would pay, and why (places nothing)",
    responses=problems(USAGE_REQUEST_PROBLEMS),
)
def quote(body: RecordingStart, container: ContainerDep, principal: RecordingsWrite) -> Decision:
    req = _usage_request(body, principal)
    return container.db.read(lambda s: container.usage.quote(s, req))


@router.post(
    "/recordings",
    response_model=RecordingView,
    status_code=201,
    summary="Start a recording or upload: places the hold",
    responses=problems(USAGE_REQUEST_PROBLEMS, USAGE_DECLINES, RecordingInProgress),
)
def start_recording(
    body: RecordingStart, container: ContainerDep, principal: RecordingsWrite, key: IdempotencyKeyDep
) -> Response:
    req = _usage_request(body, principal)
    return written(container.usage_writes.start(req, key), 201)


@router.get(
    "/recordings/{recording_id}",
    response_model=RecordingView,
    summary="A recording and its payer",
    responses=problems(NotFound),
)
def get_recording(
    recording_id: RecordingId, container: ContainerDep, principal: RecordingsRead
) -> RecordingView:
    return container.db.read(lambda s: container.usage.get_recording(s, principal, recording_id))


@router.post(
    "/recordings/{recording_id}/extend",
    response_model=RecordingView,
    summary="Hold more minutes on the same payer",
    responses=problems(
        NotFound, RecordingNotOpen, RecordingExpired, USAGE_DECLINES, HoldExpired, HoldAlreadySettled
    ),
)
def extend_recording(
    recording_id: RecordingId,
    body: RecordingExtend,
    container: ContainerDep,
    principal: RecordingsWrite,
    key: IdempotencyKeyDep,
) -> Response:
    return written(
        container.usage_writes.extend(
            principal, recording_id, body.additional_minutes, key, body.allow_partial
        )
    )


@router.post(
    "/recordings/{recording_id}/finish",
    response_model=RecordingView,
    summary="Charge the actual minutes, release the rest",
    responses=problems(
        NotFound, RecordingNotOpen, RecordingAlreadySettled, RecordingExpired, HoldExpired, HoldAlreadySettled
    ),
)
def finish_recording(
    recording_id: RecordingId,
    body: RecordingFinish,
    container: ContainerDep,
    principal: RecordingsWrite,
    key: IdempotencyKeyDep,
) -> Response:
    return written(container.usage_writes.finish(principal, recording_id, body.seconds_by_source, key))


@router.post(
    "/recordings/{recording_id}/cancel",
    response_model=RecordingView,
    summary="Cancel: nothing is charged",
    responses=problems(NotFound, RecordingNotOpen, HoldAlreadySettled),
)
def cancel_recording(
    recording_id: RecordingId, container: ContainerDep, principal: RecordingsWrite, key: IdempotencyKeyDep
) -> RecordingView:
    return container.db.write(lambda s: container.usage.cancel_recording(s, principal, recording_id, key))


@router.post(
    "/recordings/{recording_id}/fail",
    response_model=RecordingView,
    summary="Processing failed on our side: released, nothing charged",
    responses=problems(NotFound, RecordingNotOpen, HoldAlreadySettled),
)
def fail_recording(
    recording_id: RecordingId, container: ContainerDep, principal: RecordingsWrite, key: IdempotencyKeyDep
) -> RecordingView:
    return container.db.write(lambda s: container.usage.fail_recording(s, principal, recording_id, key))


@router.post(
    "/usage/events",
    response_model=RecordingView,
    status_code=201,
    summary="Charge a metered event (idempotent by event id)",
    responses=problems(USAGE_REQUEST_PROBLEMS, USAGE_DECLINES),
)
def charge_event(body: MeteredEvent, container: ContainerDep, principal: UsageWrite) -> Response:
    req = EventRequest(user_id=principal.require_user(), **body.model_dump())
    return written(container.usage_writes.charge(req), 201)


@router.post(
    "/meetings/{meeting_id}/shares",
    response_model=AttributionView,
    status_code=201,
    summary="Record that a personal meeting was shared with a server (no charge)",
    responses=problems(NotFound),
)
def share_meeting(
    meeting_id: MeetingRef,
    body: ShareCreate,
    container: ContainerDep,
    principal: UsageWrite,
    key: IdempotencyKeyDep,
) -> AttributionView:
    user = principal.require_user()
    return container.db.write(
        lambda s: container.usage.record_share(
            s, meeting_id=meeting_id, guild_id=body.guild_id, user_id=user, idempotency_key=key
        )
    )


@router.get(
    "/meetings/{meeting_id}/attribution",
    response_model=AttributionView,
    summary="Who paid for a meeting",
    responses=problems(NotFound),
)
def meeting_attribution(
    meeting_id: MeetingRef, container: ContainerDep, principal: RecordingsRead
) -> AttributionView:
    return container.db.read(lambda s: container.usage.meeting_attribution(s, principal, meeting_id))


@router.get(
    "/entitlements",
    response_model=EntitlementsView,
    summary="Plan features and what each funding source has left, for the acting user",
    responses=problems(NotFound),
)
def entitlements(
    container: ContainerDep,
    principal: AccountsRead,
    context: Annotated[Literal["personal", "server"], Query()] = "personal",
    guild_id: Annotated[DiscordId | None, Query()] = None,
) -> EntitlementsView:
    user = principal.require_user()
    view = container.db.read(lambda s: container.usage.entitlements(s, user, guild_id, context))
    if context == "server" and not may_see_server_credits(principal, view.guild_id):
        # The plan and its limits gate a meeting for anyone; what is left is the managers' (0029).
        view.funding_sources = []
    return view


@router.get(
    "/funding-sources", response_model=list[FundingSourceView], summary="The acting user's funding sources"
)
def funding_sources(container: ContainerDep, principal: AccountsRead) -> list[FundingSourceView]:
    user = principal.require_user()
    return container.db.read(lambda s: container.usage.funding_sources(s, user))


@router.put(
    "/funding-sources/order",
    response_model=list[FundingSourceView],
    summary="Set the default order of authorizations",
    responses=problems(NotFound, FundingSourceNotHeld),
)
def set_funding_order(
    body: FundingOrder, container: ContainerDep, principal: UsageWrite, key: IdempotencyKeyDep
) -> list[FundingSourceView]:
    user = principal.require_user()
    return container.db.write(lambda s: container.usage.set_default_order(s, user, body.order, key))


GroupBy = Literal["day", "source", "member", "server", "context"]


@router.get(
    "/accounts/{account_id}/usage",
    response_model=UsageReport,
    summary="Usage grouped one way",
    responses=problems(NotFound),
)
def usage_report(
    account_id: AccountId,
    container: ContainerDep,
    principal: AccountsRead,
    group_by: GroupBy = "day",
    since: Moment | None = None,
    until: Moment | None = None,
) -> UsageReport:
    def work(session: Session) -> UsageReport:
        require_view(session, principal, container.accounts.get(session, account_id))
        return reports.usage_report(session, account_id, group_by, since, until)

    return container.db.read(work)


@router.get(
    "/accounts/{account_id}/usage.csv",
    summary="Usage as CSV (lines with reasons, or grouped)",
    responses=problems(NotFound),
)
def usage_csv(
    account_id: AccountId,
    container: ContainerDep,
    principal: AccountsRead,
    group_by: GroupBy | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
) -> Response:
    def work(session: Session) -> str:
        require_view(session, principal, container.accounts.get(session, account_id))
        return reports.usage_csv(session, account_id, group_by, since, until)

    body = container.db.read(work)
    return Response(
        body,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="usage-{account_id}.csv"'},
    )


__all__ = ["router"]
