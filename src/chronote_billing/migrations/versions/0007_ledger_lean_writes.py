"""ledger lean writes: no cross-wallet row locks, fewer index entries and statements per write

Revision ID: 0007
Revises: 0006

Decision 0026. Transfers, holds and debits no longer carry foreign keys to ledger_accounts: each
check locked the referenced account row (FOR KEY SHARE), and every transfer names a system
account, so every ledger write in the system wrote a lock into that one row. Ledger accounts are
never deleted and writes only name accounts they have just read; ``verify`` checks that every
reference resolves. Index entries nobody looks up are no longer written: the transfers' grant
index goes, the pending and hold references of transfers and the holds' lookup by wallet become
partial indexes. On PostgreSQL the value-list checks take the form the server prepares
cheaply on every insert and update, and the fast-path functions of 0005 are rewritten to do the
same work in fewer statements: per write, one statement locks the wallet, one reads everything
the decision needs, one writes per grant drawn and one writes the rest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, constraint, column) of the references to ledger_accounts.id this revision drops.
_REFERENCES = (
    ("ledger_transfers", "fk_ledger_transfers_debit_account_id_ledger_accounts", "debit_account_id"),
    ("ledger_transfers", "fk_ledger_transfers_credit_account_id_ledger_accounts", "credit_account_id"),
    ("ledger_holds", "fk_ledger_holds_wallet_account_id_ledger_accounts", "wallet_account_id"),
    ("ledger_debits", "fk_ledger_debits_wallet_account_id_ledger_accounts", "wallet_account_id"),
)

# Value lists as one array constant: PostgreSQL rebuilds a table's checks for every statement that
# writes to it, and `x IN ('a', 'b')` on a varchar column is stored as an array of casts that it
# folds again each time.
_VALUE_CHECKS = (
    ("ledger_transfers", "phase", "phase", ("posted", "pending", "post", "void")),
    ("ledger_holds", "status", "status", ("open", "captured", "released", "expired")),
    ("ledger_accounts", "kind", "kind", ("wallet", "system")),
)


def _fast_path_0005() -> ModuleType:
    """Revision 0005, for its SQL snippets and to restore its functions on downgrade."""
    path = Path(__file__).with_name("0005_ledger_fast_path.py")
    spec = importlib.util.spec_from_file_location("chronote_migration_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0005 = _fast_path_0005()
_SPENDABLE = _0005._SPENDABLE
_BURN_ORDER = _0005._BURN_ORDER
_CAP_ROOM = _0005._CAP_ROOM
_NOTHING_DUE = _0005._NOTHING_DUE
_INSERT_TRANSFER = _0005._INSERT_TRANSFER
_bump_cap = _0005._bump_cap
_utc = _0005._utc

# The wallet's lock comes first and alone: a statement that waited for it sees rows of other
# tables as they were before the wait, so everything it must see is read by the next statement.
_LOCK_WALLET = """
    SELECT id, credits_posted, debits_posted, debits_pending, next_due_at INTO w
        FROM ledger_accounts WHERE billing_account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
"""

# After the lock, one read: the key's earlier use, and the spendable grants in burn order with
# what each has free.
_READ_AFTER_LOCK = f"""
    SELECT r.request_hash, r.response, l.ids, l.frees, coalesce(l.available, 0) AS available INTO seen
        FROM (SELECT array_agg(id ORDER BY {_BURN_ORDER}) AS ids,
                     array_agg(remaining - held ORDER BY {_BURN_ORDER}) AS frees,
                     sum(remaining - held) AS available
                FROM ledger_grants WHERE {_SPENDABLE}) AS l
        LEFT JOIN idempotency_records r ON r.scope = p_scope AND r.key = p_key;
    IF seen.request_hash IS NOT NULL THEN
        IF seen.request_hash = p_hash THEN RETURN seen.response; END IF;
        RETURN NULL;
    END IF;
"""

_DECLARE_DRAW = """
    w record;
    seen record;
    approvable bigint;
    cap_used bigint;
    left_to_draw bigint;
    take bigint;
    i integer;
    cap_key text := p_cap_id;
    cap_month text := p_cap_period;
