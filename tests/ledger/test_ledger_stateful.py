"""Random sequences of ledger operations checked against a pure-Python reference model.

After every step the ledger's invariants must hold (``verify``) and the model must agree with
the ledger on each wallet's available, held and posted credits, on every grant's remaining and
held credits, on cap counters, and on which operations fail and why.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chronote_billing.accounts.service import AccountService
from chronote_billing.core.clock import ManualClock, month_key
from chronote_billing.core.db import Database
from chronote_billing.core.errors import (
    BillingError,
    CapReached,
    HoldAlreadySettled,
    HoldExpired,
    IdempotencyConflict,
    InsufficientCredits,
    ValidationFailed,
)
from chronote_billing.ledger.service import CapSpec, CaptureExceedsHold, LedgerService
from chronote_billing.ledger.verify import verify

# ----------------------------------------------------------------------------- the model


@dataclass
class MGrant:
    id: str
    amount: int
    remaining: int
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    created_at: datetime
    held: int = 0
    frozen: bool = False

    @property
    def free(self) -> int:
        return self.remaining - self.held

    def order(self) -> tuple[Any, ...]:
        # Earliest expiry first, no expiry last; then lower priority; then oldest.
        if self.expires_at is None:
            return (1, self.priority, self.created_at, self.id)
        return (0, self.expires_at, self.priority, self.created_at, self.id)


@dataclass
class MHold:
    id: str
    account_id: str
    amount_requested: int
    amount_held: int
    expires_at: datetime
    cap_id: str | None
    cap_period: str | None
    draws: list[tuple[int, str, int]]  # (sequence, grant id, amount): pending transfers
    status: str = "open"
    captured: int = 0


@dataclass
class MWallet:
    account_id: str
    cap: CapSpec
    grants: dict[str, MGrant] = field(default_factory=dict)
    holds: dict[str, MHold] = field(default_factory=dict)


@dataclass
class Model:
    wallets: dict[str, MWallet] = field(default_factory=dict)
    caps: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # [held, used]
    seq: int = 0

    def hold(self, hold_id: str) -> tuple[MWallet, MHold]:
        for wallet in self.wallets.values():
            if hold_id in wallet.holds:
                return wallet, wallet.holds[hold_id]
        raise KeyError(hold_id)

    def grant(self, grant_id: str) -> tuple[MWallet, MGrant]:
        for wallet in self.wallets.values():
            if grant_id in wallet.grants:
                return wallet, wallet.grants[grant_id]
        raise KeyError(grant_id)

    def bump_cap(self, cap_id: str, period: str, held: int = 0, used: int = 0) -> None:
        counter = self.caps.setdefault((cap_id, period), [0, 0])
        counter[0] += held
        counter[1] += used

    # -- the rules, restated simply

    def spendable(self, wallet: MWallet, now: datetime) -> list[MGrant]:
        lots = [
            g
            for g in wallet.grants.values()
            if g.remaining > 0
            and not g.frozen
            and g.effective_at <= now
            and (g.expires_at is None or g.expires_at > now)
        ]
        return sorted(lots, key=MGrant.order)

    def approvable(
        self, lots: list[MGrant], amount: int, allow_partial: bool, cap: CapSpec | None, period: str | None
    ) -> int:
        available = sum(g.free for g in lots)
        room = None
        if cap is not None and cap.limit is not None and period is not None:
            held, used = self.caps.get((cap.cap_id, period), [0, 0])
            room = max(0, cap.limit - held - used)
        approvable = available if room is None else min(available, room)
        if amount <= approvable:
            return amount
        if allow_partial and approvable > 0:
            return approvable
        if room is not None and room < min(amount, available):
            raise CapReached("cap")
        raise InsufficientCredits("credits")

    def draw(self, lots: list[MGrant], amount: int) -> list[tuple[int, str, int]]:
        draws = []
        left = amount
        for lot in lots:
            take = min(left, lot.free)
            if take > 0:
                self.seq += 1
                draws.append((self.seq, lot.id, take))
                left -= take
        assert left == 0
        return draws

    def resolve(self, wallet: MWallet, hold: MHold, capture: int, status: str, now: datetime) -> None:
        left = capture
        for _seq, grant_id, amount in sorted(hold.draws, key=lambda d: (wallet.grants[d[1]].order(), d[0])):
            grant = wallet.grants[grant_id]
            take = min(left, amount)
            left -= take
            grant.held -= amount
            grant.remaining -= take
        for grant_id in {d[1] for d in hold.draws}:
            grant = wallet.grants[grant_id]
            if grant.expires_at is not None and grant.expires_at <= now and grant.free > 0:
                grant.remaining -= grant.free
        hold.status = status
        hold.captured = capture
        if hold.cap_id and hold.cap_period:
            self.bump_cap(hold.cap_id, hold.cap_period, held=-hold.amount_held, used=capture)

    def settle(self, wallet: MWallet, now: datetime) -> int:
        settled = 0
        for hold in wallet.holds.values():
            if hold.status == "open" and hold.expires_at <= now:
                self.resolve(wallet, hold, 0, "expired", now)
                settled += 1
        for grant in wallet.grants.values():
            if grant.expires_at is not None and grant.expires_at <= now and grant.free > 0:
                grant.remaining -= grant.free
                settled += 1
        return settled

    @staticmethod
    def check_open(hold: MHold, now: datetime) -> None:
        if hold.status == "expired" or (hold.status == "open" and hold.expires_at <= now):
            raise HoldExpired("expired")
        if hold.status != "open":
            raise HoldAlreadySettled("settled")

    def balance(self, wallet: MWallet, now: datetime) -> dict[str, Any]:
        stale: dict[str, int] = {}
        for hold in wallet.holds.values():
            if hold.status == "open" and hold.expires_at <= now:
                for _seq, grant_id, amount in hold.draws:
                    stale[grant_id] = stale.get(grant_id, 0) + amount
        available = frozen = 0
        grants = []
        for g in sorted(wallet.grants.values(), key=MGrant.order):
            held = g.held - stale.get(g.id, 0)
            spendable = (
                g.remaining > 0
                and not g.frozen
                and g.effective_at <= now
                and (g.expires_at is None or g.expires_at > now)
            )
            if g.remaining > 0:
                available += (g.remaining - held) if spendable else 0
                if g.frozen:
                    frozen += g.remaining - held
                grants.append((g.id, g.remaining, held, g.frozen))
        held_total = sum(
            h.amount_held for h in wallet.holds.values() if h.status == "open" and h.expires_at > now
        )
        return {
            "available": available,
            "held": held_total,
            "posted": sum(g.remaining for g in wallet.grants.values()),
            "frozen": frozen,
            "grants": grants,
        }


# --------------------------------------------------------------- the model's operations

# Each takes the model (a copy: it is kept only if the ledger agrees), the call's arguments and
# the current time; it raises the error the ledger must raise, or returns a function that takes
# the ledger's result, checks it and records it in the model.
Commit = Callable[[Any], Any]


def m_grant(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet = m.wallets[a["account_id"]]
    effective = a["effective_at"] or now
    if a["expires_at"] is not None and (a["expires_at"] <= effective or a["expires_at"] <= now):
        raise ValidationFailed("expiry")
    m.settle(wallet, now)

    def commit(view: Any) -> None:
        assert (view.amount, view.remaining, view.held) == (a["amount"], a["amount"], 0)
        wallet.grants[view.id] = MGrant(
            id=view.id,
            amount=a["amount"],
            remaining=a["amount"],
            priority=a["priority"],
            effective_at=effective,
            expires_at=a["expires_at"],
            created_at=view.created_at,
        )

    return commit


def m_hold(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet = m.wallets[a["account_id"]]
    if a["expires_at"] <= now:
        raise ValidationFailed("expiry")
    m.settle(wallet, now)
    lots = m.spendable(wallet, now)
    cap = a["cap"]
    period = month_key(now) if cap else None
    approved = m.approvable(lots, a["amount"], a["allow_partial"], cap, period)
    draws = m.draw(lots, approved)
    for _seq, grant_id, amount in draws:
        wallet.grants[grant_id].held += amount
    if cap is not None and period is not None:
        m.bump_cap(cap.cap_id, period, held=approved)

    def commit(view: Any) -> None:
        assert (view.status, view.amount_held, view.partial) == ("open", approved, approved < a["amount"])
        wallet.holds[view.id] = MHold(
            id=view.id,
            account_id=wallet.account_id,
            amount_requested=a["amount"],
            amount_held=approved,
            expires_at=a["expires_at"],
            cap_id=cap.cap_id if cap else None,
            cap_period=period,
            draws=draws,
        )

    return commit


def m_extend(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet, hold = m.hold(a["hold_id"])
    m.check_open(hold, now)
    if a["expires_at"] is not None and a["expires_at"] <= now:
        raise ValidationFailed("expiry")
    m.settle(wallet, now)
    added = 0
    if a["amount"] > 0:
        lots = m.spendable(wallet, now)
        cap = CapSpec(hold.cap_id, a["cap_limit"]) if hold.cap_id else None
        added = m.approvable(lots, a["amount"], a["allow_partial"], cap, hold.cap_period)
        draws = m.draw(lots, added)
        for _seq, grant_id, amount in draws:
            wallet.grants[grant_id].held += amount
        hold.draws.extend(draws)
        if hold.cap_id and hold.cap_period:
            m.bump_cap(hold.cap_id, hold.cap_period, held=added)
    hold.amount_held += added
    hold.amount_requested += a["amount"]
    if a["expires_at"] is not None:
        hold.expires_at = max(hold.expires_at, a["expires_at"])

    def commit(view: Any) -> None:
        assert (view.status, view.amount_held, view.amount_requested, view.expires_at) == (
            "open",
            hold.amount_held,
            hold.amount_requested,
            hold.expires_at,
        )
        assert view.partial == (added < a["amount"])

    return commit


def m_capture(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet, hold = m.hold(a["hold_id"])
    m.check_open(hold, now)
    if a["amount"] > hold.amount_held:
        raise CaptureExceedsHold("above hold")
    m.resolve(wallet, hold, a["amount"], "captured", now)
    m.settle(wallet, now)

    def commit(view: Any) -> None:
        assert (view.status, view.amount_captured, view.amount_held) == (
            "captured",
            a["amount"],
            hold.amount_held,
        )

    return commit


def m_release(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet, hold = m.hold(a["hold_id"])
    if hold.status != "open":
        raise HoldAlreadySettled("settled")
    status = "expired" if hold.expires_at <= now else "released"
    m.resolve(wallet, hold, 0, status, now)
    m.settle(wallet, now)

    def commit(view: Any) -> None:
        assert (view.status, view.amount_captured) == (status, 0)

    return commit


def m_debit(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet = m.wallets[a["account_id"]]
    m.settle(wallet, now)
    lots = m.spendable(wallet, now)
    cap = a["cap"]
    period = month_key(now) if cap else None
    m.approvable(lots, a["amount"], False, cap, period)
    for _seq, grant_id, amount in m.draw(lots, a["amount"]):
        wallet.grants[grant_id].remaining -= amount
    if cap is not None and period is not None:
        m.bump_cap(cap.cap_id, period, used=a["amount"])

    def commit(view: Any) -> None:
        assert (view.amount, view.cap_period) == (a["amount"], period)

    return commit


def m_reverse(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    wallet, grant = m.grant(a["grant_id"])
    m.settle(wallet, now)
    take = min(a["amount"], grant.free)
    grant.remaining -= take

    def commit(view: Any) -> None:
        assert (view.reversed, view.remaining) == (take, grant.remaining)

    return commit


def m_freeze(m: Model, a: dict[str, Any], now: datetime) -> Commit:
    _wallet, grant = m.grant(a["grant_id"])
    grant.frozen = a["frozen"]

    def commit(view: Any) -> None:
        assert view.frozen == a["frozen"]

    return commit


MODEL_OPS: dict[str, Callable[[Model, dict[str, Any], datetime], Commit]] = {
    "grant": m_grant,
    "hold": m_hold,
    "extend": m_extend,
    "capture": m_capture,
    "release": m_release,
    "debit": m_debit,
    "reverse": m_reverse,
    "freeze": m_freeze,
}


def real_op(ledger: LedgerService, op: str, a: dict[str, Any]) -> Callable[[Any], Any]:
    """The ledger call for ``op`` with arguments ``a``, as a unit of work."""
    calls: dict[str, Callable[..., Any]] = {
        "grant": lambda s, **kw: ledger.issue_grant(s, source="promotional", cause_type="test", **kw),
        "hold": ledger.place_hold,
        "extend": ledger.extend_hold,
        "capture": ledger.capture_hold,
        "release": ledger.release_hold,
        "debit": ledger.debit,
        "reverse": lambda s, **kw: ledger.reverse_grant(s, reason="correction", **kw),
        "freeze": ledger.set_grant_frozen,
    }
    fn = calls[op]
    return lambda s: fn(s, **a)


# ------------------------------------------------------------------------ the machine

MINUTE = timedelta(minutes=1)
ids = st.integers(min_value=0, max_value=10**6)
small = st.integers(min_value=1, max_value=4_000)


class LedgerMachine(RuleBasedStateMachine):
    db: Database  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.ledger = LedgerService(self.clock)
        self.model = Model()
        self.records: list[tuple[str, dict[str, Any], Any]] = []
        self.keys = 0
        self.run_tag = secrets.token_hex(4)

    @initialize(limits=st.tuples(st.none() | st.integers(1_000, 20_000), st.none() | st.integers(1, 8_000)))
    def open_wallets(self, limits: tuple[int | None, int | None]) -> None:
        accounts = AccountService(self.clock, self.ledger)
        for limit in limits:
            owner = str(10**17 + secrets.randbelow(9 * 10**17))
            account_id = self.db.write(lambda s, o=owner: accounts.get_or_create(s, "personal", o).id)
            cap = CapSpec(f"cap_{self.run_tag}_{len(self.model.wallets)}", limit)
            self.model.wallets[account_id] = MWallet(account_id, cap)

    # -- helpers

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def wallet(self, index: int) -> MWallet:
        wallets = list(self.model.wallets.values())
        return wallets[index % len(wallets)]

    def all_holds(self) -> list[MHold]:
        return [h for w in self.model.wallets.values() for h in w.holds.values()]

    def all_grants(self) -> list[MGrant]:
        return [g for w in self.model.wallets.values() for g in w.grants.values()]

    def execute(self, op: str, a: dict[str, Any]) -> Any:
        """Run one operation on the model (a copy) and the ledger; both must agree."""
        now = self.clock.now()
        trial = copy.deepcopy(self.model)
        expected: type[BillingError] | None = None
        commit: Commit | None = None
        try:
            commit = MODEL_OPS[op](trial, a, now)
        except BillingError as exc:
            expected = type(exc)
        try:
            result = self.db.write(real_op(self.ledger, op, a))
        except BillingError as exc:
            assert type(exc) is expected, (
                f"{op} {a}: the ledger raised {type(exc).__name__} ({exc.message}); "
                f"the model expected {expected.__name__ if expected else 'success'}"
            )
            return None
        assert expected is None, f"{op} {a}: the ledger succeeded; the model expected {expected.__name__}"
        assert commit is not None
        commit(result)
        self.model = trial
        self.records.append((op, a, result))
        return result

    # -- rules

    @rule(
        w=ids,
        amount=st.integers(1, 10_000),
        priority=st.integers(0, 100),
        starts_in=st.none() | st.integers(1, 3 * 24 * 60),
        lasts=st.none() | st.integers(1, 5 * 24 * 60),
    )
    def grant(self, w: int, amount: int, priority: int, starts_in: int | None, lasts: int | None) -> None:
        now = self.clock.now()
        effective = now + starts_in * MINUTE if starts_in else None
        expires = (effective or now) + lasts * MINUTE if lasts else None
        self.execute(
            "grant",
            {
                "account_id": self.wallet(w).account_id,
                "amount": amount,
                "priority": priority,
                "effective_at": effective,
                "expires_at": expires,
                "idempotency_key": self.key(),
            },
        )

    @rule(
        w=ids,
        amount=small,
        ttl=st.integers(1, 3 * 24 * 60),
        allow_partial=st.booleans(),
        capped=st.booleans(),
    )
    def place_hold(self, w: int, amount: int, ttl: int, allow_partial: bool, capped: bool) -> None:
        wallet = self.wallet(w)
        self.execute(
            "hold",
            {
                "account_id": wallet.account_id,
                "amount": amount,
                "expires_at": self.clock.now() + ttl * MINUTE,
                "allow_partial": allow_partial,
                "cap": wallet.cap if capped else None,
                "idempotency_key": self.key(),
            },
        )

    @precondition(lambda self: bool(self.all_holds()))
    @rule(
        h=ids,
        amount=st.integers(0, 3_000),
        later=st.none() | st.integers(1, 2 * 24 * 60),
        allow_partial=st.booleans(),
    )
    def extend_hold(self, h: int, amount: int, later: int | None, allow_partial: bool) -> None:
        holds = self.all_holds()
        hold = holds[h % len(holds)]
        if amount == 0 and later is None:
            later = 60
        wallet = self.model.wallets[hold.account_id]
        self.execute(
            "extend",
            {
                "hold_id": hold.id,
                "amount": amount,
                "expires_at": self.clock.now() + later * MINUTE if later else None,
                "allow_partial": allow_partial,
                "cap_limit": wallet.cap.limit if hold.cap_id else None,
                "idempotency_key": self.key(),
            },
        )

    @precondition(lambda self: bool(self.all_holds()))
    @rule(h=ids, share=st.integers(0, 100), above=st.integers(0, 3))
    def capture_hold(self, h: int, share: int, above: int) -> None:
        holds = self.all_holds()
        hold = holds[h % len(holds)]
        # Mostly at most the held amount; sometimes 1..3 millicredits above it.
        amount = hold.amount_held * share // 100 if above == 0 else hold.amount_held + above
        self.execute("capture", {"hold_id": hold.id, "amount": amount, "idempotency_key": self.key()})

    @precondition(lambda self: bool(self.all_holds()))
    @rule(h=ids)
    def release_hold(self, h: int) -> None:
        holds = self.all_holds()
        self.execute("release", {"hold_id": holds[h % len(holds)].id, "idempotency_key": self.key()})

    @rule(w=ids, amount=small, capped=st.booleans())
    def debit(self, w: int, amount: int, capped: bool) -> None:
        wallet = self.wallet(w)
        self.execute(
            "debit",
            {
                "account_id": wallet.account_id,
                "amount": amount,
                "cap": wallet.cap if capped else None,
                "idempotency_key": self.key(),
            },
        )

    @precondition(lambda self: bool(self.all_grants()))
    @rule(g=ids, amount=st.integers(1, 6_000))
    def reverse_grant(self, g: int, amount: int) -> None:
        grants = self.all_grants()
        grant = grants[g % len(grants)]
        self.execute("reverse", {"grant_id": grant.id, "amount": amount, "idempotency_key": self.key()})

    @precondition(lambda self: bool(self.all_grants()))
    @rule(g=ids, frozen=st.booleans())
    def freeze_grant(self, g: int, frozen: bool) -> None:
        grants = self.all_grants()
        grant = grants[g % len(grants)]
        self.execute("freeze", {"grant_id": grant.id, "frozen": frozen, "idempotency_key": self.key()})

    @rule(w=ids)
    def sweep(self, w: int) -> None:
        wallet = self.wallet(w)
        expected = self.model.settle(wallet, self.clock.now())
        assert self.db.write(lambda s: self.ledger.sweep(s, wallet.account_id)) == expected

    @rule(
        step=st.sampled_from(
            [timedelta(seconds=1), 5 * MINUTE, timedelta(hours=1), timedelta(hours=9), timedelta(days=2)]
        )
    )
    def advance(self, step: timedelta) -> None:
        self.clock.advance(step)

    @precondition(lambda self: any(h.status == "open" for h in self.all_holds()) or bool(self.all_grants()))
    @rule(pick=ids)
    def advance_past_an_expiry(self, pick: int) -> None:
        now = self.clock.now()
        moments = sorted(
            {h.expires_at for h in self.all_holds() if h.status == "open" and h.expires_at > now}
            | {g.expires_at for g in self.all_grants() if g.expires_at and g.expires_at > now}
        )
        if moments:
            self.clock.set(moments[pick % len(moments)] + timedelta(seconds=pick % 2))

    @precondition(lambda self: bool(self.records))
    @rule(r=ids)
    def retry(self, r: int) -> None:
        op, a, first = self.records[r % len(self.records)]
        again = self.db.write(real_op(self.ledger, op, a))
        assert again == first, f"retry of {op} returned {again!r}, first result was {first!r}"

    @precondition(lambda self: any(op != "release" for op, _a, _r in self.records))
    @rule(r=ids)
    def reuse_key_with_other_params(self, r: int) -> None:
        records = [rec for rec in self.records if rec[0] != "release"]
        op, a, _first = records[r % len(records)]
        changed = dict(a)
        if op == "freeze":
            changed["frozen"] = not a["frozen"]
        else:
            changed["amount"] = a["amount"] + 1
        try:
            self.db.write(real_op(self.ledger, op, changed))
        except IdempotencyConflict:
            return
        except BillingError as exc:
            raise AssertionError(
                f"{op} with a reused key raised {exc.code}, not idempotency_conflict"
            ) from exc
        raise AssertionError(f"{op} with a reused key and other parameters succeeded")

    # -- checks after every step

    @invariant()
    def ledger_is_consistent(self) -> None:
        if not self.model.wallets:
            return
        now = self.clock.now()
        with self.db.session(readonly=True) as session:
            assert verify(session) == []
            for wallet in self.model.wallets.values():
                expected = self.model.balance(wallet, now)
                bal = self.ledger.balance(session, wallet.account_id)
                got = {
                    "available": bal.available,
                    "held": bal.held,
                    "posted": bal.posted,
                    "frozen": bal.frozen,
                }
                assert got == {k: expected[k] for k in got}, (
                    f"wallet {wallet.account_id}: {got} != {expected}"
                )
                # The balance lists every grant with credits left, in burn order.
                assert [(g.id, g.remaining, g.held, g.frozen) for g in bal.grants] == expected["grants"]
            for period in {p for _c, p in self.model.caps}:
                caps = [c for c, p in self.model.caps if p == period]
                usage = self.ledger.cap_usage_many(session, caps, period)
                assert {c: [u.held, u.used] for c, u in usage.items()} == {
                    c: self.model.caps[(c, period)] for c in caps
                }


def test_ledger_agrees_with_reference_model(db: Database) -> None:
    LedgerMachine.db = db
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
