"""The usage domain's errors, each with a stable code (problem+json at the HTTP edge)."""

from __future__ import annotations

from typing import Any

from chronote_billing.core.errors import BillingError, Conflict, ValidationFailed

from .attribution import GATE_CODES, Attempt, FundingSourceNotHeld
from .schemas import PayerAttempt

__all__ = [
    "CaptureSourceMismatch",
    "FundingSourceNotAllowed",
    "FundingSourceNotHeld",
    "HoldManagedByRecording",
    "RecordingAlreadySettled",
    "RecordingExpired",
    "RecordingInProgress",
    "RecordingNotOpen",
    "RecordingTooLong",
    "UsageDeclined",
]


class RecordingTooLong(ValidationFailed):
    code = "recording_too_long"
    title = "Longer than the plan allows"


class CaptureSourceMismatch(ValidationFailed):
    code = "capture_source_context_mismatch"
    title = "Capture source does not match the context"


class FundingSourceNotAllowed(ValidationFailed):
    code = "funding_source_not_allowed"
    title = "A funding source cannot be picked here"


class RecordingNotOpen(Conflict):
    code = "recording_not_open"
    title = "Recording already settled"


class RecordingAlreadySettled(Conflict):
    """A finish with other figures than the ones a recording was settled with (decision 0032)."""

    code = "recording_already_settled"
    title = "Recording already settled with other figures"


class RecordingExpired(Conflict):
    """Nobody extended the recording's hold in time: the ledger released its credits."""

    code = "recording_expired"
    title = "Recording's hold expired"


class RecordingInProgress(Conflict):
    code = "recording_in_progress"
    title = "This meeting is already being recorded"


class HoldManagedByRecording(Conflict):
    """A hold placed by the usage API is settled through its recording (decision 0029)."""

    code = "hold_managed_by_recording"
    title = "Hold belongs to a recording"


class UsageDeclined(BillingError):
    """No payer in the chain could cover the request; ``attempts`` says why, payer by payer."""

    code = "usage_declined"
    status = 402
    title = "Usage declined"

    def __init__(self, message: str, attempts: list[PayerAttempt], **details: Any) -> None:
        codes = {a.code for a in attempts}
        super().__init__(message, attempts=[a.model_dump() for a in attempts], **details)
        self.attempts = attempts
        if len(codes) == 1:
            self.code = codes.pop()
        if self.code in GATE_CODES:
            self.status = 422
            self.title = "Not allowed by the plan"
        # Set by the service: what the decline notification says and its dedupe key.
        self.notice: dict[str, Any] | None = None

    @property
    def notify(self) -> bool:
        """Plan gates (too long, source not allowed) are bad input; everything else is a decline."""
        return self.notice is not None and any(a.code not in GATE_CODES for a in self.attempts)


def payer_attempts(attempts: tuple[Attempt, ...] | list[Attempt]) -> list[PayerAttempt]:
    return [
        PayerAttempt(
            funding_source=a.funding_source,
            account_id=a.account_id,
            authorization_id=a.authorization_id,
            code=a.code,
            reason=a.reason,
        )
        for a in attempts
    ]
