"""Who pays (D8, decisions 0008, 0019, 0030): the payer table as data and the decision as pure
functions over a snapshot of facts.

Nothing here reads a database or a clock. The service gathers a :class:`Snapshot` (what each
candidate payer holds, its plan, the authorization's cap and status, the user's preferred
order), calls :func:`payer_chain` and :func:`decide`, and applies the verdict; the ledger checks
the balance and the cap again under the payer's wallet lock, so a stale snapshot can make the
service gather again, never overspend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chronote_billing.catalog.service import PERSONAL_SOURCES, SERVER_SOURCES, Plan
from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import PermissionDenied
from chronote_billing.ledger.rules import approvable

# The payer table of D8: for each situation, the chain of funding sources tried in order. A
# picked source replaces the default chain for personal work; server work never takes one.
PAYER_TABLE: dict[str, tuple[str, ...]] = {
    "server meeting": ("server", "organization through the server's authorization"),
    "personal work, source picked": ("the picked source",),
    "personal work, re-processing by the owner": ("the original payer while valid", "the default order"),
    "personal work": ("personal", "the user's authorizations in their preferred order"),
}

SOURCE_LABELS = {
    "discord_voice": "Discord meeting",
    "desktop": "Desktop recording",
    "web": "Web recording",
    "mobile": "Mobile recording",
    "quick_capture": "Quick capture",
    "upload": "Upload",
}
EVENT_LABELS = {"chat_to_speech_message": "Chat-to-speech message", "ask_question": "Ask question"}
# Plan gates: bad input for that payer, not a lack of money (no decline notification).
GATE_CODES = ("recording_too_long", "capture_source_not_allowed")
# Metered events limited per calendar month by a plan feature (None in the plan: unlimited).
MONTHLY_QUOTAS = {"chat_to_speech_message": "chat_to_speech_per_month"}


class FundingSourceNotHeld(PermissionDenied):
    code = "funding_source_not_held"
    title = "Funding source not held by this user"


# ---------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class WalletFacts:
    """What a wallet can spend now. ``allowance_due`` is the allowance of the plan in force that
    is issued on first need and has not been yet: it counts as available (one balance, whatever
    the read), and is granted before the payer is charged. ``due`` says an expired hold or grant
    waits to be settled (decision 0015): the figures are right, but the database fast path
    leaves such a wallet to the Python path."""

    available: int = 0
    allowance_due: int = 0
    due: bool = False

    @property
    def spendable(self) -> int:
        return self.available + self.allowance_due


@dataclass(frozen=True)
class AccountFacts:
    """A personal or server account (``id`` is None before its first use), or an organization's."""

    id: str | None
    kind: str
    owner_ref: str
    display_name: str
    plan: Plan | None
    wallet: WalletFacts
    quota_used: int = 0  # metered events of the request's type charged to it this month


@dataclass(frozen=True)
class AuthorizationFacts:
    id: str
    org_id: str
    org_name: str
    org_account_id: str
    subject_type: str  # member or server
    subject_id: str
    subject_name: str  # the member's name, or the server's, for the organization's statement
    monthly_cap: int | None
    capture_sources: tuple[str, ...] | None
    valid_from: datetime
    valid_until: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    member_role: str | None  # the subject member's role in the organization (None: left it)
    cap_used: int
    cap_held: int
    org_wallet: WalletFacts

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None and as_utc(self.revoked_at) <= now:
            return "revoked"
        if as_utc(self.valid_from) > now:
            return "scheduled"
        if self.valid_until is not None and as_utc(self.valid_until) <= now:
            return "expired"
        return "active"

    @property
    def cap_room(self) -> int | None:
        """Millicredits still allowed under the cap this month (None: no cap). Holds past expiry
        but not swept yet still count: the next write on the wallet settles them."""
        if self.monthly_cap is None:
            return None
        return max(0, self.monthly_cap - self.cap_used - self.cap_held)


@dataclass(frozen=True)
class OriginalPayer:
    """Who paid for a meeting's first recording (its attribution)."""

    context: str
    owner_user_id: str | None
    payer_account_id: str
    authorization_id: str | None


@dataclass(frozen=True)
class OrganizationLimits:
    """What spending through an organization allows (organizations have no plan)."""

    max_minutes: int
    features: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    requester: AccountFacts  # the personal account (personal work) or the server's (server work)
    # Personal work: the user's member authorizations (revoked ones too); server work: the
    # server's authorization in the organization it is linked to, if any.
    authorizations: tuple[AuthorizationFacts, ...] = ()
    preferred_order: tuple[str, ...] = ()
    original: OriginalPayer | None = None
    organization: OrganizationLimits = field(default_factory=lambda: OrganizationLimits(0, {}))


