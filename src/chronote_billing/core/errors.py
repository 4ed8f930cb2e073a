"""Domain errors with stable codes.

The domain never imports the web framework: each error carries a stable ``code`` and the
HTTP status it maps to, and the edges (API, CLI, portal) translate it.
"""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    code = "billing_error"
    status = 400
    title = "Request could not be completed"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(BillingError):
    code = "validation_error"
    status = 422
    title = "Invalid request"


class NotFound(BillingError):
    code = "not_found"
    status = 404
    title = "Not found"


class InsufficientCredits(BillingError):
    code = "insufficient_credits"
    status = 402
    title = "Insufficient credits"


class HoldExpired(BillingError):
    code = "hold_expired"
    status = 409
    title = "Hold expired"


class HoldAlreadySettled(BillingError):
    code = "hold_already_settled"
    status = 409
    title = "Hold already settled"


class IdempotencyConflict(BillingError):
    code = "idempotency_conflict"
    status = 409
    title = "Idempotency key reused with different parameters"


class Conflict(BillingError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PermissionDenied(BillingError):
    code = "permission_denied"
    status = 403
    title = "Permission denied"


class Unauthenticated(BillingError):
    code = "unauthenticated"
    status = 401
    title = "Authentication required"


class CapReached(BillingError):
    code = "cap_reached"
    status = 402
    title = "Spend cap reached"


class ExternalServiceError(BillingError):
    code = "payment_provider_error"
    status = 502
    title = "Payment provider error"
