"""Billing account rules: one account (and one wallet) per payer, created on first need."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chronote_billing.core.clock import Clock, system_clock
from chronote_billing.core.errors import NotFound, ValidationFailed
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.service import LedgerService

from .models import AccountKind, BillingAccount
from .schemas import AccountView

SNOWFLAKE = re.compile(r"^[0-9]{15,21}$")


def check_snowflake(value: str, what: str) -> str:
    """Discord ids are 17-20 digit snowflakes; a little slack either side for old and future ids."""
    value = str(value).strip()
    if not SNOWFLAKE.match(value):
        raise ValidationFailed(
            f"{what} must be a Discord id (a 15-21 digit number), got '{value}'.", field=what
        )
    return value


class AccountService:
    def __init__(self, clock: Clock = system_clock, ledger: LedgerService | None = None) -> None:
        self.clock = clock
        self.ledger = ledger or LedgerService(clock)

    def get(self, session: Session, account_id: str) -> BillingAccount:
        account = session.get(BillingAccount, account_id)
        if account is None:
            raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
        return account

    def find(self, session: Session, kind: AccountKind | str, owner_ref: str) -> BillingAccount | None:
        return session.execute(
            select(BillingAccount).where(
                BillingAccount.kind == str(kind), BillingAccount.owner_ref == owner_ref
            )
        ).scalar()

    @staticmethod
    def lock_row(session: Session, account_id: str) -> None:
        """Lock the billing account's own row (not its wallet): requests about one account that
        must not interleave (duplicate recording starts, linking a server) queue here."""
        session.execute(select(BillingAccount.id).where(BillingAccount.id == account_id).with_for_update())

    def get_or_create(
        self, session: Session, kind: AccountKind | str, owner_ref: str, display_name: str | None = None
    ) -> BillingAccount:
        kind = AccountKind(kind)
        if kind in (AccountKind.PERSONAL, AccountKind.SERVER):
            owner_ref = check_snowflake(
                owner_ref, "discord_user_id" if kind == AccountKind.PERSONAL else "guild_id"
            )
        existing = self.find(session, kind, owner_ref)
        if existing is not None:
            if display_name and existing.display_name != display_name:
                existing.display_name = display_name
            return existing
        account_id = new_id("acct")
        default_name = {
            AccountKind.PERSONAL: f"User {owner_ref}",
            AccountKind.SERVER: f"Server {owner_ref}",
            AccountKind.ORGANIZATION: f"Organization {owner_ref}",
        }[kind]
        try:
            with session.begin_nested():
                wallet_id = self.ledger.open_wallet(session, account_id)
                account = BillingAccount(
                    id=account_id,
                    kind=str(kind),
                    owner_ref=owner_ref,
                    display_name=display_name or default_name,
                    wallet_account_id=wallet_id,
                    stripe_customer_id=None,
                    created_at=self.clock.now(),
                )
                session.add(account)
                session.flush()
        except IntegrityError:
            # Someone else created it between our read and our insert: use theirs.
            found = self.find(session, kind, owner_ref)
            if found is None:
                raise
            return found
        return account

    @staticmethod
    def view(account: BillingAccount) -> AccountView:
        return AccountView(
            id=account.id,
            kind=account.kind,
            owner_ref=account.owner_ref,
            display_name=account.display_name,
            stripe_customer_id=account.stripe_customer_id,
            created_at=account.created_at,
        )
