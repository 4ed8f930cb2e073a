"""ledger fast path: debit, place hold and capture in one round trip on PostgreSQL

Revision ID: 0005
Revises: 0004

Each function handles the common case of its operation, inside the caller's transaction or as
a transaction of its own (an autocommit statement), and returns the result document; anything else (unknown ids, a conflicting key, something due on
the wallet, a refusal, a settled or expired hold) makes it return NULL before it has written
anything, and the service's Python path answers instead (docs/decisions/0023). The functions
mirror `chronote_billing.ledger.service`; change both together.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Spend order (docs/decisions/0005): earliest expiry first, grants without expiry last, then
# lower priority number, then oldest, then id in byte order (Python's string order).
_SPENDABLE = """
    wallet_account_id = w.id AND status = 'active' AND frozen_at IS NULL
    AND effective_at <= p_now AND (expires_at IS NULL OR expires_at > p_now)
"""
_BURN_ORDER = 'expires_at IS NULL, expires_at, priority, created_at, id COLLATE "C"'

# The cap's room, with its usage row locked after the wallet (the Python path's lock order).
_CAP_ROOM = """
    IF p_cap_id IS NOT NULL AND p_cap_limit IS NOT NULL THEN
        SELECT held + used INTO cap_used FROM ledger_cap_usage
            WHERE cap_id = p_cap_id AND period = p_cap_period FOR UPDATE;
        approvable := least(approvable, greatest(0, p_cap_limit - coalesce(cap_used, 0)));
    END IF;
"""

# Whether the wallet can cover the request: what its spendable grants have free, capped.
_APPROVABLE = f"""
    SELECT coalesce(sum(remaining - held), 0) INTO available FROM ledger_grants WHERE {_SPENDABLE};
    approvable := available;
    {_CAP_ROOM}
"""
# Something fell due (an expired hold or grant to settle first, decision 0015): Python's work.
_NOTHING_DUE = "IF w.next_due_at IS NOT NULL AND w.next_due_at <= p_now THEN RETURN NULL; END IF;"
_INSERT_TRANSFER = """INSERT INTO ledger_transfers (debit_account_id, credit_account_id, wallet_account_id,
            amount, phase, pending_id, kind, grant_id, hold_id, debit_id, balance_after, reason, created_at)"""


def _utc(moment: str) -> str:
    """A timestamp as the Python path writes it in result documents (ISO 8601 in UTC, with Z),
    whatever the session's TimeZone setting."""
    return f"""to_char({moment} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _replay(scope: str) -> str:
    """A key seen before: its first result when the request matches, else decline (a conflict,
    which the Python path reports)."""
    return f"""
    SELECT request_hash, response INTO prior FROM idempotency_records
        WHERE scope = {scope} AND key = p_key;
    IF FOUND THEN
        IF prior.request_hash = p_hash THEN RETURN prior.response; END IF;
        RETURN NULL;
    END IF;
    """


def _bump_cap(held: str, used: str) -> str:
    return f"""
        UPDATE ledger_cap_usage SET held = held + ({held}), used = used + ({used})
            WHERE cap_id = cap_key AND period = cap_month;
        IF NOT FOUND THEN
            INSERT INTO ledger_cap_usage (cap_id, period, held, used)
                VALUES (cap_key, cap_month, {held}, {used});
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
    w ledger_accounts%ROWTYPE;
    prior record;
    lot record;
    available bigint;
    approvable bigint;
    cap_used bigint;
    left_to_draw bigint;
    take bigint;
    cap_key text := p_cap_id;
    cap_month text := p_cap_period;