@dataclass(frozen=True)
class Ask:
    """What the decision needs of the request (validated beforehand)."""

    context: str  # personal or server
    capture_source: str | None  # None for metered events
    funding_source: str | None
    allow_partial: bool = False
    minutes: int = 0  # recordings and uploads
    sized_from_file: bool = False  # an upload sized from its file size: cut to each payer's limit
    amount: int | None = None  # metered events: the rate card's price
    event_type: str | None = None


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Candidate:
    funding_source: str  # "personal", "server" or the authorization id
    account: AccountFacts
    label: str  # as the person recording reads it ("… authorization for you")
    statement_label: str  # as the payer's admins read it ("… authorization for Cy")
    max_minutes: int
    capture_sources: tuple[str, ...]
    features: dict[str, Any]
    authorization: AuthorizationFacts | None = None


@dataclass(frozen=True)
class Attempt:
    funding_source: str
    account_id: str | None
    authorization_id: str | None
    code: str
    reason: str


@dataclass(frozen=True)
class Chain:
    candidates: tuple[Candidate, ...]
    skipped: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class Approval:
    payer: Candidate
    minutes: int  # 0 for metered events
    amount: int
    partial: bool
    reason: str  # for the person recording: who pays and why
    statement_reason: str  # for the payer's statement
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True)
class Decline:
    code: str  # the single reason when every payer failed the same way, else usage_declined
    message: str
    attempts: tuple[Attempt, ...]


def credits_text(millicredits: int) -> str:
    whole, frac = divmod(max(0, millicredits), 1000)
    return f"{whole:,}" + (f".{frac:03d}".rstrip("0") if frac else "")


def personal_label(plan: Plan | None) -> str:
    if plan is None:
        return "personal credits"
    return f"personal {plan.name.removeprefix('Personal ').strip()} allowance"


def server_label(display_name: str) -> str:
    return (
        f"{display_name} credits" if display_name.startswith("Server ") else f"{display_name} server credits"
    )


def _plan_candidate(funding_source: str, account: AccountFacts, label: str) -> Candidate:
    plan = account.plan
    assert plan is not None, "personal and server accounts always have a plan in force"
    return Candidate(
        funding_source, account, label, label, plan.max_recording_minutes, plan.capture_sources, plan.features
    )


def _authorization_candidate(
    auth: AuthorizationFacts, for_whom: str, limits: OrganizationLimits
) -> Candidate:
    default = PERSONAL_SOURCES if auth.subject_type == "member" else SERVER_SOURCES
    org = AccountFacts(auth.org_account_id, "organization", auth.org_id, auth.org_name, None, auth.org_wallet)
    return Candidate(
        auth.id,
        org,
        f"{auth.org_name} authorization {for_whom}",
        f"{auth.org_name} authorization for {auth.subject_name}",
        limits.max_minutes,
        tuple(auth.capture_sources or default),
        dict(limits.features),
        auth,
    )


def _unusable(cand: Candidate, status: str) -> Attempt:
    auth = cand.authorization
    assert auth is not None
    code, why = {
        "revoked": ("authorization_revoked", "revoked"),
        "expired": (
            "authorization_expired",
            f"expired on {as_utc(auth.valid_until):%Y-%m-%d %H:%M} UTC" if auth.valid_until else "expired",
        ),
        "scheduled": (
            "authorization_not_yet_valid",
            f"valid from {as_utc(auth.valid_from):%Y-%m-%d %H:%M} UTC",
        ),
    }[status]
    return Attempt(cand.funding_source, cand.account.id, auth.id, code, f"{cand.label}: {why}")


def payer_chain(ask: Ask, snap: Snapshot) -> Chain:
    """The candidates of D8, in order, and the ones skipped before any money is looked at."""
    now, limits = snap.now, snap.organization
    if ask.context == "server":
        server = snap.requester
        candidates = [_plan_candidate("server", server, server_label(server.display_name))]
        skipped: list[Attempt] = []
        for auth in snap.authorizations[:1]:
            cand = _authorization_candidate(auth, f"for {server.display_name}", limits)
            status = auth.status(now)
            if status == "active":
                candidates.append(cand)
            else:
                skipped.append(_unusable(cand, status))
        return Chain(tuple(candidates), tuple(skipped))

    personal = _plan_candidate("personal", snap.requester, personal_label(snap.requester.plan))
    held = {a.id: a for a in snap.authorizations if a.subject_type == "member" and a.member_role is not None}
    if ask.funding_source == "personal":
        return Chain((personal,))
    if ask.funding_source:
        picked = held.get(ask.funding_source)
        if picked is None:
            raise FundingSourceNotHeld(
                f"Funding source '{ask.funding_source}' is not yours: use 'personal' or an authorization "
                "you hold.",
                field="funding_source",
                funding_source=ask.funding_source,
            )
        cand = _authorization_candidate(picked, "for you", limits)
        status = picked.status(now)
        return Chain((cand,)) if status == "active" else Chain((), (_unusable(cand, status),))
    original = _original_payer(ask, snap, personal, held)
    if original is not None:
        return Chain((original,))
    active = [a for a in held.values() if a.status(now) == "active"]
    rank = {sid: i for i, sid in enumerate(snap.preferred_order)}
    active.sort(key=lambda a: (rank.get(a.id, len(rank)), as_utc(a.created_at), a.id))
    return Chain((personal, *(_authorization_candidate(a, "for you", limits) for a in active)))


