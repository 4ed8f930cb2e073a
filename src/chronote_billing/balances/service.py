"""The one available figure (decision 0039): the ledger's balance plus the allowance that is due
now and not issued yet.

Allowances are issued on first need (0015), so a new free account's wallet is empty until its
first recording; every read that tells a person or a client what is left (the balance route,
funding sources, entitlements, the portal, the CLI, the statement) asks here, so all of them
show the same number.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime

from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import Catalog
from chronote_billing.core.clock import as_utc
from chronote_billing.credits_text import whole
from chronote_billing.ledger.schemas import BalanceView, EconomicStatementPage
from chronote_billing.ledger.service import LedgerService
from chronote_billing.plans.service import allowance_not_issued


def allowance_due(session: Session, account: BillingAccount, now: datetime, catalog: Catalog) -> int:
    """Millicredits of allowance in force now that the ledger has not issued yet."""
    due = allowance_not_issued(session, account, now, catalog)
    return due.amount if due is not None else 0


def available_balance(
    session: Session, ledger: LedgerService, account: BillingAccount, catalog: Catalog
) -> BalanceView:
    """The ledger's balance, with the allowance due counted in ``available``."""
    balance = ledger.balance(session, account.id)
    due = allowance_due(session, account, ledger.clock.now(), catalog)
    if not due:
        return balance
    return balance.model_copy(update={"available": balance.available + due, "allowance_due": due})


def available(session: Session, ledger: LedgerService, account: BillingAccount, catalog: Catalog) -> int:
    return available_balance(session, ledger, account, catalog).available


def statement(
    session: Session,
    ledger: LedgerService,
    account: BillingAccount,
    catalog: Catalog,
    limit: int = 50,
    starting_after: str | None = None,
) -> EconomicStatementPage:
    """The economic statement (decision 0038) with the same available figure as the balance."""
    page = ledger.economic_statement(session, account.id, limit, starting_after)
    due = allowance_due(session, account, ledger.clock.now(), catalog)
    return page.model_copy(update={"available": page.available + due}) if due else page


STATEMENT_CSV_FIELDS = (
    "line_id",
    "date_utc",
    "type",
    "description",
    "credits",
    "millicredits",
    "frozen_millicredits",
    "balance_credits",
    "balance_millicredits",
)
MAX_CSV_LINES = 10_000


def statement_csv(session: Session, ledger: LedgerService, account: BillingAccount) -> str:
    """The whole economic statement as CSV, newest first: whole credits rounded toward zero
    (decision 0039, as plain numbers for spreadsheets) beside the exact millicredits."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_CSV_FIELDS)
    cursor: str | None = None
    written = 0
    while written < MAX_CSV_LINES:
        page = ledger.economic_statement(session, account.id, 500, cursor)
        for line in page.data:
            writer.writerow(
                [
                    line.id,
                    as_utc(line.created_at).strftime("%Y-%m-%d %H:%M:%S"),
                    line.type,
                    line.description,
                    whole(line.amount),
                    line.amount,
                    line.frozen_amount,
                    whole(line.balance_after),
                    line.balance_after,
                ]
            )
        written += len(page.data)
        if not page.has_more or page.next_cursor is None:
            break
        cursor = page.next_cursor
    return out.getvalue()