BEGIN
    SELECT * INTO w FROM ledger_accounts WHERE billing_account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    {_replay("p_scope")}
    {_NOTHING_DUE}

    {_APPROVABLE}
    IF p_amount > approvable THEN RETURN NULL; END IF;

    left_to_draw := p_amount;
    FOR lot IN SELECT id, remaining, held FROM ledger_grants WHERE {_SPENDABLE} ORDER BY {_BURN_ORDER}
    LOOP
        EXIT WHEN left_to_draw = 0;
        take := least(left_to_draw, lot.remaining - lot.held);
        CONTINUE WHEN take <= 0;
        left_to_draw := left_to_draw - take;
        w.debits_posted := w.debits_posted + take;
        {_INSERT_TRANSFER}
            VALUES (w.id, 'la_system_consumption', w.id, take, 'posted', NULL, 'debit', lot.id, NULL,
                p_debit_id, w.credits_posted - w.debits_posted, p_transfer_reason, p_now);
        UPDATE ledger_grants SET remaining = remaining - take,
                status = CASE WHEN remaining - take > 0 THEN 'active' ELSE 'closed' END
            WHERE id = lot.id;
    END LOOP;
    IF left_to_draw <> 0 THEN
        RAISE EXCEPTION 'ledger_try_debit: grants changed under the wallet lock';
    END IF;

    INSERT INTO ledger_debits (id, wallet_account_id, billing_account_id, amount, reason, metadata,
            cap_id, cap_period, created_at)
        VALUES (p_debit_id, w.id, p_account, p_amount, p_reason, p_metadata, p_cap_id, p_cap_period, p_now);
    IF p_cap_id IS NOT NULL THEN
        {_bump_cap("0", "p_amount")}
    END IF;
    UPDATE ledger_accounts SET debits_posted = w.debits_posted WHERE id = w.id;
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
    w ledger_accounts%ROWTYPE;
    prior record;
    lot record;
    available bigint;
    approvable bigint;
    approved bigint;
    cap_used bigint;
    left_to_draw bigint;
    take bigint;
    result jsonb := p_result;
    cap_key text := p_cap_id;
    cap_month text := p_cap_period;
BEGIN
    SELECT * INTO w FROM ledger_accounts WHERE billing_account_id = p_account FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    {_replay("p_scope")}
    IF p_expires_at <= p_now THEN RETURN NULL; END IF;
    {_NOTHING_DUE}

    {_APPROVABLE}
    IF p_amount <= approvable THEN
        approved := p_amount;
    ELSIF p_allow_partial AND approvable > 0 THEN
        approved := approvable;
        result := jsonb_set(jsonb_set(result, '{{amount_held}}', to_jsonb(approved)),
                            '{{partial}}', 'true'::jsonb);
    ELSE
        RETURN NULL;
    END IF;

    INSERT INTO ledger_holds (id, wallet_account_id, billing_account_id, amount_requested, amount_held,
            amount_captured, status, expires_at, reason, metadata, cap_id, cap_period, created_at, settled_at)
        VALUES (p_hold_id, w.id, p_account, p_amount, approved, 0, 'open', p_expires_at, p_reason,
            p_metadata, p_cap_id, p_cap_period, p_now, NULL);
    left_to_draw := approved;
    FOR lot IN SELECT id, remaining, held FROM ledger_grants WHERE {_SPENDABLE} ORDER BY {_BURN_ORDER}
    LOOP
        EXIT WHEN left_to_draw = 0;
        take := least(left_to_draw, lot.remaining - lot.held);
        CONTINUE WHEN take <= 0;
        left_to_draw := left_to_draw - take;
        {_INSERT_TRANSFER}
            VALUES (w.id, 'la_system_consumption', w.id, take, 'pending', NULL, 'hold', lot.id, p_hold_id,
                NULL, w.credits_posted - w.debits_posted, p_transfer_reason, p_now);
        UPDATE ledger_grants SET held = held + take WHERE id = lot.id;
    END LOOP;
    IF left_to_draw <> 0 THEN
        RAISE EXCEPTION 'ledger_try_place_hold: grants changed under the wallet lock';
    END IF;

    IF p_cap_id IS NOT NULL THEN
        {_bump_cap("approved", "0")}
    END IF;
    UPDATE ledger_accounts
        SET debits_pending = debits_pending + approved,
            next_due_at = least(next_due_at, p_expires_at)
        WHERE id = w.id;
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
    w ledger_accounts%ROWTYPE;
    h ledger_holds%ROWTYPE;
    prior record;
    pending record;
    scope_ text;
    label text;
    left_to_capture bigint;
    take bigint;
    result jsonb;
    cap_key text;
    cap_month text;
