"""Checking what a caller asks for, before anything is read: contexts, sources, ids, minutes and
the size of an upload. Pure functions; each refusal has a stable code."""

from __future__ import annotations

from typing import Any

from chronote_billing.accounts.service import check_snowflake
from chronote_billing.catalog.service import CAPTURE_SOURCES, PERSONAL_SOURCES, SERVER_SOURCES, RateCard
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.orgs.service import UnknownCaptureSource

from .attribution import Ask
from .errors import CaptureSourceMismatch, FundingSourceNotAllowed, RecordingTooLong
from .schemas import EventRequest, UsageRequest

MAX_MINUTES_PER_REQUEST = 24 * 60
MAX_SOURCES = 4


def check_request(request: UsageRequest) -> UsageRequest:
    """A recording or upload request, normalized (ids trimmed, no funding source on server work)."""
    req = request.model_copy()
    if req.context not in ("personal", "server"):
        raise ValidationFailed(
            f"context must be 'personal' or 'server', not '{req.context}'.", field="context"
        )
    if req.capture_source not in CAPTURE_SOURCES:
        raise UnknownCaptureSource(
            f"Unknown capture source '{req.capture_source}'; expected one of {', '.join(CAPTURE_SOURCES)}.",
            field="capture_source",
        )
    expected = SERVER_SOURCES if req.context == "server" else PERSONAL_SOURCES
    if req.capture_source not in expected:
        raise CaptureSourceMismatch(
            f"A {req.context} recording comes from {', '.join(expected)}, not {req.capture_source}.",
            field="capture_source",
        )
    _check_who(req)
    if req.meeting_id is not None and not (1 <= len(req.meeting_id.strip()) <= 128):
        raise ValidationFailed("meeting_id must be 1 to 128 characters.", field="meeting_id")
    if req.capture_source == "upload":
        if req.requested_minutes is not None:
            raise ValidationFailed(
                "Uploads are sized from declared_duration_seconds or file_size_bytes, not requested_minutes.",
                field="requested_minutes",
            )
        if req.declared_duration_seconds is None and req.file_size_bytes is None:
            raise ValidationFailed(
                "An upload needs declared_duration_seconds or file_size_bytes.",
                field="declared_duration_seconds",
            )
        if req.declared_duration_seconds is not None:
            _check_positive(
                req.declared_duration_seconds, "declared_duration_seconds", MAX_MINUTES_PER_REQUEST * 60
            )
        if req.file_size_bytes is not None:
            _check_positive(req.file_size_bytes, "file_size_bytes", 10**12)
    else:
        if req.declared_duration_seconds is not None or req.file_size_bytes is not None:
            raise ValidationFailed(
                "Only uploads are sized from a duration or a file size.", field="capture_source"
            )
        if req.requested_minutes is None:
            raise ValidationFailed("requested_minutes is required.", field="requested_minutes")
        check_minutes(req.requested_minutes, "requested_minutes")
    return req


def check_event(request: EventRequest, rate: RateCard) -> EventRequest:
    req = request.model_copy()
    rate.metered_cost(req.event_type)
    if req.context not in ("personal", "server"):
        raise ValidationFailed(
            f"context must be 'personal' or 'server', not '{req.context}'.", field="context"
        )
    req.user_id = check_snowflake(req.user_id, "user_id")
    if not req.event_id.strip():
        raise ValidationFailed("event_id is required.", field="event_id")
    if req.context == "server":
        if not req.guild_id:
            raise ValidationFailed("Work in a server needs its guild_id.", field="guild_id")
        if req.funding_source not in (None, "server"):
            raise FundingSourceNotAllowed(
                "Work in a server is paid by the server's chain; a funding source cannot be picked.",
                field="funding_source",
            )
        req.funding_source = None
    if req.guild_id:
        req.guild_id = check_snowflake(req.guild_id, "guild_id")
    return req


def _check_who(req: UsageRequest) -> None:
    if req.user_id is not None:
        req.user_id = check_snowflake(req.user_id, "user_id")
    elif req.context != "server":
        # Only a server's auto-recorded meeting has nobody behind it (decision 0029).
        raise ValidationFailed("Personal work needs the acting user.", field="user_id")
    if req.context == "server":
        if not req.guild_id:
            raise ValidationFailed("A server meeting needs its guild_id.", field="guild_id")
        if req.funding_source not in (None, "server"):
            raise FundingSourceNotAllowed(
                "Server meetings are paid by the server's chain; a funding source cannot be picked.",
                field="funding_source",
            )
        req.funding_source = None
    if req.guild_id:
        req.guild_id = check_snowflake(req.guild_id, "guild_id")


def requested_minutes(req: UsageRequest, rate: RateCard) -> int:
    if req.capture_source != "upload":
        return req.requested_minutes or 0
    if req.declared_duration_seconds is not None:
        return -(-req.declared_duration_seconds // 60)
    # Integer ceilings all the way: bits over bits per minute.
    return max(1, -(-(req.file_size_bytes or 0) * 8 // (rate.upload_conservative_kbps * 1000 * 60)))


def recording_ask(req: UsageRequest, rate: RateCard) -> Ask:
    return Ask(
        context=req.context,
        capture_source=req.capture_source,
        funding_source=req.funding_source,
        allow_partial=req.allow_partial,
        minutes=requested_minutes(req, rate),
        sized_from_file=req.capture_source == "upload" and req.declared_duration_seconds is None,
    )


def event_ask(req: EventRequest, rate: RateCard) -> Ask:
    return Ask(
        context=req.context,
        capture_source=None,
        funding_source=req.funding_source,
        amount=rate.metered_cost(req.event_type),
        event_type=req.event_type,
    )


def _check_positive(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationFailed(f"{field} must be a positive whole number.", field=field)
    if value > maximum:
        raise RecordingTooLong(f"{field} is above the longest possible recording.", field=field)
    return value


def check_minutes(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationFailed(f"{field} must be a positive whole number of minutes.", field=field)
    if value > MAX_MINUTES_PER_REQUEST:
        raise RecordingTooLong(
            f"{field} is above any plan's longest recording ({MAX_MINUTES_PER_REQUEST} min at most).",
            field=field,
        )
    return value


def check_seconds(seconds_by_source: Any) -> dict[str, int]:
    """Seconds per audio source, as settled and compared (sources sorted, whole seconds)."""
    if not isinstance(seconds_by_source, dict) or not seconds_by_source:
        raise ValidationFailed("seconds_by_source must name at least one source.", field="seconds_by_source")
    if len(seconds_by_source) > MAX_SOURCES:
        raise ValidationFailed(f"A recording has at most {MAX_SOURCES} sources.", field="seconds_by_source")
    cleaned: dict[str, int] = {}
    for name, value in seconds_by_source.items():
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise ValidationFailed("Source names are 1 to 32 characters.", field="seconds_by_source")
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= MAX_MINUTES_PER_REQUEST * 60
        ):
            raise ValidationFailed(
                f"Seconds for source '{name}' must be a whole number from 0 to {MAX_MINUTES_PER_REQUEST * 60}.",
                field="seconds_by_source",
            )
        cleaned[name] = value
    return dict(sorted(cleaned.items()))
