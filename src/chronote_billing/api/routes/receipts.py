"""An account's invoices and receipts (decision 0043), read from Stripe."""

from __future__ import annotations

from fastapi import APIRouter

from chronote_billing.api.deps import AccountsRead, ContainerDep
from chronote_billing.api.responses import PAYMENT_PROVIDER_ERROR, problems
from chronote_billing.core.errors import NotFound
from chronote_billing.core.validation import AccountId
from chronote_billing.stripe_sync.receipts import BillingDocumentList

router = APIRouter(prefix="/v1", tags=["billing"])


@router.get(
    "/accounts/{account_id}/invoices",
    response_model=BillingDocumentList,
    summary="Invoices and receipts of the account, newest first",
    description="Number, date, amount, tax, status and links to Stripe's hosted invoice and PDF, "
    "or to the receipt of a payment no invoice covers. Read from Stripe on each call.",
    responses=problems(NotFound, PAYMENT_PROVIDER_ERROR),
)
def list_invoices(
    account_id: AccountId, container: ContainerDep, principal: AccountsRead
) -> BillingDocumentList:
    return container.billing.documents(principal, account_id)


__all__ = ["router"]