BEGIN
    SELECT a.* INTO w FROM ledger_accounts a JOIN ledger_holds hh ON hh.wallet_account_id = a.id
        WHERE hh.id = p_hold_id FOR UPDATE OF a;
    IF NOT FOUND THEN RETURN NULL; END IF;
    scope_ := p_scope_prefix || w.billing_account_id;
    {_replay("scope_")}
    -- Read after the wallet lock: reflects every write made under it before.
    SELECT * INTO h FROM ledger_holds WHERE id = p_hold_id;
    IF h.status <> 'open' OR h.expires_at <= p_now OR p_amount > h.amount_held THEN RETURN NULL; END IF;
    {_NOTHING_DUE}
    -- A grant that expired while this hold reserved it turns partly into breakage on release:
    -- that rare case is the Python path's.
    IF EXISTS (SELECT 1 FROM ledger_transfers t JOIN ledger_grants g ON g.id = t.grant_id
               WHERE t.hold_id = p_hold_id AND t.phase = 'pending' AND g.expires_at <= p_now) THEN
        RETURN NULL;
    END IF;

    label := coalesce(nullif(p_reason, ''), nullif(h.reason, ''));
    left_to_capture := p_amount;
    FOR pending IN
        SELECT t.id, t.amount, t.grant_id FROM ledger_transfers t JOIN ledger_grants g ON g.id = t.grant_id
            WHERE t.hold_id = p_hold_id AND t.phase = 'pending'
            ORDER BY g.expires_at IS NULL, g.expires_at, g.priority, g.created_at, g.id COLLATE "C", t.id
    LOOP
        take := least(left_to_capture, pending.amount);
        left_to_capture := left_to_capture - take;
        w.debits_pending := w.debits_pending - pending.amount;
        w.debits_posted := w.debits_posted + take;
        IF take > 0 THEN
            {_INSERT_TRANSFER}
                VALUES (w.id, 'la_system_consumption', w.id, take, 'post', pending.id, 'capture',
                    pending.grant_id, p_hold_id, NULL, w.credits_posted - w.debits_posted,
                    left(coalesce(label, 'capture'), 500), p_now);
        ELSE
            {_INSERT_TRANSFER}
                VALUES (w.id, 'la_system_consumption', w.id, pending.amount, 'void', pending.id, 'release',
                    pending.grant_id, p_hold_id, NULL, w.credits_posted - w.debits_posted,
                    left(coalesce(label, 'captured'), 500), p_now);
        END IF;
        UPDATE ledger_grants SET held = held - pending.amount, remaining = remaining - take,
                status = CASE WHEN remaining - take > 0 THEN 'active' ELSE 'closed' END
            WHERE id = pending.grant_id;
    END LOOP;

    UPDATE ledger_holds SET status = 'captured', amount_captured = p_amount, settled_at = p_now
        WHERE id = p_hold_id;
    IF h.cap_id IS NOT NULL AND h.cap_period IS NOT NULL THEN
        cap_key := h.cap_id;
        cap_month := h.cap_period;
        {_bump_cap("-h.amount_held", "p_amount")}
    END IF;
    UPDATE ledger_accounts SET debits_posted = w.debits_posted, debits_pending = w.debits_pending
        WHERE id = w.id;
    result := jsonb_build_object(
        'object', 'hold', 'id', h.id, 'account_id', h.billing_account_id, 'status', 'captured',
        'amount_requested', h.amount_requested, 'amount_held', h.amount_held,
        'amount_captured', p_amount, 'partial', h.amount_held < h.amount_requested,
        'expires_at', {_utc("h.expires_at")}, 'reason', h.reason,
        'metadata', coalesce(h.metadata, '{{}}'::jsonb), 'cap_id', h.cap_id, 'cap_period', h.cap_period,
        'created_at', {_utc("h.created_at")}, 'settled_at', {_utc("p_now")});
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (scope_, p_key, p_hash, result, p_now, NULL);
    RETURN result;
END
$fn$;
"""

FUNCTIONS = ("ledger_try_debit", "ledger_try_place_hold", "ledger_try_capture_hold")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite runs the Python path only
    for ddl in (TRY_DEBIT, TRY_PLACE_HOLD, TRY_CAPTURE_HOLD):
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {name}")
