"""Ledger persistence.

Maintained counters (wallet and grant balances, cap counters) live beside the append-only
transfer log; ``verify`` recomputes every counter from the log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, BigInt, JSONType, UTCDateTime


class LedgerAccount(Base):
    """A wallet (one per billing account) or a system account (issuance, consumption, ...).

    Wallet counters are maintained on every transfer. System accounts receive a transfer from
    every wallet, so keeping their counters in one row would make that row the lock every
    transfer in the system waits on; their balances are derived by ``verify`` and reports.
    """

    __tablename__ = "ledger_accounts"
    __table_args__ = (CheckConstraint("kind in ('wallet', 'system')", name="kind"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    system_code: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    billing_account_id: Mapped[str | None] = mapped_column(String(40), unique=True, nullable=True)
    credits_posted: Mapped[int] = mapped_column(BigInt, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInt, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInt, default=0)
    # Earliest moment something on this wallet falls due (a grant or hold expiry); writes skip
    # the sweep queries entirely until then.
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Grant(Base):
    """A lot of credits inside a wallet: how they came in, when they may be spent, what is left."""

    __tablename__ = "ledger_grants"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 and remaining <= amount", name="remaining_bounds"),
        CheckConstraint("held >= 0 and held <= remaining", name="held_bounds"),
        Index("ix_ledger_grants_wallet_status", "wallet_account_id", "status"),
        Index("ix_ledger_grants_cause", "cause_type", "cause_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet_account_id: Mapped[str] = mapped_column(String(40), ForeignKey("ledger_accounts.id"))
    billing_account_id: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInt)
    remaining: Mapped[int] = mapped_column(BigInt)
    held: Mapped[int] = mapped_column(BigInt, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # active: may still hold credits; closed: nothing left (spent, expired or reversed).
    status: Mapped[str] = mapped_column(String(8), default="active")
    cause_type: Mapped[str] = mapped_column(String(32))
    cause_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Hold(Base):
    """A two-phase reservation on a wallet (pending transfers, one per grant drawn)."""

    __tablename__ = "ledger_holds"
    __table_args__ = (
        CheckConstraint("amount_held >= 0", name="held_nonneg"),
        CheckConstraint("amount_captured >= 0", name="captured_nonneg"),
        CheckConstraint("status in ('open', 'captured', 'released', 'expired')", name="status"),
        # Only open holds: every lookup by wallet is for open ones, and a settled hold leaves the
        # index instead of adding a new entry for its new status.
        Index(
            "ix_ledger_holds_open_expiry",
            "wallet_account_id",
            "expires_at",
            postgresql_where=text("status = 'open'"),
            sqlite_where=text("status = 'open'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet_account_id: Mapped[str] = mapped_column(String(40))  # no foreign key: decision 0026
    billing_account_id: Mapped[str] = mapped_column(String(40))
    amount_requested: Mapped[int] = mapped_column(BigInt)
    amount_held: Mapped[int] = mapped_column(BigInt)
    amount_captured: Mapped[int] = mapped_column(BigInt, default=0)
    status: Mapped[str] = mapped_column(String(10), default="open")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    cap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    cap_period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Debit(Base):
    """A one-step charge (a metered event), posted at once."""

    __tablename__ = "ledger_debits"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wallet_account_id: Mapped[str] = mapped_column(String(40), index=True)  # no foreign key: decision 0026
    billing_account_id: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BigInt)
    reason: Mapped[str] = mapped_column(Text, default="")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    cap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    cap_period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Transfer(Base):
    """One append-only movement between two ledger accounts.

    ``phase``: ``posted`` moves credits now; ``pending`` reserves them (a hold); ``post`` settles a
    pending transfer for ``amount`` (at most the pending amount; the rest returns); ``void``
    returns a pending transfer whole. Each pending transfer is resolved exactly once.
    """

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_nonneg"),
        CheckConstraint("phase in ('posted', 'pending', 'post', 'void')", name="phase"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        Index("ix_ledger_transfers_wallet_id", "wallet_account_id", "id"),
        # Partial: most transfers reference no hold and settle no pending transfer.
        Index(
            "ix_ledger_transfers_hold",
            "hold_id",
            postgresql_where=text("hold_id IS NOT NULL"),
            sqlite_where=text("hold_id IS NOT NULL"),
        ),
        Index(
            "uq_ledger_transfers_pending_id",
            "pending_id",
            unique=True,
            postgresql_where=text("pending_id IS NOT NULL"),
            sqlite_where=text("pending_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    # No foreign keys to ledger_accounts: every transfer names a system account, and checking
    # the reference would lock that one row in every write in the system (decision 0026).
    # verify checks that both sides exist.
    debit_account_id: Mapped[str] = mapped_column(String(40))
    credit_account_id: Mapped[str] = mapped_column(String(40))
    # The wallet side of the transfer: statements read by it.
    wallet_account_id: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BigInt)
    phase: Mapped[str] = mapped_column(String(8))
    pending_id: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    kind: Mapped[str] = mapped_column(String(24))
    grant_id: Mapped[str] = mapped_column(String(40))
    hold_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    debit_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Posted balance of the wallet side after this transfer.
    balance_after: Mapped[int] = mapped_column(BigInt)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CapUsage(Base):
    """Per (cap, calendar month) counters of what is held and used under a spend cap."""

    __tablename__ = "ledger_cap_usage"
    __table_args__ = (
        CheckConstraint("held >= 0", name="held_nonneg"),
        CheckConstraint("used >= 0", name="used_nonneg"),
    )

    cap_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    held: Mapped[int] = mapped_column(BigInt, default=0)
    used: Mapped[int] = mapped_column(BigInt, default=0)


class GrantFreeze(Base):
    """A change of a grant's frozen state (a dispute opened, won or settled), kept append-only.

    A freeze moves no credits, so no transfer records it; the statement reads these rows to say
    when credits were frozen and released, and how many (decision 0038).
    """

    __tablename__ = "ledger_grant_freezes"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_nonneg"),
        Index("ix_ledger_grant_freezes_wallet", "wallet_account_id", "after_transfer_id"),
    )

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    wallet_account_id: Mapped[str] = mapped_column(String(40))
    grant_id: Mapped[str] = mapped_column(String(40))
    frozen: Mapped[bool] = mapped_column(Boolean)
    # What the grant had left to spend (remaining less held) when this changed.
    amount: Mapped[int] = mapped_column(BigInt)
    reason: Mapped[str] = mapped_column(Text, default="")
    # The wallet's newest transfer at that moment (0: none yet) and its posted balance.
    after_transfer_id: Mapped[int] = mapped_column(BigInt)
    balance_after: Mapped[int] = mapped_column(BigInt)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