def _original_payer(
    ask: Ask, snap: Snapshot, personal: Candidate, held: dict[str, AuthorizationFacts]
) -> Candidate | None:
    """The owner re-processing a personal meeting: its original payer while still valid."""
    original = snap.original
    if (
        original is None
        or original.context != "personal"
        or original.owner_user_id != snap.requester.owner_ref
    ):
        return None
    if original.authorization_id is None:
        return personal if personal.account.id == original.payer_account_id else None
    auth = held.get(original.authorization_id)
    if auth is None or auth.status(snap.now) != "active":
        return None
    cand = _authorization_candidate(auth, "for you", snap.organization)
    return cand if ask.capture_source in cand.capture_sources else None


def decide(ask: Ask, chain: Chain, unit: int) -> Approval | Decline:
    """The first candidate that can cover the request pays; with ``allow_partial`` the one able
    to approve the most whole minutes does; else a decline naming every payer tried."""
    attempts = list(chain.skipped)
    fits: list[tuple[Candidate, int]] = []  # candidates short of credit, with what they can cover
    what = EVENT_LABELS.get(ask.event_type or "", "") or SOURCE_LABELS.get(ask.capture_source or "", "Usage")
    for cand in chain.candidates:

        def refuse(code: str, why: str, cand: Candidate = cand) -> None:
            auth_id = cand.authorization.id if cand.authorization else None
            attempts.append(
                Attempt(cand.funding_source, cand.account.id, auth_id, code, f"{cand.label}: {why}")
            )

        if ask.capture_source and ask.capture_source not in cand.capture_sources:
            refuse("capture_source_not_allowed", f"{what.lower()}s are not allowed")
            continue
        minutes = ask.minutes
        if ask.amount is None:
            if minutes > cand.max_minutes:
                if not (ask.allow_partial or ask.sized_from_file):
                    refuse(
                        "recording_too_long", f"recordings up to {cand.max_minutes} min, {minutes} requested"
                    )
                    continue
                minutes = cand.max_minutes
            need = minutes * unit
        else:
            need = ask.amount
        limit = cand.features.get(MONTHLY_QUOTAS.get(ask.event_type or "", ""))
        if isinstance(limit, int) and cand.authorization is None and cand.account.quota_used >= limit:
            refuse("feature_limit_reached", f"{limit} {what.lower()}s a month on this plan, all used")
            continue
        available = cand.account.wallet.spendable
        room = cand.authorization.cap_room if cand.authorization else None
        can = approvable(available, room)
        if need <= can:
            return _approve(cand, minutes, need, can, attempts, partial=minutes < ask.minutes)
        if room is not None and room < min(need, available):
            cap = cand.authorization.monthly_cap if cand.authorization else None
            refuse(
                "cap_reached",
                f"monthly cap reached, {credits_text(room)} of {credits_text(cap or 0)} credits left this month, "
                f"{credits_text(need)} needed",
            )
        else:
            refuse(
                "insufficient_credits",
                f"{credits_text(available)} credits available, {credits_text(need)} needed",
            )
        fits.append((cand, can))
    if ask.amount is None and ask.allow_partial and fits:
        cand, can = max(fits, key=lambda f: f[1])  # the first of equals: max keeps the earliest
        if can >= unit:
            minutes = can // unit
            others = [a for a in attempts if a.funding_source != cand.funding_source]
            return _approve(cand, minutes, minutes * unit, can, others, partial=True)
    codes = {a.code for a in attempts}
    summary = "; ".join(a.reason for a in attempts) or "no funding source"
    return Decline(
        codes.pop() if len(codes) == 1 else "usage_declined", f"Declined: {summary}.", tuple(attempts)
    )


def _approve(
    cand: Candidate, minutes: int, amount: int, can: int, attempts: list[Attempt], partial: bool
) -> Approval:
    left_after = can - amount
    return Approval(
        cand,
        minutes,
        amount,
        partial,
        _payer_reason(cand, cand.label, left_after),
        _payer_reason(cand, cand.statement_label, left_after),
        tuple(attempts),
    )


def _payer_reason(cand: Candidate, label: str, left_after: int) -> str:
    auth = cand.authorization
    if auth is None:
        return label
    if auth.monthly_cap is None:
        return f"{label}, no monthly cap"
    return f"{label}, {credits_text(left_after)} of {credits_text(auth.monthly_cap)} credits left this month"


def charge_reason(what: str, minutes: int | None, payer_label: str) -> str:
    """The statement line of a charge, computed when it is charged: what was done and who paid.
    Figures that change after the charge (credits left under a cap) are not part of it."""
    return f"{what}, {minutes} min · {payer_label}" if minutes is not None else f"{what} · {payer_label}"
