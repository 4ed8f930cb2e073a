"""usage: auto-recorded server meetings have no starting user; the recording path's functions

Revision ID: 0008
Revises: 0007

Decision 0029: a server's auto-recorded meeting is started by nobody, so a usage record's user
and a meeting attribution's owner may be empty.

Decision 0031, on PostgreSQL only: the recording path in one statement per step.
``usage_facts`` reads in one statement what the payer decision needs (the twin of
``chronote_billing.usage.facts.gather_raw``); ``usage_try_start``, ``usage_try_event``,
``usage_try_extend`` and ``usage_try_finish`` write the common case of each operation and
return NULL before writing anything otherwise, for the Python path to answer
(``chronote_billing.usage.recordings`` and ``.events``); ``ledger_try_extend_hold`` is the
ledger's extension in the manner of 0005 and 0007. Change these together with the Python path:
the differential tests in ``tests/test_usage_fast_path.py`` and ``tests/test_ledger_fast_path.py``
fail when they drift.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _revision(filename: str) -> ModuleType:
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"chronote_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_0005 = _revision("0005_ledger_fast_path.py")
_0007 = _revision("0007_ledger_lean_writes.py")
_SPENDABLE = _0005._SPENDABLE
_BURN_ORDER = _0005._BURN_ORDER
_NOTHING_DUE = _0005._NOTHING_DUE
_bump_cap = _0005._bump_cap
_utc = _0005._utc


# The hash core.idempotency.request_fingerprint computes: SHA-256 of the canonical JSON text.
FINGERPRINT = """
CREATE OR REPLACE FUNCTION chronote_fingerprint(p_canonical text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$ SELECT encode(sha256(convert_to(p_canonical, 'UTF8')), 'hex') $fn$;
"""

TRY_EXTEND_HOLD = f"""
CREATE OR REPLACE FUNCTION ledger_try_extend_hold(
    p_hold_id text, p_amount bigint, p_expires_at timestamptz, p_allow_partial boolean,
    p_cap_limit bigint, p_now timestamptz, p_scope_prefix text, p_key text, p_hash text
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    w record;
    seen record;
    h record;
    scope_ text;
    approvable bigint;
    approved bigint := 0;
    cap_used bigint;
    left_to_draw bigint;
    take bigint;
    i integer;
    cap_key text;
    cap_month text;
    new_expiry timestamptz;
    p_transfer_reason text;
    result jsonb;
BEGIN
    SELECT a.id, a.billing_account_id, a.credits_posted, a.debits_posted, a.debits_pending, a.next_due_at
        INTO w FROM ledger_accounts a JOIN ledger_holds hh ON hh.wallet_account_id = a.id
        WHERE hh.id = p_hold_id FOR UPDATE OF a;
    IF NOT FOUND THEN RETURN NULL; END IF;
    scope_ := p_scope_prefix || w.billing_account_id;
    -- After the lock, one read: the key's earlier use, and the spendable grants in burn order.
    SELECT r.request_hash, r.response, l.ids, l.frees, coalesce(l.available, 0) AS available INTO seen
        FROM (SELECT array_agg(id ORDER BY {_BURN_ORDER}) AS ids,
                     array_agg(remaining - held ORDER BY {_BURN_ORDER}) AS frees,
                     sum(remaining - held) AS available
                FROM ledger_grants WHERE {_SPENDABLE}) AS l
        LEFT JOIN idempotency_records r ON r.scope = scope_ AND r.key = p_key;
    IF seen.request_hash IS NOT NULL THEN
        IF seen.request_hash = p_hash THEN RETURN seen.response; END IF;
        RETURN NULL;
    END IF;
    SELECT * INTO h FROM ledger_holds WHERE id = p_hold_id;
    IF h.status <> 'open' OR h.expires_at <= p_now THEN RETURN NULL; END IF;
    IF p_expires_at IS NOT NULL AND p_expires_at <= p_now THEN RETURN NULL; END IF;
    IF p_amount = 0 AND p_expires_at IS NULL THEN RETURN NULL; END IF;
    {_NOTHING_DUE}
    IF p_amount > 0 THEN
        approvable := seen.available;
        cap_key := h.cap_id;
        cap_month := h.cap_period;
        IF h.cap_id IS NOT NULL AND p_cap_limit IS NOT NULL THEN
            SELECT held + used INTO cap_used FROM ledger_cap_usage
                WHERE cap_id = cap_key AND period = cap_month FOR UPDATE;
            approvable := least(approvable, greatest(0, p_cap_limit - coalesce(cap_used, 0)));
        END IF;
        IF p_amount <= approvable THEN
            approved := p_amount;
        ELSIF p_allow_partial AND approvable > 0 THEN
            approved := approvable;
        ELSE
            RETURN NULL;
        END IF;
        p_transfer_reason := left(coalesce(nullif(h.reason, ''), 'hold extended'), 500);
        {_0007._draw("hold_extend", "pending", "p_hold_id", "NULL", "held = held + take")}
        IF h.cap_id IS NOT NULL AND h.cap_period IS NOT NULL THEN
            {_bump_cap("approved", "0")}
        END IF;
    END IF;
    new_expiry := CASE WHEN p_expires_at IS NULL THEN h.expires_at ELSE greatest(h.expires_at, p_expires_at) END;
    result := jsonb_build_object(
        'object', 'hold', 'id', p_hold_id, 'account_id', h.billing_account_id, 'status', 'open',
        'amount_requested', h.amount_requested + p_amount, 'amount_held', h.amount_held + approved,
        'amount_captured', 0, 'partial', approved < p_amount,
        'expires_at', {_utc("new_expiry")}, 'reason', h.reason,
        'metadata', coalesce(h.metadata, '{{}}'::jsonb), 'cap_id', h.cap_id,
        'cap_period', h.cap_period, 'created_at', {_utc("h.created_at")}, 'settled_at', NULL);
    WITH hold AS (
        UPDATE ledger_holds SET amount_held = amount_held + approved,
                amount_requested = amount_requested + p_amount, expires_at = new_expiry
            WHERE id = p_hold_id
    ), wallet AS (
        UPDATE ledger_accounts SET debits_pending = debits_pending + approved,
                next_due_at = least(next_due_at, new_expiry)
            WHERE id = w.id
    )
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (scope_, p_key, p_hash, result, p_now, NULL);
    RETURN result;
END
$fn$;
"""


def _wallet_facts(wallet: str) -> str:
    """What a wallet can spend now, and whether something fell due on it (decision 0015)."""
    spendable = _SPENDABLE.replace("w.id", wallet)
    return f"""
        (SELECT coalesce(sum(remaining - held), 0) FROM ledger_grants WHERE {spendable}),
        coalesce((SELECT next_due_at <= p_now FROM ledger_accounts WHERE id = {wallet}), false)"""


USAGE_FACTS = f"""
CREATE OR REPLACE FUNCTION usage_facts(
    p_context text, p_user text, p_guild text, p_meeting text, p_event_type text, p_quota_cap bigint,
    p_now timestamptz, p_period text, p_month_start timestamptz, p_scope_prefix text, p_key text
) RETURNS jsonb LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    acct billing_accounts%ROWTYPE;
    ref text := CASE WHEN p_context = 'server' THEN p_guild ELSE p_user END;
    requester jsonb;
    auths jsonb := '[]'::jsonb;
    pref jsonb := '[]'::jsonb;
    original jsonb;
    open_rec text;
    prior jsonb;
    available bigint;
    due boolean;
    subject_name text;
BEGIN
    SELECT * INTO acct FROM billing_accounts
        WHERE kind = CASE WHEN p_context = 'server' THEN 'server' ELSE 'personal' END AND owner_ref = ref;
    IF FOUND THEN
        SELECT {_wallet_facts("acct.wallet_account_id")} INTO available, due;
        requester := jsonb_build_object(
            'id', acct.id, 'kind', acct.kind, 'owner_ref', acct.owner_ref,
            'display_name', acct.display_name,
            'subscription', (
                SELECT jsonb_build_object(
                    'stripe_subscription_id', s.stripe_subscription_id, 'plan_id', s.plan_id,
                    'interval', s.interval, 'status', s.status,
                    'current_period_start', s.current_period_start,
                    'current_period_end', s.current_period_end,
                    'payment_failed_at', s.payment_failed_at, 'updated_at', s.updated_at,
                    'pending_plan_id', s.pending_plan_id)
                FROM plan_subscriptions s WHERE s.account_id = acct.id),
            'comps', coalesce((
                SELECT jsonb_agg(jsonb_build_object('id', c.id, 'plan_id', c.plan_id,
                                                    'starts_at', c.starts_at, 'ends_at', c.ends_at)
                                 ORDER BY c.id COLLATE "C")
                FROM complimentary_plans c WHERE c.account_id = acct.id AND c.starts_at <= p_now), '[]'::jsonb),
            'available', available,
            'due', due,
            'allowances', coalesce((
                SELECT jsonb_agg(jsonb_build_array(g.cause_type, g.cause_id)
                                 ORDER BY g.cause_type COLLATE "C", g.cause_id COLLATE "C")
                FROM ledger_grants g
                WHERE g.wallet_account_id = acct.wallet_account_id
                  AND g.cause_type IN ('free_plan', 'complimentary_plan', 'subscription')
                  AND g.expires_at > p_now), '[]'::jsonb),
            -- Counted up to the highest monthly quota of any plan: enough to compare with any.
            'quota_used', CASE WHEN p_event_type IS NULL THEN 0 ELSE (
                SELECT count(*) FROM (SELECT 1 FROM usage_records u
                    WHERE u.payer_account_id = acct.id AND u.event_type = p_event_type
                      AND u.status = 'charged' AND u.created_at >= p_month_start
                    LIMIT p_quota_cap) AS counted) END);
        IF p_scope_prefix IS NOT NULL THEN
            SELECT jsonb_build_object('request_hash', r.request_hash, 'response', r.response) INTO prior
                FROM idempotency_records r WHERE r.scope = p_scope_prefix || ':' || acct.id AND r.key = p_key;
        END IF;
    END IF;

    IF p_context = 'server' THEN
        subject_name := coalesce(acct.display_name, 'Server ' || p_guild);
        SELECT coalesce(jsonb_agg(x.fact), '[]'::jsonb) INTO auths FROM (
            SELECT jsonb_build_object(
                'id', a.id, 'org_id', o.id, 'org_name', o.name, 'org_account_id', o.billing_account_id,
                'subject_type', a.subject_type, 'subject_id', a.subject_id, 'subject_name', subject_name,
                'monthly_cap', a.monthly_cap, 'capture_sources', a.capture_sources,
                'valid_from', a.valid_from, 'valid_until', a.valid_until, 'revoked_at', a.revoked_at,
                'created_at', a.created_at, 'member_role', NULL,
                'cap_used', coalesce(cu.used, 0), 'cap_held', coalesce(cu.held, 0),
                'org_available', f.available, 'org_due', f.due) AS fact
            FROM org_servers l
            JOIN spend_authorizations a ON a.org_id = l.org_id AND a.subject_type = 'server'
                AND a.subject_id = p_guild AND a.revoked_at IS NULL
            JOIN organizations o ON o.id = a.org_id
            JOIN billing_accounts ob ON ob.id = o.billing_account_id
            LEFT JOIN ledger_cap_usage cu ON cu.cap_id = a.id AND cu.period = p_period
            CROSS JOIN LATERAL (SELECT {_wallet_facts("ob.wallet_account_id")}) AS f(available, due)
            WHERE l.guild_id = p_guild
            ORDER BY a.created_at DESC LIMIT 1) AS x;
    ELSIF p_user IS NOT NULL THEN
        subject_name := coalesce((SELECT display_name FROM people WHERE discord_user_id = p_user), p_user);
        SELECT coalesce(jsonb_agg(x.fact ORDER BY x.created_at, x.id), '[]'::jsonb) INTO auths FROM (
            SELECT a.created_at, a.id, jsonb_build_object(
                'id', a.id, 'org_id', o.id, 'org_name', o.name, 'org_account_id', o.billing_account_id,
                'subject_type', a.subject_type, 'subject_id', a.subject_id, 'subject_name', subject_name,
                'monthly_cap', a.monthly_cap, 'capture_sources', a.capture_sources,
                'valid_from', a.valid_from, 'valid_until', a.valid_until, 'revoked_at', a.revoked_at,
                'created_at', a.created_at, 'member_role', m.role,
                'cap_used', coalesce(cu.used, 0), 'cap_held', coalesce(cu.held, 0),
                'org_available', f.available, 'org_due', f.due) AS fact
            FROM spend_authorizations a
            JOIN organizations o ON o.id = a.org_id
            JOIN billing_accounts ob ON ob.id = o.billing_account_id
            LEFT JOIN org_members m ON m.org_id = a.org_id AND m.user_id = a.subject_id
            LEFT JOIN ledger_cap_usage cu ON cu.cap_id = a.id AND cu.period = p_period
            CROSS JOIN LATERAL (SELECT {_wallet_facts("ob.wallet_account_id")}) AS f(available, due)
            WHERE a.subject_type = 'member' AND a.subject_id = p_user) AS x;
        pref := coalesce((SELECT source_order FROM funding_preferences WHERE user_id = p_user), '[]'::jsonb);
    END IF;

    IF p_meeting IS NOT NULL THEN
        SELECT jsonb_build_object('context', ma.context, 'owner_user_id', ma.owner_user_id,
                                  'payer_account_id', ma.payer_account_id,
                                  'authorization_id', ma.authorization_id) INTO original
            FROM meeting_attributions ma WHERE ma.meeting_id = p_meeting;
        SELECT u.id INTO open_rec FROM usage_records u
            WHERE u.meeting_id = p_meeting AND u.status = 'open' AND u.kind <> 'event' LIMIT 1;
    END IF;
    RETURN jsonb_build_object('requester', requester, 'authorizations', auths, 'preferred_order', pref,
                              'original', original, 'open_recording', open_rec, 'prior', prior);
END
$fn$;
"""

# A recording as the API shows it (chronote_billing.usage.schemas.RecordingView).
USAGE_VIEW = f"""
CREATE OR REPLACE FUNCTION usage_view(r usage_records, p_expires timestamptz, p_partial boolean)
RETURNS jsonb LANGUAGE sql STABLE AS $fn$
SELECT jsonb_build_object(
    'object', 'recording', 'id', r.id, 'kind', r.kind, 'status', r.status,
    'payer_account_id', r.payer_account_id, 'payer_kind', r.payer_kind,
    'authorization_id', r.authorization_id, 'reason', r.reason, 'context', r.context,
    'capture_source', r.capture_source, 'event_type', r.event_type, 'event_id', r.event_id,
    'user_id', r.user_id, 'guild_id', r.guild_id, 'meeting_id', r.meeting_id,
    'requested_minutes', r.requested_minutes, 'approved_minutes', r.approved_minutes,
    'max_minutes', r.max_minutes,
    'partial', coalesce(p_partial, r.kind <> 'event' AND r.approved_minutes < r.requested_minutes),
    'held', r.held, 'charged', r.charged, 'shortfall', r.shortfall, 'hold_id', r.hold_id,
    'debit_id', r.debit_id, 'hold_expires_at', {_utc("p_expires")},
    'seconds_by_source', r.seconds_by_source, 'wall_clock_seconds', r.wall_clock_seconds,
    'rate_card_version', r.rate_card_version, 'created_at', {_utc("r.created_at")},
    'finished_at', {_utc("r.finished_at")}, 'attempts', '[]'::jsonb)
$fn$;
"""

# Whether the payer asked to hear about its balance: the caller then checks its thresholds.
_ALERTS = """EXISTS (SELECT 1 FROM notification_settings s WHERE s.account_id = {payer}
    AND (s.low_balance_threshold_millicredits IS NOT NULL OR s.auto_recharge_enabled))"""

# The principal may act on the recording: decision 0029, access.recording_permission. Operators
# are not recognised here: their requests take the Python path, which allows them.
_MAY_ACT = """(
    (p_user IS NOT NULL AND r.user_id = p_user)
    OR (p_user IS NOT NULL AND r.context = 'server' AND r.guild_id = ANY(p_guilds))
    OR (p_user IS NULL AND p_auto AND r.user_id IS NULL AND r.context = 'server'))"""

# The key's earlier use on a usage scope: the first result for the same request, else decline.
_REPLAY = """
    SELECT request_hash, response INTO prior FROM idempotency_records WHERE scope = p_scope AND key = p_key;
    IF FOUND THEN
        IF prior.request_hash = p_hash THEN RETURN jsonb_build_object('view', prior.response); END IF;
        RETURN NULL;
    END IF;
"""

TRY_START = f"""
CREATE OR REPLACE FUNCTION usage_try_start(
    p_requester text, p_scope text, p_key text, p_hash text, p_meeting_id text, p_now timestamptz,
    p_payer text, p_amount bigint, p_expires_at timestamptz,
    p_cap_id text, p_cap_limit bigint, p_cap_period text,
    p_hold_scope text, p_hold_key text, p_hold_hash text, p_hold_result jsonb, p_hold_id text,
    p_hold_reason text, p_hold_metadata jsonb, p_transfer_reason text,
    p_record jsonb, p_attribution jsonb, p_result jsonb
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    prior record;
BEGIN
    -- Duplicates of one request queue on the requester's row, as on the Python path.
    PERFORM 1 FROM billing_accounts WHERE id = p_requester FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    {_REPLAY}
    IF p_meeting_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM usage_records WHERE meeting_id = p_meeting_id AND status = 'open' AND kind <> 'event'
    ) THEN
        RETURN NULL;
    END IF;
    IF ledger_try_place_hold(p_payer, p_amount, false, p_expires_at, p_now, p_cap_id, p_cap_limit,
            p_cap_period, p_hold_scope, p_hold_key, p_hold_hash, p_hold_result, p_hold_id, p_hold_reason,
            p_hold_metadata, p_transfer_reason) IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO usage_records SELECT * FROM jsonb_populate_record(NULL::usage_records, p_record);
    IF p_attribution IS NOT NULL THEN
        INSERT INTO meeting_attributions
            SELECT * FROM jsonb_populate_record(NULL::meeting_attributions, p_attribution)
            ON CONFLICT (meeting_id) DO NOTHING;
    END IF;
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (p_scope, p_key, p_hash, p_result, p_now, p_record->>'id');
    RETURN jsonb_build_object('view', p_result);
END
$fn$;
"""

TRY_EVENT = f"""
CREATE OR REPLACE FUNCTION usage_try_event(
    p_requester text, p_scope text, p_key text, p_hash text, p_now timestamptz,
    p_quota_event_type text, p_quota_limit bigint, p_month_start timestamptz,
    p_payer text, p_amount bigint, p_cap_id text, p_cap_limit bigint, p_cap_period text,
    p_debit_scope text, p_debit_key text, p_debit_hash text, p_debit_result jsonb, p_debit_id text,
    p_debit_reason text, p_debit_metadata jsonb, p_transfer_reason text,
    p_record jsonb, p_result jsonb
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    prior record;
BEGIN
    -- The requester's row: duplicates queue here, and so do events counted against its plan's
    -- monthly quota (only personal and server plans have quotas, paid from the requester's wallet).
    PERFORM 1 FROM billing_accounts WHERE id = p_requester FOR UPDATE;
    IF NOT FOUND THEN RETURN NULL; END IF;
    {_REPLAY}
    IF p_quota_limit IS NOT NULL AND (
        SELECT count(*) FROM (SELECT 1 FROM usage_records u WHERE u.payer_account_id = p_payer
            AND u.event_type = p_quota_event_type AND u.status = 'charged' AND u.created_at >= p_month_start
            LIMIT p_quota_limit) AS counted
    ) >= p_quota_limit THEN
        RETURN NULL;
    END IF;
    IF ledger_try_debit(p_payer, p_amount, p_now, p_cap_id, p_cap_limit, p_cap_period, p_debit_scope,
            p_debit_key, p_debit_hash, p_debit_result, p_debit_id, p_debit_reason, p_debit_metadata,
            p_transfer_reason) IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO usage_records SELECT * FROM jsonb_populate_record(NULL::usage_records, p_record);
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (p_scope, p_key, p_hash, p_result, p_now, p_record->>'id');
    RETURN jsonb_build_object('view', p_result, 'alerts', {_ALERTS.format(payer="p_payer")});
END
$fn$;
"""

TRY_EXTEND = f"""
CREATE OR REPLACE FUNCTION usage_try_extend(
    p_recording text, p_user text, p_guilds text[], p_auto boolean,
    p_scope text, p_key text, p_hash text, p_minutes integer, p_allow_partial boolean, p_unit bigint,
    p_now timestamptz, p_expires_at timestamptz, p_expires_text text, p_hold_key text
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    r usage_records%ROWTYPE;
    prior record;
    cap_limit bigint;
    extended jsonb;
    amount bigint := p_minutes * p_unit;
BEGIN
    SELECT * INTO r FROM usage_records WHERE id = p_recording FOR UPDATE;
    IF NOT FOUND OR NOT {_MAY_ACT} THEN RETURN NULL; END IF;
    {_REPLAY}
    IF r.status <> 'open' OR r.hold_id IS NULL OR p_minutes > r.max_minutes - r.approved_minutes THEN
        RETURN NULL;
    END IF;
    -- A plan's allowance issued on first need may be due on a personal or server payer (a
    -- recording across a month's end): the Python path issues it first.
    IF r.payer_kind <> 'organization' AND NOT EXISTS (
        SELECT 1 FROM billing_accounts b JOIN ledger_grants g ON g.wallet_account_id = b.wallet_account_id
            WHERE b.id = r.payer_account_id
            AND g.cause_type IN ('free_plan', 'complimentary_plan', 'subscription')
            AND g.effective_at <= p_now AND g.expires_at > p_now
    ) THEN
        RETURN NULL;
    END IF;
    SELECT monthly_cap INTO cap_limit FROM spend_authorizations WHERE id = r.authorization_id;
    extended := ledger_try_extend_hold(r.hold_id, amount, p_expires_at, p_allow_partial, cap_limit, p_now,
        'ledger.hold_extend:', p_hold_key,
        -- The fingerprint LedgerService.extend_hold takes of the same request.
        chronote_fingerprint(format(
            '{{"allow_partial":%s,"amount":%s,"cap_limit":%s,"expires_at":"%s","hold_id":"%s"}}',
            p_allow_partial, amount, coalesce(cap_limit::text, 'null'), p_expires_text, r.hold_id)));
    IF extended IS NULL THEN RETURN NULL; END IF;
    UPDATE usage_records SET held = (extended->>'amount_held')::bigint,
            approved_minutes = (extended->>'amount_held')::bigint / p_unit,
            requested_minutes = requested_minutes + p_minutes, requested = requested + amount
        WHERE id = p_recording
        RETURNING * INTO r;
    -- Partial when the ledger reserved less than the minutes asked for.
    extended := usage_view(r, (extended->>'expires_at')::timestamptz, (extended->>'partial')::boolean);
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (p_scope, p_key, p_hash, extended, p_now, NULL);
    RETURN jsonb_build_object('view', extended);
END
$fn$;
"""

TRY_FINISH = f"""
CREATE OR REPLACE FUNCTION usage_try_finish(
    p_recording text, p_user text, p_guilds text[], p_auto boolean,
    p_scope text, p_key text, p_hash text, p_seconds jsonb, p_wall integer, p_cost bigint,
    p_minutes integer, p_now timestamptz, p_capture_key text
) RETURNS jsonb LANGUAGE plpgsql AS $fn$
DECLARE
    r usage_records%ROWTYPE;
    prior record;
    h record;
    charge bigint;
    captured jsonb;
    view jsonb;
BEGIN
    SELECT * INTO r FROM usage_records WHERE id = p_recording FOR UPDATE;
    IF NOT FOUND OR NOT {_MAY_ACT} THEN RETURN NULL; END IF;
    {_REPLAY}
    IF r.status IN ('finished', 'failed') AND r.seconds_by_source IS NOT NULL THEN
        -- Settled once (decision 0032): the same figures get the record; others are the Python
        -- path's conflict.
        IF r.seconds_by_source = p_seconds THEN
            RETURN jsonb_build_object('view', usage_view(r, NULL, NULL));
        END IF;
        RETURN NULL;
    END IF;
    IF r.status <> 'open' OR r.hold_id IS NULL THEN RETURN NULL; END IF;
    SELECT status, expires_at, metadata INTO h FROM ledger_holds WHERE id = r.hold_id;
    IF h.status <> 'open' OR h.expires_at <= p_now OR h.metadata->>'charge_label' IS NULL THEN
        RETURN NULL;
    END IF;
    IF r.kind = 'upload' AND (p_minutes > r.max_minutes OR p_cost > r.held) THEN RETURN NULL; END IF;
    charge := least(p_cost, r.held);
    captured := ledger_try_capture_hold(r.hold_id, charge, p_now, 'ledger.hold_capture:', p_capture_key,
        -- The fingerprint LedgerService.capture_hold takes of the same request.
        chronote_fingerprint(format('{{"amount":%s,"hold_id":"%s"}}', charge, r.hold_id)),
        -- usage.attribution.charge_reason: what was done and who paid, computed when charged.
        format('%s, %s min · %s', h.metadata->>'charge_label', p_minutes,
               coalesce(h.metadata->>'payer_label', r.reason)));
    IF captured IS NULL THEN RETURN NULL; END IF;
    UPDATE usage_records SET status = 'finished', charged = charge, shortfall = p_cost - charge,
            held = (captured->>'amount_held')::bigint, seconds_by_source = p_seconds,
            wall_clock_seconds = p_wall, finished_at = p_now
        WHERE id = p_recording
        RETURNING * INTO r;
    view := usage_view(r, NULL, NULL);
    INSERT INTO idempotency_records (scope, key, request_hash, response, created_at, resource_id)
        VALUES (p_scope, p_key, p_hash, view, p_now, NULL);
    RETURN jsonb_build_object('view', view, 'alerts', {_ALERTS.format(payer="r.payer_account_id")});
END
$fn$;
"""

FUNCTIONS = (
    FINGERPRINT,
    TRY_EXTEND_HOLD,
    USAGE_FACTS,
    USAGE_VIEW,
    TRY_START,
    TRY_EVENT,
    TRY_EXTEND,
    TRY_FINISH,
)
DROPPED = (
    "usage_try_finish(text, text, text[], boolean, text, text, text, jsonb, integer, bigint, integer, timestamptz, text)",
    "usage_try_extend(text, text, text[], boolean, text, text, text, integer, boolean, bigint, timestamptz, "
    "timestamptz, text, text)",
    "usage_try_event(text, text, text, text, timestamptz, text, bigint, timestamptz, text, bigint, text, bigint, "
    "text, text, text, text, jsonb, text, text, jsonb, text, jsonb, jsonb)",
    "usage_try_start(text, text, text, text, text, timestamptz, text, bigint, timestamptz, text, bigint, text, "
    "text, text, text, jsonb, text, text, jsonb, text, jsonb, jsonb, jsonb)",
    "usage_view(usage_records, timestamptz, boolean)",
    "usage_facts(text, text, text, text, text, bigint, timestamptz, text, timestamptz, text, text)",
    "ledger_try_extend_hold(text, bigint, timestamptz, boolean, bigint, timestamptz, text, text, text)",
    "chronote_fingerprint(text)",
)


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("user_id", existing_type=sa.String(length=32), nullable=True)
    with op.batch_alter_table("meeting_attributions") as batch:
        batch.alter_column("owner_user_id", existing_type=sa.String(length=32), nullable=True)
    if op.get_bind().dialect.name == "postgresql":
        for ddl in FUNCTIONS:
            op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for signature in DROPPED:
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
    # Before this revision every recording had a user: auto-recorded ones keep an empty one.
    op.execute("UPDATE meeting_attributions SET owner_user_id = '' WHERE owner_user_id IS NULL")
    op.execute("UPDATE usage_records SET user_id = '' WHERE user_id IS NULL")
    with op.batch_alter_table("meeting_attributions") as batch:
        batch.alter_column("owner_user_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("user_id", existing_type=sa.String(length=32), nullable=False)
