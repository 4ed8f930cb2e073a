"""Runway (decision 0046): when an account's credits run out at the last 14 days' pace."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from chronote_billing.access.service import require_view
from chronote_billing.api.deps import AccountsRead, ContainerDep
from chronote_billing.api.responses import problems
from chronote_billing.core.errors import NotFound
from chronote_billing.core.validation import AccountId
from chronote_billing.runway.schemas import RunwayView

router = APIRouter(prefix="/v1", tags=["accounts"])


@router.get(
    "/accounts/{account_id}/runway",
    response_model=RunwayView,
    summary="When the credits run out, and when authorizations reach their caps",
    description="At the last 14 days' pace: the date the available credits run out (spent in burn "
    "order, each grant lapsing at its expiry), the daily spending of those 14 days, and for an "
    "organization the date each authorization reaches its monthly cap. A cold start (less than "
    "3 days of history) says so and gives no date.",
    responses=problems(NotFound),
)
def get_runway(account_id: AccountId, container: ContainerDep, principal: AccountsRead) -> RunwayView:
    def work(session: Session) -> RunwayView:
        account = container.accounts.get(session, account_id)
        require_view(session, principal, account)
        return container.runway.runway(session, account)

    return container.db.read(work)


__all__ = ["router"]
