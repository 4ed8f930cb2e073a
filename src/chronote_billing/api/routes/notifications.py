"""Low-balance alerts, auto-recharge settings and the notification outbox (its HTTP edge)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy.orm import Session

from chronote_billing.access.service import require_manage
from chronote_billing.api.deps import (
    AccountsRead,
    BillingWrite,
    ContainerDep,
    IdempotencyKeyDep,
    Operator,
)
from chronote_billing.api.responses import problems
from chronote_billing.core.errors import NotFound
from chronote_billing.core.validation import AccountId, CatalogRef, Count, NotificationId, WholeNumber
from chronote_billing.notifications.auto_recharge import InvalidAutoRechargeLimit
from chronote_billing.notifications.schemas import (
    AlertSettingsView,
    AutoRechargeView,
    OutboxEntryView,
    OutboxPage,
)
from chronote_billing.notifications.service import InvalidThreshold, UnknownPack

router = APIRouter(prefix="/v1", tags=["notifications"])


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertSettingsUpdate(StrictModel):
    low_balance_threshold_credits: WholeNumber | None = Field(
        description="Whole credits; Chronote gets wallet.balance_low when the available balance falls "
        "below it (once per crossing). null turns the alert off.",
    )


class AutoRechargeUpdate(StrictModel):
    enabled: StrictBool
    threshold_credits: WholeNumber = Field(
        description="Whole credits; the pack is bought when the available balance falls below it."
    )
    pack_id: CatalogRef = Field(description="A credit pack of the catalog, e.g. credits_5000.")
    monthly_limit_count: Count | None = Field(
        default=None, description="At most this many purchases a calendar month (UTC); at least 1."
    )
    monthly_limit_amount: Count | None = Field(
        default=None,
        description="At most this much money a calendar month, in the currency's minor unit; at least one pack.",
    )


@router.get(
    "/accounts/{account_id}/alert-settings",
    response_model=AlertSettingsView,
    summary="The low-balance alert threshold",
    responses=problems(NotFound),
)
def get_alert_settings(
    account_id: AccountId, container: ContainerDep, principal: AccountsRead
) -> AlertSettingsView:
    def work(session: Session) -> AlertSettingsView:
        require_manage(session, principal, container.accounts.get(session, account_id))
        return container.notifications.get_settings(session, account_id).alerts

    return container.db.read(work)


@router.put(
    "/accounts/{account_id}/alert-settings",
    response_model=AlertSettingsView,
    summary="Set or turn off the low-balance alert threshold",
    responses=problems(NotFound, InvalidThreshold),
)
def put_alert_settings(
    account_id: AccountId,
    body: AlertSettingsUpdate,
    container: ContainerDep,
    principal: BillingWrite,
    key: IdempotencyKeyDep,
) -> AlertSettingsView:
    def work(session: Session) -> AlertSettingsView:
        require_manage(session, principal, container.accounts.get(session, account_id))
        return container.notifications.set_alert_settings(
            session,
            account_id=account_id,
            low_balance_threshold_credits=body.low_balance_threshold_credits,
            idempotency_key=key,
        )

    return container.db.write(work)


@router.get(
    "/accounts/{account_id}/auto-recharge",
    response_model=AutoRechargeView,
    summary="Auto-recharge settings and this month's purchases",
    responses=problems(NotFound),
)
def get_auto_recharge(
    account_id: AccountId, container: ContainerDep, principal: AccountsRead
) -> AutoRechargeView:
    def work(session: Session) -> AutoRechargeView:
        require_manage(session, principal, container.accounts.get(session, account_id))
        return container.notifications.get_settings(session, account_id).auto_recharge

    return container.db.read(work)


@router.put(
    "/accounts/{account_id}/auto-recharge",
    response_model=AutoRechargeView,
    summary="Turn auto-recharge on or off, with a monthly limit",
    responses=problems(NotFound, InvalidThreshold, UnknownPack, InvalidAutoRechargeLimit),
    description="When the available balance falls below the threshold, the chosen pack is bought "
    "off-session with the account's saved card, at most once per crossing and never beyond the monthly "
    "limit (a number of purchases and/or an amount; one is required to turn it on). Credits arrive "
    "when Stripe confirms the payment. A declined card turns it off until it is saved again.",
)
def put_auto_recharge(
    account_id: AccountId,
    body: AutoRechargeUpdate,
    container: ContainerDep,
    principal: BillingWrite,
    key: IdempotencyKeyDep,
) -> AutoRechargeView:
    def work(session: Session) -> AutoRechargeView:
        require_manage(session, principal, container.accounts.get(session, account_id))
        return container.notifications.set_auto_recharge(
            session,
            account_id=account_id,
            enabled=body.enabled,
            threshold_credits=body.threshold_credits,
            pack_id=body.pack_id,
            idempotency_key=key,
            monthly_limit_count=body.monthly_limit_count,
            monthly_limit_amount=body.monthly_limit_amount,
        )

    return container.db.write(work)


@router.get(
    "/notifications",
    response_model=OutboxPage,
    summary="The notification outbox, newest first (operators)",
    responses=problems(),
)
def list_notifications(
    container: ContainerDep,
    principal: Operator,
    status: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    kind: Annotated[Literal["event", "job"] | None, Query()] = None,
    account_id: Annotated[AccountId | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[
        NotificationId | None, Query(description="Cursor: the last id of the previous page.")
    ] = None,
) -> OutboxPage:
    return container.db.read(
        lambda s: container.notifications.list_outbox(
            s,
            status=status,
            kind=kind,
            account_id=account_id,
            limit=limit,
            starting_after=starting_after,
        )
    )


@router.get(
    "/notifications/{notification_id}",
    response_model=OutboxEntryView,
    summary="One outbox entry (operators)",
    responses=problems(NotFound),
)
def get_notification(
    notification_id: NotificationId, container: ContainerDep, principal: Operator
) -> OutboxEntryView:
    return container.db.read(lambda s: container.notifications.get_entry(s, notification_id))


__all__ = ["router"]