"""


def _draw(kind: str, phase: str, hold_id: str, debit_id: str, grant_update: str) -> str:
    """Draw ``approved`` from the grants read after the lock, in burn order: one statement per
    grant, writing its transfer and its new balance together."""
    return f"""
    left_to_draw := approved;
    FOR i IN 1 .. coalesce(array_length(seen.ids, 1), 0) LOOP
        EXIT WHEN left_to_draw = 0;
        take := least(left_to_draw, seen.frees[i]);
        CONTINUE WHEN take <= 0;
        left_to_draw := left_to_draw - take;
        {"w.debits_posted := w.debits_posted + take;" if phase == "posted" else ""}
        WITH lot AS (UPDATE ledger_grants SET {grant_update} WHERE id = seen.ids[i])
        {_INSERT_TRANSFER}
            VALUES (w.id, 'la_system_consumption', w.id, take, '{phase}', NULL, '{kind}', seen.ids[i],
                {hold_id}, {debit_id}, w.credits_posted - w.debits_posted, p_transfer_reason, p_now);
    END LOOP;
    IF left_to_draw <> 0 THEN
        RAISE EXCEPTION 'ledger: grants changed under the wallet lock';
    END IF;
"""


TRY_DEBIT = f"""
CREATE OR REPLACE FUNCTION ledger_try_debit(
    p_account text, p_amount bigint, p_now timestamptz,
    p_cap_id text, p_cap_limit bigint, p_cap_period text,
    p_scope text, p_key text, p_hash text, p_result jsonb,
    p_debit_id text, p_reason text, p_metadata jsonb, p_transfer_reason text
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    {_DECLARE_DRAW}
    approved bigint := p_amount;
BEGIN
    {_LOCK_WALLET}
    {_READ_AFTER_LOCK}
    {_NOTHING_DUE}
    approvable := seen.available;
    {_CAP_ROOM}
    IF p_amount > approvable THEN RETURN NULL; END IF;
    {
    _draw(
        "debit",
        "posted",
        "NULL",
        "p_debit_id",
        "remaining = remaining - take, status = CASE WHEN remaining - take > 0 THEN 'active' ELSE 'closed' END",
    )
}
    IF p_cap_id IS NOT NULL THEN
        {_bump_cap("0", "p_amount")}
    END IF;
    WITH debit AS (
        INSERT INTO ledger_debits (id, wallet_account_id, billing_account_id, amount, reason, metadata,
                cap_id, cap_period, created_at)
            VALUES (p_debit_id, w.id, p_account, p_amount, p_reason, p_metadata, p_cap_id, p_cap_period, p_now)
    ), wallet AS (
        UPDATE ledger_accounts SET debits_posted = w.debits_posted WHERE id = w.id
    )
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (p_scope, p_key, p_hash, p_result, p_now, p_debit_id);
    RETURN p_result;
END
$fn$;
"""

TRY_PLACE_HOLD = f"""
CREATE OR REPLACE FUNCTION ledger_try_place_hold(
    p_account text, p_amount bigint, p_allow_partial boolean, p_expires_at timestamptz,
    p_now timestamptz, p_cap_id text, p_cap_limit bigint, p_cap_period text,
    p_scope text, p_key text, p_hash text, p_result jsonb,
    p_hold_id text, p_reason text, p_metadata jsonb, p_transfer_reason text
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    {_DECLARE_DRAW}
    approved bigint;
    result jsonb := p_result;
BEGIN
    {_LOCK_WALLET}
    {_READ_AFTER_LOCK}
    IF p_expires_at <= p_now THEN RETURN NULL; END IF;
    {_NOTHING_DUE}
    approvable := seen.available;
    {_CAP_ROOM}
    IF p_amount <= approvable THEN
        approved := p_amount;
    ELSIF p_allow_partial AND approvable > 0 THEN
        approved := approvable;
        result := jsonb_set(jsonb_set(result, '{{amount_held}}', to_jsonb(approved)),
                            '{{partial}}', 'true'::jsonb);
    ELSE
        RETURN NULL;
    END IF;
    {_draw("hold", "pending", "p_hold_id", "NULL", "held = held + take")}
    IF p_cap_id IS NOT NULL THEN
        {_bump_cap("approved", "0")}
    END IF;
    WITH hold AS (
        INSERT INTO ledger_holds (id, wallet_account_id, billing_account_id, amount_requested, amount_held,
                amount_captured, status, expires_at, reason, metadata, cap_id, cap_period, created_at,
                settled_at)
            VALUES (p_hold_id, w.id, p_account, p_amount, approved, 0, 'open', p_expires_at, p_reason,
                p_metadata, p_cap_id, p_cap_period, p_now, NULL)
    ), wallet AS (
        UPDATE ledger_accounts
            SET debits_pending = debits_pending + approved, next_due_at = least(next_due_at, p_expires_at)
            WHERE id = w.id
    )
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (p_scope, p_key, p_hash, result, p_now, p_hold_id);
    RETURN result;
END
$fn$;
"""

TRY_CAPTURE_HOLD = f"""
CREATE OR REPLACE FUNCTION ledger_try_capture_hold(
    p_hold_id text, p_amount bigint, p_now timestamptz,
    p_scope_prefix text, p_key text, p_hash text, p_reason text
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    w record;
    seen record;
    scope_ text;
    label text;
    left_to_capture bigint;
    take bigint;
    i integer;
    result jsonb;
    cap_key text;
    cap_month text;
BEGIN
    SELECT a.id, a.billing_account_id, a.credits_posted, a.debits_posted, a.debits_pending, a.next_due_at
        INTO w FROM ledger_accounts a JOIN ledger_holds hh ON hh.wallet_account_id = a.id
        WHERE hh.id = p_hold_id FOR UPDATE OF a;
    scope_ := p_scope_prefix || w.billing_account_id;
    -- After the lock, one read: the key's earlier use, the hold as the last writer left it, and
    -- its pending transfers in the burn order of their grants.
    SELECT r.request_hash, r.response, h.status, h.expires_at, h.amount_held, h.amount_requested,
            h.reason, h.metadata, h.cap_id, h.cap_period, h.created_at, h.billing_account_id,
            p.ids, p.amounts, p.grant_ids, coalesce(p.grant_expired, false) AS grant_expired
        INTO seen
        FROM ledger_holds h
        CROSS JOIN LATERAL (
            SELECT array_agg(t.id ORDER BY g.expires_at IS NULL, g.expires_at, g.priority, g.created_at,
                                 g.id COLLATE "C", t.id) AS ids,
                   array_agg(t.amount ORDER BY g.expires_at IS NULL, g.expires_at, g.priority,
                                 g.created_at, g.id COLLATE "C", t.id) AS amounts,
                   array_agg(t.grant_id ORDER BY g.expires_at IS NULL, g.expires_at, g.priority,
                                 g.created_at, g.id COLLATE "C", t.id) AS grant_ids,
                   bool_or(g.expires_at <= p_now) AS grant_expired
                FROM ledger_transfers t JOIN ledger_grants g ON g.id = t.grant_id
                WHERE t.hold_id = h.id AND t.phase = 'pending') AS p
        LEFT JOIN idempotency_records r ON r.scope = scope_ AND r.key = p_key
        WHERE h.id = p_hold_id;
    IF seen.request_hash IS NOT NULL THEN
        IF seen.request_hash = p_hash THEN RETURN seen.response; END IF;
        RETURN NULL;
    END IF;
    IF seen.status <> 'open' OR seen.expires_at <= p_now OR p_amount > seen.amount_held THEN
        RETURN NULL;
    END IF;
    {_NOTHING_DUE}
    -- A grant that expired while this hold reserved it turns partly into breakage on release:
    -- that rare case is the Python path's.
    IF seen.grant_expired THEN RETURN NULL; END IF;

    label := coalesce(nullif(p_reason, ''), nullif(seen.reason, ''));
    left_to_capture := p_amount;
    FOR i IN 1 .. coalesce(array_length(seen.ids, 1), 0) LOOP
        take := least(left_to_capture, seen.amounts[i]);
        left_to_capture := left_to_capture - take;
        w.debits_pending := w.debits_pending - seen.amounts[i];
        w.debits_posted := w.debits_posted + take;
        WITH lot AS (
            UPDATE ledger_grants SET held = held - seen.amounts[i], remaining = remaining - take,
                    status = CASE WHEN remaining - take > 0 THEN 'active' ELSE 'closed' END
                WHERE id = seen.grant_ids[i]
        )
        {_INSERT_TRANSFER}
            VALUES (w.id, 'la_system_consumption', w.id, CASE WHEN take > 0 THEN take ELSE seen.amounts[i] END,
                CASE WHEN take > 0 THEN 'post' ELSE 'void' END, seen.ids[i],
                CASE WHEN take > 0 THEN 'capture' ELSE 'release' END, seen.grant_ids[i], p_hold_id, NULL,
                w.credits_posted - w.debits_posted,
                left(coalesce(label, CASE WHEN take > 0 THEN 'capture' ELSE 'captured' END), 500),
                p_now);
    END LOOP;

    IF seen.cap_id IS NOT NULL AND seen.cap_period IS NOT NULL THEN
        cap_key := seen.cap_id;
        cap_month := seen.cap_period;
        {_bump_cap("-seen.amount_held", "p_amount")}
    END IF;
    result := jsonb_build_object(
        'object', 'hold', 'id', p_hold_id, 'account_id', seen.billing_account_id, 'status', 'captured',
        'amount_requested', seen.amount_requested, 'amount_held', seen.amount_held,
        'amount_captured', p_amount, 'partial', seen.amount_held < seen.amount_requested,
        'expires_at', {_utc("seen.expires_at")}, 'reason', seen.reason,
        'metadata', coalesce(seen.metadata, '{{}}'::jsonb), 'cap_id', seen.cap_id,
        'cap_period', seen.cap_period, 'created_at', {_utc("seen.created_at")},
        'settled_at', {_utc("p_now")});
    WITH hold AS (
        UPDATE ledger_holds SET status = 'captured', amount_captured = p_amount, settled_at = p_now
            WHERE id = p_hold_id
    ), wallet AS (
        UPDATE ledger_accounts SET debits_posted = w.debits_posted, debits_pending = w.debits_pending
            WHERE id = w.id
    )
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (scope_, p_key, p_hash, result, p_now, NULL);
    RETURN result;
END
$fn$;
"""


def _index_transfers_sparsely(batch: Any) -> None:
    """Index only the transfers a lookup can find: the grant index served no query, and the
    pending and hold references are empty on most transfers."""
    batch.drop_index("ix_ledger_transfers_grant")
    batch.drop_index("ix_ledger_transfers_hold")
    batch.drop_constraint("uq_ledger_transfers_pending_id", type_="unique")
    for name, column, unique in (
        ("uq_ledger_transfers_pending_id", "pending_id", True),
        ("ix_ledger_transfers_hold", "hold_id", False),
    ):
        present = sa.text(f"{column} IS NOT NULL")
        batch.create_index(name, [column], unique=unique, postgresql_where=present, sqlite_where=present)


def _index_transfers_densely(batch: Any) -> None:
    batch.drop_index("uq_ledger_transfers_pending_id")
    batch.drop_index("ix_ledger_transfers_hold")
    batch.create_unique_constraint("uq_ledger_transfers_pending_id", ["pending_id"])
    batch.create_index("ix_ledger_transfers_hold", ["hold_id"])
    batch.create_index("ix_ledger_transfers_grant", ["grant_id"])


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in ("ledger_transfers", "ledger_holds", "ledger_debits"):
        # SQLite alters a table by copying it; PostgreSQL in place.
        with op.batch_alter_table(table) as batch:
            for ref_table, name, _column in _REFERENCES:
                if ref_table == table:
                    batch.drop_constraint(name, type_="foreignkey")
            if table == "ledger_transfers":
                _index_transfers_sparsely(batch)
            if table == "ledger_holds":
                batch.drop_index("ix_ledger_holds_wallet_status_expiry")
                is_open = sa.text("status = 'open'")
                batch.create_index(
                    "ix_ledger_holds_open_expiry",
                    ["wallet_account_id", "expires_at"],
                    postgresql_where=is_open,
                    sqlite_where=is_open,
                )
    if not postgres:
        return
    for table, name, column, values in _VALUE_CHECKS:
        constraint = f"ck_{table}_{name}"
        listed = ",".join(values)
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
        # NOT VALID then VALIDATE: the scan of existing rows does not block writes.
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint}"
            f" CHECK ({column}::text = ANY ('{{{listed}}}'::text[])) NOT VALID"
        )
        op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}")
    for ddl in (TRY_DEBIT, TRY_PLACE_HOLD, TRY_CAPTURE_HOLD):
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for ddl in (_0005.TRY_DEBIT, _0005.TRY_PLACE_HOLD, _0005.TRY_CAPTURE_HOLD):
            op.execute(ddl)
        for table, name, column, values in _VALUE_CHECKS:
            constraint = f"ck_{table}_{name}"
            listed = ", ".join(f"'{v}'" for v in values)
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({column} IN ({listed}))")
    for table in ("ledger_transfers", "ledger_holds", "ledger_debits"):
        with op.batch_alter_table(table) as batch:
            if table == "ledger_transfers":
                _index_transfers_densely(batch)
            if table == "ledger_holds":
                batch.drop_index("ix_ledger_holds_open_expiry")
                batch.create_index(
                    "ix_ledger_holds_wallet_status_expiry", ["wallet_account_id", "status", "expires_at"]
                )
            for ref_table, name, column in _REFERENCES:
                if ref_table == table:
                    batch.create_foreign_key(name, "ledger_accounts", [column], ["id"])
