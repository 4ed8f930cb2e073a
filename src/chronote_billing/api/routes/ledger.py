"""Accounts, balances, statements, grants and raw holds (the ledger's HTTP edge)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_manage, require_view
from chronote_billing.accounts.schemas import AccountView
from chronote_billing.api.deps import (
    AccountsRead,
    ContainerDep,
    GrantsWrite,
    HoldsWrite,
    IdempotencyKeyDep,
)
from chronote_billing.api.responses import problems
from chronote_billing.balances import service as balances
from chronote_billing.container import Container
from chronote_billing.core.errors import (
    HoldAlreadySettled,
    HoldExpired,
    InsufficientCredits,
    NotFound,
)
from chronote_billing.core.validation import (
    BIGINT_MAX,
    AccountId,
    HoldId,
    Metadata,
    Moment,
    Name,
    OwnerRef,
    Reason,
    TtlSeconds,
)
from chronote_billing.ledger.schemas import (
    BalanceView,
    EconomicStatementPage,
    GrantView,
    HoldView,
    StatementPage,
)
from chronote_billing.ledger.service import CaptureExceedsHold
from chronote_billing.usage.errors import HoldManagedByRecording

router = APIRouter(prefix="/v1", tags=["ledger"])

# Strict: "100" or 1.0 is not an amount of money.
Millicredits = Annotated[
    int, Field(gt=0, le=10**15, strict=True, description="Millicredits (1 credit = 1,000).")
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountLookup(StrictModel):
    kind: Literal["personal", "server", "organization"]
    owner_ref: OwnerRef = Field(description="Discord user id, guild id or organization id.")
    display_name: Name | None = None


class GrantCreate(StrictModel):
    amount: Millicredits
    source: Literal["promotional", "comp", "adjustment", "migration"] = "promotional"
    expires_at: Moment | None = None
    effective_at: Moment | None = None
    priority: Annotated[StrictInt, Field(ge=0, le=100)] = 50
    description: Reason = ""


class HoldCreate(StrictModel):
    amount: Millicredits
    expires_at: Moment | None = Field(default=None, description="When the hold lapses if not settled.")
    ttl_seconds: TtlSeconds | None = Field(default=None, description="Alternative to expires_at.")
    allow_partial: StrictBool = Field(
        default=False, description="Approve what is available instead of declining."
    )
    reason: Reason = ""
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_expiry(self) -> HoldCreate:
        if (self.expires_at is None) == (self.ttl_seconds is None):
            raise ValueError("give exactly one of expires_at or ttl_seconds")
        return self


class HoldExtend(StrictModel):
    amount: int = Field(
        default=0, ge=0, le=10**15, strict=True, description="Additional millicredits to reserve."
    )
    expires_at: Moment | None = None
    ttl_seconds: TtlSeconds | None = None
    allow_partial: StrictBool = False


class HoldCapture(StrictModel):
    amount: int = Field(
        ge=0, le=10**15, strict=True, description="Millicredits to charge; at most what is held."
    )
    reason: Reason | None = None


class HoldRelease(StrictModel):
    reason: Reason | None = None


@router.post(
    "/accounts",
    response_model=AccountView,
    summary="Find or create the billing account of a payer",
    responses=problems(),
)
def resolve_account(body: AccountLookup, container: ContainerDep, principal: AccountsRead) -> AccountView:
    def work(session: Session) -> AccountView:
        account = container.accounts.get_or_create(session, body.kind, body.owner_ref, body.display_name)
        # Raises before commit: nobody creates or renames an account they may not manage.
        require_manage(session, principal, account)
        return container.accounts.view(account)

    return container.db.write(work)


@router.get(
    "/accounts/{account_id}",
    response_model=AccountView,
    summary="A billing account",
    responses=problems(NotFound),
)
def get_account(account_id: AccountId, container: ContainerDep, principal: AccountsRead) -> AccountView:
    def work(session: Session) -> AccountView:
        account = container.accounts.get(session, account_id)
        require_view(session, principal, account)
        return container.accounts.view(account)

    return container.db.read(work)


@router.get(
    "/accounts/{account_id}/balance",
    response_model=BalanceView,
    summary="Available, held and per-grant balance",
    responses=problems(NotFound),
)
def get_balance(account_id: AccountId, container: ContainerDep, principal: AccountsRead) -> BalanceView:
    def work(session: Session) -> BalanceView:
        account = container.accounts.get(session, account_id)
        require_view(session, principal, account)
        return balances.available_balance(session, container.ledger, account, container.catalog)

    return container.db.read(work)


@router.get(
    "/accounts/{account_id}/statement",
    response_model=EconomicStatementPage,
    summary="Statement: one line per charge, purchase, expiry, refund or freeze; holds in progress as reserved",
    responses=problems(NotFound),
)
def get_economic_statement(
    account_id: AccountId,
    container: ContainerDep,
    principal: AccountsRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[
        str | None,
        Query(
            max_length=40,
            pattern=r"^[A-Za-z0-9_:.-]+$",
            description="Cursor: the last line id of the previous page.",
        ),
    ] = None,
) -> EconomicStatementPage:
    def work(session: Session) -> EconomicStatementPage:
        account = container.accounts.get(session, account_id)
        require_view(session, principal, account)
        return balances.statement(
            session, container.ledger, account, container.catalog, limit, starting_after
        )

    return container.db.read(work)


@router.get(
    "/accounts/{account_id}/ledger",
    response_model=StatementPage,
    summary="Transfer log (operators): every transfer, pending and void ones included",
    description="The ledger's own record, one line per transfer: a hold is a pending transfer per "
    "grant it draws on, a capture posts part of each and voids the rest. `amount` is signed by "
    "what the phase does to the wallet (a pending transfer reserves, a void returns). People and "
    "client statements read `/statement`.",
    responses=problems(NotFound),
)
def get_statement(
    account_id: AccountId,
    container: ContainerDep,
    principal: AccountsRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[
        int | None, Query(ge=0, le=BIGINT_MAX, description="Cursor: the last line id of the previous page.")
    ] = None,
) -> StatementPage:
    def work(session: Session) -> StatementPage:
        require_view(session, principal, container.accounts.get(session, account_id))
        return container.ledger.statement(session, account_id, limit, starting_after)

    return container.db.read(work)


@router.get(
    "/accounts/{account_id}/grants",
    response_model=list[GrantView],
    summary="Grants, newest first",
    responses=problems(NotFound),
)
def list_grants(account_id: AccountId, container: ContainerDep, principal: AccountsRead) -> list[GrantView]:
    def work(session: Session) -> list[GrantView]:
        require_view(session, principal, container.accounts.get(session, account_id))
        return container.ledger.list_grants(session, account_id)

    return container.db.read(work)


@router.post(
    "/accounts/{account_id}/grants",
    response_model=GrantView,
    status_code=201,
    summary="Issue a promotional grant (operators only)",
    responses=problems(NotFound),
)
def create_grant(
    account_id: AccountId,
    body: GrantCreate,
    container: ContainerDep,
    principal: GrantsWrite,
    key: IdempotencyKeyDep,
) -> GrantView:
    def work(session: Session) -> GrantView:
        container.accounts.get(session, account_id)
        return container.ledger.issue_grant(
            session,
            account_id=account_id,
            amount=body.amount,
            source=body.source,
            idempotency_key=key,
            cause_type="admin",
            cause_id=principal.key_id,
            priority=body.priority,
            effective_at=body.effective_at,
            expires_at=body.expires_at,
            description=body.description,
        )

    return container.db.write(work)


@router.post(
    "/accounts/{account_id}/holds",
    response_model=HoldView,
    status_code=201,
    summary="Place a hold",
    responses=problems(NotFound, InsufficientCredits),
)
def place_hold(
    account_id: AccountId,
    body: HoldCreate,
    container: ContainerDep,
    principal: HoldsWrite,
    key: IdempotencyKeyDep,
) -> HoldView:
    container.db.read(lambda s: require_manage(s, principal, container.accounts.get(s, account_id)))
    # The hold is a unit of work of its own: one round trip on PostgreSQL (decision 0023).
    return container.ledger.commit_place_hold(
        container.db,
        account_id=account_id,
        amount=body.amount,
        expires_at=body.expires_at,
        ttl_seconds=body.ttl_seconds,
        idempotency_key=key,
        allow_partial=body.allow_partial,
        reason=body.reason,
        metadata=body.metadata,
    )


def _hold_access(container: Container, principal: Principal, session: Session, hold_id: str) -> None:
    """Settling a raw hold needs the right to manage its account; a recording's hold is settled
    through its recording, which keeps the recording and its hold in step (decision 0029)."""
    hold = container.ledger.get_hold(session, hold_id)
    require_manage(session, principal, container.accounts.get(session, hold.account_id))
    recording = hold.metadata.get("usage_record_id")
    if recording:
        raise HoldManagedByRecording(
            f"Hold '{hold_id}' belongs to recording '{recording}'; extend, finish or cancel the recording.",
            hold_id=hold_id,
            recording_id=recording,
        )


@router.get("/holds/{hold_id}", response_model=HoldView, summary="A hold", responses=problems(NotFound))
def get_hold(hold_id: HoldId, container: ContainerDep, principal: AccountsRead) -> HoldView:
    def work(session: Session) -> HoldView:
        hold = container.ledger.get_hold(session, hold_id)
        require_view(session, principal, container.accounts.get(session, hold.account_id))
        return hold

    return container.db.read(work)


@router.post(
    "/holds/{hold_id}/extend",
    response_model=HoldView,
    summary="Reserve more and/or keep a hold longer",
    responses=problems(
        NotFound, InsufficientCredits, HoldExpired, HoldAlreadySettled, HoldManagedByRecording
    ),
)
def extend_hold(
    hold_id: HoldId,
    body: HoldExtend,
    container: ContainerDep,
    principal: HoldsWrite,
    key: IdempotencyKeyDep,
) -> HoldView:
    def work(session: Session) -> HoldView:
        _hold_access(container, principal, session, hold_id)
        return container.ledger.extend_hold(
            session,
            hold_id=hold_id,
            idempotency_key=key,
            amount=body.amount,
            expires_at=body.expires_at,
            ttl_seconds=body.ttl_seconds,
            allow_partial=body.allow_partial,
        )

    return container.db.write(work)


@router.post(
    "/holds/{hold_id}/capture",
    response_model=HoldView,
    summary="Capture at most the held amount; the rest is released",
    responses=problems(NotFound, HoldExpired, HoldAlreadySettled, CaptureExceedsHold, HoldManagedByRecording),
)
def capture_hold(
    hold_id: HoldId,
    body: HoldCapture,
    container: ContainerDep,
    principal: HoldsWrite,
    key: IdempotencyKeyDep,
) -> HoldView:
    container.db.read(lambda s: _hold_access(container, principal, s, hold_id))
    return container.ledger.commit_capture_hold(
        container.db, hold_id=hold_id, amount=body.amount, idempotency_key=key, reason=body.reason
    )


@router.post(
    "/holds/{hold_id}/release",
    response_model=HoldView,
    summary="Release a hold: nothing is charged",
    responses=problems(NotFound, HoldExpired, HoldAlreadySettled, HoldManagedByRecording),
)
def release_hold(
    hold_id: HoldId,
    container: ContainerDep,
    principal: HoldsWrite,
    key: IdempotencyKeyDep,
    body: HoldRelease | None = None,
) -> HoldView:
    def work(session: Session) -> HoldView:
        _hold_access(container, principal, session, hold_id)
        return container.ledger.release_hold(
            session, hold_id=hold_id, idempotency_key=key, reason=body.reason if body else None
        )

    return container.db.write(work)


__all__ = ["router"]
